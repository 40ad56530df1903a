package vrrp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// These tests run the instance's logic (instance.go, fault.go,
// announce.go, conflict.go) over fakeLink, without root: the interface,
// its addresses and the peer's adverts are what the test says, and every
// advert, VIP and announcement the instance makes is recorded. The time
// is a fake clock (t0 onwards) handed to the same functions Run calls.

var (
	vipA  = netip.MustParsePrefix("192.0.2.100/24")
	ownA  = netip.MustParseAddr("192.0.2.1")
	peerA = netip.MustParseAddr("192.0.2.2")
)

// baseConfig is a VRRPv3 IPv4 multicast instance on lan0 at priority
// 100, 1 s adverts, preempting.
func baseConfig() config.Instance {
	return config.Instance{Name: "VI_T", Interface: "lan0", VRID: 51, Version: 3, Priority: 100,
		AdvertInterval: time.Second, Preempt: true, VirtualIPs: config.PlainVIPs(vipA),
		GARPMasterRepeat: 1}
}

// driven is an instance a test drives step by step.
type driven struct {
	*Instance
	fake *fakeLink
	log  *syncBuffer
}

// newDriven makes an instance over a fake link. Its socket readers run
// (they are what Run starts) and end with the test; nothing else runs on
// its own.
func newDriven(t *testing.T, cfg config.Instance, fake *fakeLink) *driven {
	t.Helper()
	log := &syncBuffer{}
	in := newInstance(cfg, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})), fake,
		func(context.Context, time.Duration, []string, []string) (string, error) {
			return "", errors.New("no script runs in a driven instance")
		})
	ctx, cancel := context.WithCancel(context.Background())
	in.ctx = ctx
	t.Cleanup(func() {
		cancel()
		in.closeConns()
		in.loops.Wait()
		if t.Failed() {
			t.Logf("instance log:\n%s", log)
		}
	})
	return &driven{Instance: in, fake: fake, log: log}
}

// upLAN is a fake link with lan0 up, holding ownA.
func upLAN(cfg config.Instance) *fakeLink {
	f := newFakeLink(cfg.VRID, cfg.IPv6(), cfg.AdvertPrefixes())
	f.addIface("lan0", true, "192.0.2.1/24")
	return f
}

// advertFrom is the advert a peer at src with priority prio sends.
func advertFrom(t *testing.T, cfg config.Instance, src netip.Addr, prio uint8) packetIn {
	t.Helper()
	dst := group4
	a := &Advert{Version: cfg.Version, VRID: uint8(cfg.VRID), Priority: prio, Interval: cfg.AdvertInterval}
	for _, p := range cfg.AdvertPrefixes() {
		a.Addrs = append(a.Addrs, p.Addr())
	}
	b, err := a.Marshal(nil, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return packetIn{payload: b, src: src, dst: dst, ttl: 255}
}

// toMaster starts d at t0 with no peer and runs its master down timer:
// it is Master at the returned time.
func (d *driven) toMaster(t *testing.T) time.Time {
	t.Helper()
	d.begin(t0)
	now := t0.Add(d.m.MasterDownInterval())
	d.tick(now)
	if d.m.State() != Master {
		t.Fatalf("state %s after the master down interval, want MASTER", d.m.State())
	}
	return now
}

func (d *driven) holdsVIP(addr netip.Addr, ifname string) bool {
	on, halb := d.fake.has(ifname, addr)
	return on && halb
}

// garps counts the gratuitous ARPs for vip from mac among frames.
func garps(t *testing.T, frames []sentFrame, vip netip.Addr) int {
	t.Helper()
	n := 0
	for _, f := range frames {
		cl, ok := arpClaim(f.frame)
		if ok && cl.ip == vip {
			if !slices.Equal(f.dst, broadcastMAC) {
				t.Errorf("gratuitous ARP to %s, want broadcast", f.dst)
			}
			n++
		}
	}
	return n
}

// Track weights move the priority as keepalived's do: a negative weight
// while the interface is down (the script failing), a positive one while
// up (good), within 1..254; weight 0 faults the instance instead. Each
// change is advertised at once by a Master.
func TestTrackingPriority(t *testing.T) {
	cfg := baseConfig()
	cfg.TrackInterfaces = []config.TrackInterface{{Name: "uplink0", Weight: -60}, {Name: "bonus0", Weight: 10}, {Name: "must0", Weight: 0}}
	cfg.TrackScripts = []config.TrackScript{
		{Command: []string{"/bin/check-a"}, Weight: -20, Rise: 2, Fall: 2, Interval: time.Second, Timeout: time.Second},
		{Command: []string{"/bin/check-b"}, Weight: 0, Rise: 1, Fall: 1, Interval: time.Second, Timeout: time.Second},
	}
	f := upLAN(cfg)
	f.addIface("uplink0", true)
	f.addIface("bonus0", false)
	f.addIface("must0", true)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	if d.m.Priority() != 100 {
		t.Fatalf("priority %d with every tracked object as configured, want 100", d.m.Priority())
	}

	steps := []struct {
		what   string
		do     func()
		prio   uint8
		fault  string // a fault that must be set; "" none
		advert bool   // a Master advertises the new priority
	}{
		{"uplink0 down (-60)", func() { f.setUp("uplink0", false) }, 40, "", true},
		{"bonus0 up (+10)", func() { f.setUp("bonus0", true) }, 50, "", true},
		{"check-a fails once (fall 2)", func() { d.scriptResult(now, scriptResult{index: 0, err: errFake}) }, 50, "", false},
		{"check-a fails twice (-20)", func() { d.scriptResult(now, scriptResult{index: 0, err: errFake}) }, 30, "", true},
		{"uplink0 gone (-60 still)", func() { f.delIface("uplink0") }, 30, "", false},
		{"uplink0 back and up", func() { f.addIface("uplink0", true) }, 90, "", true},
		{"check-a good once (rise 2)", func() { d.scriptResult(now, scriptResult{index: 0}) }, 90, "", false},
		{"check-a good twice", func() { d.scriptResult(now, scriptResult{index: 0}) }, 110, "", true},
		{"must0 down (weight 0)", func() { f.setUp("must0", false) }, 110, "tracked interface must0 down", false},
		{"must0 up", func() { f.setUp("must0", true) }, 110, "", false},
		{"check-b fails (weight 0)", func() { d.scriptResult(now, scriptResult{index: 1, err: errFake}) }, 110, "track script /bin/check-b failing", false},
		{"check-b good", func() { d.scriptResult(now, scriptResult{index: 1}) }, 110, "", false},
	}
	for _, s := range steps {
		before := len(f.sentAdverts())
		s.do()
		d.evaluate(now)
		if d.m.Priority() != s.prio || d.Status().Priority != s.prio {
			t.Errorf("%s: priority %d (status %d), want %d", s.what, d.m.Priority(), d.Status().Priority, s.prio)
		}
		faults := d.Status().Faults
		if (s.fault == "") != (len(faults) == 0) || (s.fault != "" && !slices.Contains(faults, s.fault)) {
			t.Errorf("%s: faults %q, want %q", s.what, faults, s.fault)
		}
		if s.fault != "" && d.m.State() != Fault {
			t.Errorf("%s: state %s, want FAULT", s.what, d.m.State())
		}
		adverts := f.sentAdverts()[before:]
		if s.advert && (len(adverts) != 1 || adverts[0].priority != s.prio) {
			t.Errorf("%s: sent %+v, want one advert with priority %d", s.what, adverts, s.prio)
		}
		if !s.advert && s.fault == "" && slices.ContainsFunc(adverts, func(a sentAdvert) bool { return a.priority != s.prio }) {
			t.Errorf("%s: sent %+v", s.what, adverts)
		}
	}

	// The bounds: far below 1 and above 254 are clamped.
	lo := baseConfig()
	lo.TrackInterfaces = []config.TrackInterface{{Name: "uplink0", Weight: -200}}
	hi := baseConfig()
	hi.Priority = 250
	hi.TrackInterfaces = []config.TrackInterface{{Name: "uplink0", Weight: 200}}
	for _, c := range []struct {
		cfg  config.Instance
		up   bool
		want uint8
	}{{lo, false, 1}, {hi, true, 254}} {
		f := upLAN(c.cfg)
		f.addIface("uplink0", c.up)
		d := newDriven(t, c.cfg, f)
		d.begin(t0)
		if d.m.Priority() != c.want {
			t.Errorf("priority %d with weight %d, want %d", d.m.Priority(), c.cfg.TrackInterfaces[0].Weight, c.want)
		}
	}
}

// keepalived's announcement schedule: garp_master_repeat gratuitous ARPs
// per VIP at takeover, as many again after garp_master_delay, then a
// round every garp_master_refresh; none after giving the VIPs up. A VIP
// deleted while Master is put back and announced at once.
func TestGARPSchedule(t *testing.T) {
	cfg := baseConfig()
	vip2 := netip.MustParsePrefix("192.0.2.101/24")
	cfg.VirtualIPs = append(cfg.VirtualIPs, config.VirtualIP{Address: vip2})
	cfg.GARPMasterRepeat = 3
	cfg.GARPMasterDelay = 5 * time.Second
	cfg.GARPMasterRefresh = 60 * time.Second
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	took := d.toMaster(t)
	count := func() (int, int) {
		fr := f.sentFrames()
		return garps(t, fr, vipA.Addr()), garps(t, fr, vip2.Addr())
	}
	lan0, _ := f.lookup("lan0")
	for _, fr := range f.sentFrames() {
		cl, ok := arpClaim(fr.frame)
		if !ok || fr.ifindex != lan0.Index || !slices.Equal(cl.mac, lan0.HardwareAddr) {
			t.Fatalf("announcement %x on ifindex %d, want a gratuitous ARP from lan0's MAC %s", fr.frame, fr.ifindex, lan0.HardwareAddr)
		}
	}
	steps := []struct {
		at   time.Duration // after the takeover
		want int           // announcements per VIP so far
	}{
		{0, 3},
		{4 * time.Second, 3},
		{5 * time.Second, 6},
		{30 * time.Second, 6},
		{65 * time.Second, 9},
		{100 * time.Second, 9},
		{125 * time.Second, 12},
	}
	for _, s := range steps {
		d.tick(took.Add(s.at))
		if a, b := count(); a != s.want || b != s.want {
			t.Errorf("%v after the takeover: %d and %d announcements, want %d each", s.at, a, b, s.want)
		}
	}
	if !d.garp.next.Equal(took.Add(185 * time.Second)) {
		t.Errorf("next announcement at %v after the takeover, want 185s", d.garp.next.Sub(took))
	}

	// Someone deletes a VIP: it is put back and announced now.
	now := took.Add(130 * time.Second)
	f.delAddr("lan0", vip2.Addr())
	d.evaluate(now)
	if !d.holdsVIP(vip2.Addr(), "lan0") {
		t.Fatal("a VIP deleted while MASTER was not put back")
	}
	d.tick(now)
	if a, b := count(); a != 15 || b != 15 {
		t.Errorf("after the VIP was put back: %d and %d announcements, want 15 each", a, b)
	}

	// A higher priority takes over: the VIPs go, and no more
	// announcements.
	d.receive(now, advertFrom(t, cfg, peerA, 200))
	if d.m.State() != Backup || d.holdsVIP(vipA.Addr(), "lan0") || d.holdsVIP(vip2.Addr(), "lan0") {
		t.Fatalf("after a higher priority's advert: state %s, VIPs held %v %v", d.m.State(),
			d.holdsVIP(vipA.Addr(), "lan0"), d.holdsVIP(vip2.Addr(), "lan0"))
	}
	d.tick(now.Add(2 * time.Second))
	if a, b := count(); a != 15 || b != 15 {
		t.Errorf("as BACKUP: %d and %d announcements, want still 15", a, b)
	}
}

// With garp_master_delay 0 and no refresh: one burst at takeover, and
// nothing after. IPv6 VIPs get unsolicited NAs from the link-local
// address.
func TestGARPOnceAndNA(t *testing.T) {
	cfg := baseConfig()
	cfg.VirtualIPs = config.PlainVIPs(netip.MustParsePrefix("2001:db8::100/64"))
	cfg.GARPMasterRepeat = 2
	f := newFakeLink(cfg.VRID, true, cfg.AdvertPrefixes())
	f.addIface("lan0", true, "fe80::1/64", "2001:db8::1/64")
	d := newDriven(t, cfg, f)
	took := d.toMaster(t)
	d.tick(took.Add(time.Hour))
	frames := f.sentFrames()
	if len(frames) != 2 {
		t.Fatalf("%d announcements, want 2", len(frames))
	}
	for _, fr := range frames {
		cl, ok := naClaim(fr.frame)
		if !ok || cl.ip != cfg.VirtualIPs[0].Address.Addr() || !slices.Equal(fr.dst, allNodesMAC) {
			t.Errorf("announcement %x to %s, want an unsolicited NA for %s to all nodes", fr.frame, fr.dst, cfg.VirtualIPs[0].Address.Addr())
		}
		// The IPv6 source sits at bytes 22..38 of the frame.
		if src, _ := netip.AddrFromSlice(fr.frame[22:38]); src != netip.MustParseAddr("fe80::1") {
			t.Errorf("NA from %s, want the link-local fe80::1", src)
		}
	}
	if got := f.sentAdverts(); len(got) == 0 || got[0].src != netip.MustParseAddr("fe80::1") {
		t.Errorf("adverts %+v, want them from fe80::1 (RFC 5798 §5.1.2.1)", got)
	}
}

// Faults follow the link: the interface missing, down, without an
// address, or without a socket holds the instance in FAULT with that
// reason; each clears on its own, and the instance comes back through
// BACKUP. A Master that faults gives its VIPs up.
func TestFaults(t *testing.T) {
	cfg := baseConfig()
	f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
	d := newDriven(t, cfg, f)
	d.begin(t0)
	now := t0
	check := func(what string, state State, faults ...string) {
		t.Helper()
		if d.m.State() != state || !slices.Equal(d.Status().Faults, faults) {
			t.Errorf("%s: state %s, faults %q; want %s, %q", what, d.m.State(), d.Status().Faults, state, faults)
		}
	}
	check("no lan0", Fault, "interface lan0 missing")

	f.addIface("lan0", false)
	d.evaluate(now)
	check("lan0 down, no address", Fault, "interface lan0 down", "no IPv4 address on lan0")
	f.setUp("lan0", true)
	d.evaluate(now)
	check("lan0 up, no address", Fault, "no IPv4 address on lan0")
	f.addAddr("lan0", "192.0.2.1/24")
	d.evaluate(now)
	check("lan0 up with an address", Backup)
	if c := f.openConns(); len(c) != 1 || !c[0].receiving {
		t.Fatalf("open sockets %+v, want one that reads", c)
	}

	now = now.Add(d.m.MasterDownInterval())
	d.tick(now)
	check("no peer", Master)
	if !d.holdsVIP(vipA.Addr(), "lan0") {
		t.Fatal("MASTER without the VIP")
	}
	f.setUp("lan0", false)
	d.evaluate(now)
	check("lan0 down as MASTER", Fault, "interface lan0 down")
	if on, _ := f.has("lan0", vipA.Addr()); on {
		t.Error("the VIP stayed on in FAULT")
	}
	if a := f.sentAdverts(); a[len(a)-1].priority != PriorityStop {
		t.Errorf("leaving MASTER for FAULT sent %+v last, want a priority 0 advert", a[len(a)-1])
	}

	// Deleted and made again: a new index, so a new socket.
	first := f.openConns()[0]
	f.delIface("lan0")
	d.evaluate(now)
	check("lan0 deleted", Fault, "interface lan0 missing")
	if !first.isClosed() {
		t.Error("the socket of the deleted lan0 is still open")
	}
	f.addIface("lan0", true, "192.0.2.1/24")
	f.openErr = errFake
	d.evaluate(now)
	check("lan0 back, no socket", Fault, "VRRP socket on lan0")
	f.openErr = nil
	d.evaluate(now)
	check("lan0 back with a socket", Backup)
	if c := f.openConns(); len(c) != 1 || c[0] == first {
		t.Errorf("open sockets %+v, want one new one", c)
	}
}

// The boot case keepalived fails: unicast_src is not on the host at
// start. The instance waits in FAULT, naming it, and takes over once the
// address appears; it goes back to FAULT when the address goes. The
// adverts leave from unicast_src to the peer.
func TestFaultUnicastSrcLate(t *testing.T) {
	cfg := baseConfig()
	cfg.UnicastSrc = ownA
	cfg.UnicastPeers = []netip.Addr{peerA}
	f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
	d := newDriven(t, cfg, f)
	d.begin(t0)
	if got := d.Status().Faults; !slices.Equal(got, []string{"interface lan0 missing"}) {
		t.Fatalf("faults %q at boot without lan0", got)
	}
	f.addIface("lan0", true, "192.0.2.7/24") // another address: not unicast_src
	d.evaluate(t0)
	if got := d.Status().Faults; !slices.Equal(got, []string{"unicast_src 192.0.2.1 not on lan0"}) {
		t.Fatalf("faults %q with lan0 but not unicast_src", got)
	}
	d.tick(t0.Add(time.Hour))
	if d.m.State() != Fault || d.holdsVIP(vipA.Addr(), "lan0") {
		t.Fatalf("without unicast_src: state %s, VIP held %v", d.m.State(), d.holdsVIP(vipA.Addr(), "lan0"))
	}

	f.addAddr("lan0", "192.0.2.1/24")
	now := t0.Add(time.Hour)
	d.evaluate(now)
	if d.m.State() != Backup || len(d.Status().Faults) != 0 {
		t.Fatalf("with unicast_src: state %s, faults %q", d.m.State(), d.Status().Faults)
	}
	now = now.Add(d.m.MasterDownInterval())
	d.tick(now)
	if d.m.State() != Master || !d.holdsVIP(vipA.Addr(), "lan0") {
		t.Fatalf("no peer: state %s, VIP held %v", d.m.State(), d.holdsVIP(vipA.Addr(), "lan0"))
	}
	if a := f.sentAdverts(); len(a) == 0 || a[0].src != ownA {
		t.Errorf("adverts %+v, want them from unicast_src", a)
	}

	f.delAddr("lan0", ownA)
	d.evaluate(now)
	if d.m.State() != Fault || d.holdsVIP(vipA.Addr(), "lan0") {
		t.Fatalf("unicast_src removed: state %s, VIP held %v", d.m.State(), d.holdsVIP(vipA.Addr(), "lan0"))
	}
}

// A VIP the host already has (not halb's) is served as it is: not added,
// never removed, and not the advert source while there is another
// address.
func TestForeignVIPStays(t *testing.T) {
	cfg := baseConfig()
	f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
	f.addIface("lan0", true, "192.0.2.100/24", "192.0.2.1/24")
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	if d.src != ownA {
		t.Errorf("advert source %s, want %s (not the foreign VIP)", d.src, ownA)
	}
	d.receive(now, advertFrom(t, cfg, peerA, 200))
	if on, halb := f.has("lan0", vipA.Addr()); !on || halb {
		t.Errorf("the host's own VIP after giving up: on %v, halb's %v; want it on, untouched", on, halb)
	}
	if !strings.Contains(d.log.String(), "served as it is and never removed") {
		t.Errorf("the foreign VIP was not logged:\n%s", d.log)
	}
}

// preempt_delay: a Backup of higher priority follows a weaker Master for
// the delay, then takes over by its master down timer.
func TestPreemptDelay(t *testing.T) {
	cfg := baseConfig()
	cfg.Priority = 150
	cfg.PreemptDelay = 10 * time.Second
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	d.begin(t0)
	weak := advertFrom(t, cfg, peerA, 100)
	var took time.Time
	for s := time.Duration(0); s <= 30*time.Second; s += time.Second {
		now := t0.Add(s)
		d.tick(now)
		if d.m.State() == Master {
			took = now
			break
		}
		d.receive(now, weak)
	}
	if took.IsZero() {
		t.Fatal("never pre-empted the weaker master")
	}
	// The delay runs from the first advert; the master down interval
	// (3.4 s at priority 150) follows the last one followed.
	if early := t0.Add(cfg.PreemptDelay); took.Before(early) {
		t.Errorf("pre-empted %v after the first advert, before preempt_delay %v", took.Sub(t0), cfg.PreemptDelay)
	}
	if late := t0.Add(cfg.PreemptDelay + d.m.MasterDownInterval() + time.Second); took.After(late) {
		t.Errorf("pre-empted %v after the first advert, want within %v", took.Sub(t0), late.Sub(t0))
	}
	if !d.holdsVIP(vipA.Addr(), "lan0") {
		t.Error("MASTER without the VIP")
	}

	// Without preempt, the weaker master keeps the VIP.
	cfg.Preempt = false
	f = upLAN(cfg)
	d = newDriven(t, cfg, f)
	d.begin(t0)
	for s := time.Duration(0); s <= 30*time.Second; s += time.Second {
		d.tick(t0.Add(s))
		d.receive(t0.Add(s), weak)
	}
	if d.m.State() != Backup {
		t.Errorf("without preempt: %s, want BACKUP", d.m.State())
	}
}

// Sync group decisions carried out by the instances: a member becoming
// Master takes the others along (their VIPs too); a member in Fault holds
// the others out of Master, and its recovery releases them.
func TestSyncGroupInstances(t *testing.T) {
	g := NewGroup("G")
	mk := func(name, ifname string, vip string) *driven {
		cfg := baseConfig()
		cfg.Name, cfg.Interface = name, ifname
		cfg.VirtualIPs = config.PlainVIPs(netip.MustParsePrefix(vip))
		f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
		f.addIface(ifname, true, "192.0.2.1/24")
		d := newDriven(t, cfg, f)
		d.JoinGroup(g)
		return d
	}
	a := mk("a", "out0", "192.0.2.100/24")
	b := mk("b", "in0", "192.0.2.200/24")
	// deliver runs the group's commands on each member, as Run does.
	deliver := func(now time.Time) {
		for more := true; more; {
			more = false
			for _, d := range []*driven{a, b} {
				select {
				case cmd := <-d.groupCmds:
					d.groupCmd(now, cmd)
					more = true
				default:
				}
			}
		}
	}
	a.begin(t0)
	b.begin(t0)
	deliver(t0)
	// b hears a peer; a does not, and becomes Master: b follows.
	peer := advertFrom(t, b.cfg, peerA, 120)
	b.receive(t0, peer)
	a.tick(t0.Add(a.m.MasterDownInterval()))
	deliver(t0.Add(a.m.MasterDownInterval()))
	if a.m.State() != Master || b.m.State() != Master || !b.holdsVIP(netip.MustParseAddr("192.0.2.200"), "in0") {
		t.Fatalf("a became MASTER: a %s, b %s (VIP held %v); want both MASTER", a.m.State(), b.m.State(),
			b.holdsVIP(netip.MustParseAddr("192.0.2.200"), "in0"))
	}

	// b's interface goes down: b faults, a is held out of Master.
	b.fake.setUp("in0", false)
	b.evaluate(t0.Add(10 * time.Second))
	deliver(t0.Add(10 * time.Second))
	if b.m.State() != Fault || a.m.State() != Backup || a.holdsVIP(netip.MustParseAddr("192.0.2.100"), "out0") {
		t.Fatalf("b in FAULT: a %s (VIP held %v), b %s; want a BACKUP without its VIP", a.m.State(),
			a.holdsVIP(netip.MustParseAddr("192.0.2.100"), "out0"), b.m.State())
	}
	a.tick(t0.Add(time.Minute))
	if a.m.State() != Backup {
		t.Fatalf("a held by the group became %s at its master down timer", a.m.State())
	}

	// b recovers: both are released, and the first to become Master
	// takes the other along.
	b.fake.setUp("in0", true)
	b.evaluate(t0.Add(time.Minute))
	deliver(t0.Add(time.Minute))
	if b.m.State() != Backup {
		t.Fatalf("b after its interface came back: %s, want BACKUP", b.m.State())
	}
	now := t0.Add(2 * time.Minute)
	a.tick(now)
	deliver(now)
	if a.m.State() != Master || b.m.State() != Master {
		t.Fatalf("after release: a %s, b %s; want both MASTER", a.m.State(), b.m.State())
	}

	// a steps down for a higher priority: b goes down with it.
	a.receive(now, advertFrom(t, a.cfg, peerA, 200))
	deliver(now)
	if a.m.State() != Backup || b.m.State() != Backup || b.holdsVIP(netip.MustParseAddr("192.0.2.200"), "in0") {
		t.Fatalf("a stepped down: a %s, b %s (VIP held %v); want both BACKUP", a.m.State(), b.m.State(),
			b.holdsVIP(netip.MustParseAddr("192.0.2.200"), "in0"))
	}
}

// With use_vmac the VIPs go on the VMAC and the adverts leave from it
// (RFC 5798 §7.3); a VMAC that cannot be made faults the instance; at
// stop the VMAC is removed.
func TestVMACOverFakeLink(t *testing.T) {
	cfg := baseConfig()
	cfg.UseVMAC = true
	f := upLAN(cfg)
	f.vmacErr = errFake
	d := newDriven(t, cfg, f)
	d.begin(t0)
	lan0, _ := f.lookup("lan0")
	name := vmacName(cfg.VRID, false, lan0.Index)
	if got := d.Status().Faults; !slices.Equal(got, []string{"VMAC " + name}) {
		t.Fatalf("faults %q with a VMAC that cannot be made", got)
	}
	f.vmacErr = nil
	d.evaluate(t0)
	now := t0.Add(d.m.MasterDownInterval())
	d.tick(now)
	if d.m.State() != Master || !d.holdsVIP(vipA.Addr(), name) || d.holdsVIP(vipA.Addr(), "lan0") {
		t.Fatalf("state %s, VIP on %s %v, on lan0 %v; want MASTER with the VIP on the VMAC", d.m.State(), name,
			d.holdsVIP(vipA.Addr(), name), d.holdsVIP(vipA.Addr(), "lan0"))
	}
	vm, _ := f.lookup(name)
	adverts := f.sentAdverts()
	if len(adverts) == 0 || adverts[len(adverts)-1].ifindex != vm.Index {
		t.Errorf("adverts %+v, want them sent on the VMAC (ifindex %d)", adverts, vm.Index)
	}
	frames := f.sentFrames()
	if len(frames) != cfg.GARPMasterRepeat*len(cfg.VirtualIPs) {
		t.Errorf("%d announcements at takeover, want %d", len(frames), cfg.GARPMasterRepeat*len(cfg.VirtualIPs))
	}
	for _, fr := range frames {
		if cl, ok := arpClaim(fr.frame); !ok || !slices.Equal(cl.mac, virtualMAC(cfg.VRID, false)) {
			t.Errorf("announcement %x, want a gratuitous ARP from the virtual MAC", fr.frame)
		}
	}
	d.shutdown(now)
	if _, err := f.lookup(name); err == nil {
		t.Error("the VMAC is still there after stop")
	}
}

// Two Masters (a partition healed): the one with the higher priority
// answers the weaker one's advert at once and announces its VIPs again,
// garp_master_repeat of each, so that neighbours that learnt the other's
// MAC come back.
func TestReannounceOnTwoMasters(t *testing.T) {
	cfg := baseConfig()
	vip2 := netip.MustParsePrefix("192.0.2.101/24")
	cfg.VirtualIPs = append(cfg.VirtualIPs, config.VirtualIP{Address: vip2})
	cfg.GARPMasterRepeat = 3
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	frames, adverts := len(f.sentFrames()), len(f.sentAdverts())
	if frames != 6 {
		t.Fatalf("%d announcements at takeover, want 3 per VIP", frames)
	}
	d.receive(now, advertFrom(t, cfg, peerA, 50))
	if d.m.State() != Master {
		t.Fatalf("state %s after a weaker Master's advert, want MASTER", d.m.State())
	}
	again := f.sentFrames()[frames:]
	if a, b := garps(t, again, vipA.Addr()), garps(t, again, vip2.Addr()); a != 3 || b != 3 || len(again) != 6 {
		t.Errorf("announced again %d and %d times (%d frames), want garp_master_repeat (3) each", a, b, len(again))
	}
	if a := f.sentAdverts()[adverts:]; len(a) != 1 || a[0].priority != 100 {
		t.Errorf("answered with %+v, want one advert at priority 100", a)
	}
}

// A fault that replaces another in one look (the interface comes up
// without its address) never lets the instance out of FAULT in between:
// the new fault is set before the old one clears, so no transition to
// BACKUP, and no notify of it, happens.
func TestNewFaultsFirst(t *testing.T) {
	cfg := baseConfig()
	cfg.Notify = "/bin/notify"
	f := upLAN(cfg)
	f.setUp("lan0", false)
	d := newDriven(t, cfg, f)
	d.begin(t0)
	if got := d.Status().Faults; !slices.Equal(got, []string{"interface lan0 down"}) || d.m.State() != Fault {
		t.Fatalf("state %s, faults %q with lan0 down", d.m.State(), got)
	}
	transitions := d.Status().Transitions
	f.setUp("lan0", true)
	f.delAddr("lan0", ownA)
	d.evaluate(t0.Add(time.Second))
	if got := d.Status().Faults; !slices.Equal(got, []string{"no IPv4 address on lan0"}) || d.m.State() != Fault {
		t.Fatalf("state %s, faults %q with lan0 up without its address", d.m.State(), got)
	}
	if n := d.Status().Transitions - transitions; n != 0 {
		t.Errorf("%d transitions while one fault replaced another, want none:\n%s", n, d.log)
	}
	// Neither a transition nor a notify call (run, or superseded before
	// it ran) names BACKUP.
	if strings.Contains(d.log.String(), "BACKUP") {
		t.Errorf("BACKUP in the log:\n%s", d.log)
	}
}

// One advert, from the socket to the VIP added, through Run over the fake
// link: the Master's priority-0 advert makes the Backup take over after
// its skew time, not the whole master down interval.
func TestRunAdvertToVIP(t *testing.T) {
	cfg := baseConfig()
	// A master down interval of two minutes and a skew time of 0.3 s:
	// only the priority-0 advert makes this Backup a Master in the
	// test's time.
	cfg.Priority, cfg.Preempt, cfg.AdvertInterval = 254, false, 40*time.Second
	f := upLAN(cfg)
	in := newInstance(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), f, nil)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- in.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	conn := waitFor(t, "the advert socket", func() *fakeConn {
		if c := f.openConns(); len(c) == 1 {
			return c[0]
		}
		return nil
	})
	conn.in <- fakeRead{p: advertFrom(t, cfg, peerA, 200)}
	waitFor(t, "the peer's advert counted", func() *Status {
		if s := in.Status(); s.Received == 1 && s.State == Backup {
			return &s
		}
		return nil
	})
	conn.in <- fakeRead{p: advertFrom(t, cfg, peerA, PriorityStop)}
	waitFor(t, "the VIP added", func() *bool {
		if on, halb := f.has("lan0", vipA.Addr()); on && halb && in.Status().State == Master {
			return &on
		}
		return nil
	})
}

// waitFor polls get until it returns non-nil, for up to 10 s.
func waitFor[T any](t *testing.T, what string, get func() *T) *T {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if v := get(); v != nil {
			return v
		}
	}
	t.Fatalf("no %s within 10 s", what)
	return nil
}
