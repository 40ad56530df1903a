package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/bgp"
	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/vrrp"
)

// The rule of announcement, case by case: what is announced, and the
// reason `halb status` shows.
func TestDecideAnnounce(t *testing.T) {
	for _, c := range []struct {
		name string
		in   announceInput
		want bool
		why  string
	}{
		{"always serving", announceInput{Mode: config.AnnounceAlways, Served: true, Healthy: 2, Quorum: 1}, true, "serving: 2 healthy, quorum 1"},
		{"always at quorum", announceInput{Mode: config.AnnounceAlways, Served: true, Healthy: 2, Quorum: 2}, true, "serving: 2 healthy, quorum 2"},
		{"always below quorum", announceInput{Mode: config.AnnounceAlways, Served: true, Healthy: 1, Quorum: 2}, false, "quorum lost: 1 healthy, quorum 2"},
		{"always none healthy", announceInput{Mode: config.AnnounceAlways, Served: true, Healthy: 0, Quorum: 1}, false, "quorum lost: 0 healthy, quorum 1"},
		{"always not served", announceInput{Mode: config.AnnounceAlways, Served: false, Healthy: 3, Quorum: 1}, false, "not served: the data path did not program the service"},
		{"always ignores vrrp", announceInput{Mode: config.AnnounceAlways, Served: true, Healthy: 1, Quorum: 1, Instance: "VI_1", State: vrrp.Backup}, true, "serving: 1 healthy, quorum 1"},
		{"master as master", announceInput{Mode: config.AnnounceMaster, Instance: "VI_1", State: vrrp.Master}, true, "vrrp instance VI_1 is MASTER"},
		{"master as backup", announceInput{Mode: config.AnnounceMaster, Served: true, Healthy: 2, Quorum: 1, Instance: "VI_1", State: vrrp.Backup}, false, "vrrp instance VI_1 is BACKUP"},
		{"master in fault", announceInput{Mode: config.AnnounceMaster, Instance: "VI_1", State: vrrp.Fault}, false, "vrrp instance VI_1 is FAULT"},
		{"master at init", announceInput{Mode: config.AnnounceMaster, Instance: "VI_1", State: vrrp.Initialize}, false, "vrrp instance VI_1 is INIT"},
		{"master without instance", announceInput{Mode: config.AnnounceMaster, Served: true, Healthy: 1, Quorum: 1}, false, "no running vrrp instance holds the vip"},
		{"never", announceInput{Mode: config.AnnounceNever, Served: true, Healthy: 1, Quorum: 1, Instance: "VI_1", State: vrrp.Master}, false, "announce: never"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, why := decideAnnounce(c.in)
			if got != c.want || why != c.why {
				t.Errorf("decideAnnounce(%+v) = %v %q, want %v %q", c.in, got, why, c.want, c.why)
			}
		})
	}
}

// The VRRP instance holding a VIP is found by address, whatever the
// prefix length it is configured with.
func TestHolderOf(t *testing.T) {
	insts := []vrrp.Status{
		{Name: "VI_1", State: vrrp.Backup, VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/24")}},
		{Name: "VI_2", State: vrrp.Master, VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.8/32"), netip.MustParsePrefix("2001:db8::8/64")},
			Excluded: []netip.Prefix{netip.MustParsePrefix("198.51.100.8/24")}},
	}
	for _, c := range []struct {
		vip   string
		name  string
		state vrrp.State
	}{{"192.0.2.7", "VI_1", vrrp.Backup}, {"2001:db8::8", "VI_2", vrrp.Master}, {"198.51.100.8", "VI_2", vrrp.Master}, {"192.0.2.9", "", vrrp.Initialize}} {
		name, state := holderOf(netip.MustParseAddr(c.vip), insts)
		if name != c.name || state != c.state {
			t.Errorf("holderOf(%s) = %q %v, want %q %v", c.vip, name, state, c.name, c.state)
		}
	}
}

// A service group announces each of its VIPs, each by the state of the
// instance holding it, and each once; announce: always holds them all.
func TestDecideGroup(t *testing.T) {
	pairs := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("192.0.2.101:80"),
		netip.MustParseAddrPort("192.0.2.100:443")}
	web := config.Service{Name: "web", Listen: pairs, Quorum: 1, HealthCheck: config.HealthCheck{Type: "none"},
		Backends: []config.Backend{{Address: netip.MustParseAddr("198.51.100.11"), Port: 80, Weight: 1}},
		Announce: config.Announce{When: config.AnnounceMaster}}
	insts := []vrrp.Status{
		{Name: "VI_1", State: vrrp.Master, VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}},
		{Name: "VI_2", State: vrrp.Backup, VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.101/24")}},
	}
	got := decide(serviceFacts{services: []config.Service{web}, served: map[string]bool{"web": true}, insts: insts})
	var lines []string
	for _, a := range got {
		lines = append(lines, fmt.Sprintf("%s %s %v", a.Service, a.Prefix, a.Announced))
	}
	if want := []string{"web 192.0.2.100/32 true", "web 192.0.2.101/32 false"}; !slices.Equal(lines, want) {
		t.Errorf("decisions %q, want %q", lines, want)
	}
	web.Announce.When = config.AnnounceAlways
	if got, want := alwaysVIPs([]config.Service{web}), []netip.Addr{pairs[0].Addr(), pairs[1].Addr()}; !slices.Equal(got, want) {
		t.Errorf("announce: always VIPs %v, want %v", got, want)
	}
}

// testRunner is a bgpRunner over a speaker that is not running: what it
// announces is held, as it would be sent once the sessions are up.
func testRunner(t *testing.T) *bgpRunner {
	t.Helper()
	cfg := config.BGP{ASN: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), DrainTime: 0,
		Peers: []config.BGPPeer{{Address: netip.MustParseAddr("203.0.113.254"), ASN: 65000, Port: 179}}}
	sp, err := bgp.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return &bgpRunner{log: slog.New(slog.DiscardHandler), sp: sp, cfg: cfg}
}

func announced(r *bgpRunner) []string {
	var out []string
	for _, rt := range r.sp.Announced() {
		out = append(out, rt.Prefix.String())
	}
	return out
}

// A VIP is announced while one of its services wants it, with the first
// one's attributes; a drain withdraws everything and holds it withdrawn
// until undrain, whatever the decisions.
func TestReconcile(t *testing.T) {
	r := testRunner(t)
	dec := func(svc, prefix string, ok bool, med uint32) AnnouncementStatus {
		return AnnouncementStatus{Service: svc, Prefix: prefix, Mode: config.AnnounceAlways, Announced: ok, Reason: "test",
			attrs: config.Announce{When: config.AnnounceAlways, MED: med}}
	}
	r.reconcile([]AnnouncementStatus{
		dec("web", "192.0.2.100/32", false, 10), dec("dns", "192.0.2.100/32", true, 20),
		dec("web6", "2001:db8::100/128", true, 0), dec("db", "192.0.2.101/32", false, 0),
	})
	if got, want := announced(r), []string{"192.0.2.100/32", "2001:db8::100/128"}; !slices.Equal(got, want) {
		t.Fatalf("announced %v, want %v", got, want)
	}
	if med := r.sp.Announced()[0].Attrs.MED; med != 20 {
		t.Errorf("192.0.2.100/32 announced with the MED of a service that does not want it: %d", med)
	}
	// Two services wanting one VIP: the first one's attributes.
	r.reconcile([]AnnouncementStatus{dec("web", "192.0.2.100/32", true, 30), dec("dns", "192.0.2.100/32", true, 40)})
	if a := r.sp.Announced(); len(a) != 1 || a[0].Attrs.MED != 30 {
		t.Errorf("192.0.2.100/32 wanted by web (MED 30) then dns (MED 40): announced %+v, want web's MED 30", a)
	}
	r.reconcile([]AnnouncementStatus{dec("web", "192.0.2.100/32", false, 10), dec("dns", "192.0.2.100/32", false, 20),
		dec("web6", "2001:db8::100/128", true, 0)})
	if got, want := announced(r), []string{"2001:db8::100/128"}; !slices.Equal(got, want) {
		t.Fatalf("after the VIP's services stopped wanting it: announced %v, want %v", got, want)
	}

	if w := r.drain("halb drain by uid 0"); !slices.Equal(w, []string{"2001:db8::100/128"}) {
		t.Errorf("drain withdrew %v", w)
	}
	if st := r.status(); st.Announcements[2].Announced || st.Announcements[2].Reason != "drained (halb drain by uid 0); without the drain: test" {
		t.Errorf("status at once after the drain: %+v", st.Announcements[2])
	}
	all := []AnnouncementStatus{dec("web", "192.0.2.100/32", true, 0), dec("web6", "2001:db8::100/128", true, 0)}
	r.reconcile(slices.Clone(all))
	if got := announced(r); len(got) != 0 {
		t.Fatalf("drained, yet announced %v", got)
	}
	st := r.status()
	if st.Drained != "halb drain by uid 0" || st.Announcements[0].Announced || !strings.HasPrefix(st.Announcements[0].Reason, "drained (halb drain by uid 0)") {
		t.Errorf("drained status: %+v", st)
	}
	if !r.undrain() || r.undrain() {
		t.Error("undrain does not report the drain it ended")
	}
	r.reconcile(slices.Clone(all))
	if got, want := announced(r), []string{"192.0.2.100/32", "2001:db8::100/128"}; !slices.Equal(got, want) {
		t.Fatalf("after undrain: announced %v, want %v", got, want)
	}
}

// A service the data path failed to program is not served, so announce:
// always does not announce it: after a failed apply, the services served
// are those the data path reports holding; after a good one, all.
func TestNoteServed(t *testing.T) {
	d, _, _ := newTestDaemon(t)
	d.cfg.Services = []config.Service{{Name: "web"}, {Name: "db"}}
	d.dp = reportingDatapath{name: "xdp"} // reports web alone
	d.noteServed(errors.New("db: scheduler lc: not supported by the eBPF data path"))
	if !d.served["web"] || d.served["db"] {
		t.Errorf("after a failed apply: served %v, want web alone", d.served)
	}
	d.noteServed(nil)
	if !d.served["web"] || !d.served["db"] {
		t.Errorf("after a good apply: served %v, want both", d.served)
	}

	// A service group is served when the data path holds each pair.
	pairs := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:80"), netip.MustParseAddrPort("192.0.2.11:80"), netip.MustParseAddrPort("192.0.2.12:80")}
	d.cfg.Services = []config.Service{{Name: "web", Listen: pairs}}
	d.dp = groupDatapath{} // reports two pairs of web
	d.noteServed(errors.New("web (192.0.2.12:80/tcp): the maps hold 2 services and all are in use"))
	if d.served["web"] {
		t.Errorf("a group of three pairs with two programmed: served %v, want not", d.served)
	}
	d.cfg.Services[0].Listen = pairs[:2]
	d.noteServed(errors.New("db: scheduler lc: not supported by the eBPF data path"))
	if !d.served["web"] {
		t.Errorf("a group with both pairs programmed: served %v, want web", d.served)
	}
}

// `halb drain` and `halb undrain` are root's and halb's own user's alone,
// whatever mode the control socket was given.
func TestMayChange(t *testing.T) {
	if !mayChange(0) || !mayChange(uint32(os.Geteuid())) {
		t.Error("root or halb's own user refused")
	}
	if os.Geteuid() != 65534 && mayChange(65534) {
		t.Error("uid 65534 (nobody) allowed to drain")
	}
}
