package loader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// The bench for the Datapath: the balancer's namespace with halb0
// (192.0.2.1/24), whose veth peer sits in a second namespace that holds the
// backends' addresses and answers ARP for them.
type dpBench struct {
	lb, peers *netnstest.NS
	cfg       config.Datapath
	log       *halbtest.Log
}

var (
	web  = service.Key{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Proto: service.TCP}
	web6 = service.Key{VIP: netip.MustParseAddr("2001:db8:100::10"), Port: 443, Proto: service.TCP}
	be6  = netip.MustParseAddr("2001:db8::11")
	dns  = service.Key{VIP: netip.MustParseAddr("198.51.100.10"), Port: 53, Proto: service.UDP}
	be11 = netip.MustParseAddr("192.0.2.11")
	be12 = netip.MustParseAddr("192.0.2.12")
	be13 = netip.MustParseAddr("192.0.2.13")
	be14 = netip.MustParseAddr("192.0.2.14")
)

func newDPBench(t *testing.T) *dpBench {
	t.Helper()
	b := &dpBench{lb: netnstest.New(t), peers: netnstest.New(t), log: &halbtest.Log{}}
	for _, ns := range []*netnstest.NS{b.lb, b.peers} {
		// No duplicate address detection: link-local addresses are
		// usable at once, and neighbour discovery answers at once.
		err := ns.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	h := b.lb.Netlink(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halb0", HardwareAddr: halb0MAC}, PeerName: "halb0p"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	peer, err := h.LinkByName("halb0p")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNsFd(peer, int(b.peers.Handle())); err != nil {
		t.Fatalf("move halb0p: %v", err)
	}
	up(t, h, "halb0", "192.0.2.1/24", "2001:db8::1/64")
	up(t, b.peers.Netlink(t), "halb0p", "192.0.2.11/24", "192.0.2.12/24", "192.0.2.13/24", "192.0.2.14/24", "2001:db8::11/64")

	root := halbtest.BPFFS(t)
	b.cfg = config.Datapath{
		Mode:             config.ModeXDP,
		Interfaces:       []string{"halb0"},
		XDPMode:          "native",
		BPFFS:            filepath.Join(root, "halb"),
		ConntrackEntries: 1024,
		MaglevTableSize:  251,
	}
	return b
}

func up(t *testing.T, h *netlink.Handle, name string, addrs ...string) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, addr); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// start makes a Datapath in the balancer's namespace; the test closes it
// if the test has not.
func (b *dpBench) start(t *testing.T, cfg config.Datapath, mode string) *Datapath {
	t.Helper()
	var dp *Datapath
	err := b.lb.Do(func() error {
		var err error
		dp, err = NewDatapath(cfg, mode, slog.New(slog.NewTextHandler(b.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
		return err
	})
	if err != nil {
		t.Fatalf("NewDatapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func svc(key service.Key, backends ...service.Backend) service.Service {
	return service.Service{Name: "web", Key: key, Scheduler: "mh", Forward: service.DR, Backends: backends}
}

func backend(a netip.Addr, weight uint32) service.Backend {
	return service.Backend{Addr: a, Port: 80, Weight: weight}
}

// waitLive waits until the backends of key that want live are live (they
// have a MAC), and returns the service.
func waitLive(t *testing.T, dp *Datapath, key service.Key, want int) ServiceStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := dp.Status()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Key != key {
				continue
			}
			live := 0
			for _, b := range s.Backends {
				if b.Live {
					live++
				}
			}
			if live == want {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %d live backends after 10s: %+v", key, want, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// table reads service id's Maglev table and the kernel's ID of the map
// that holds it.
func table(t *testing.T, dp *Datapath, id uint32) ([]uint32, uint32) {
	t.Helper()
	var inner uint32
	if err := dp.lb.objs.HalbMaglev.Lookup(id, &inner); err != nil {
		t.Fatalf("maglev table of service %d: %v", id, err)
	}
	tb, err := dp.lb.maglevTable(id)
	if err != nil {
		t.Fatal(err)
	}
	return tb, inner
}

func slotsOf(table []uint32) map[uint32]int {
	n := map[uint32]int{}
	for _, id := range table {
		n[id]++
	}
	return n
}

func backendOf(s ServiceStatus, a netip.Addr) BackendStatus {
	for _, b := range s.Backends {
		if b.Addr.Addr() == a {
			return b
		}
	}
	return BackendStatus{}
}

// TestDatapathApply covers what Apply writes: IDs, Maglev tables from
// weights and MACs, drains, removals, and the services it refuses.
func TestDatapathApply(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	if dp.Name() != "xdp" || !slices.Equal(dp.Attachments(), []Attachment{{"halb0", HookXDPNative}}) {
		t.Fatalf("Name %q, Attachments %v; want xdp native on halb0", dp.Name(), dp.Attachments())
	}

	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(be13, 2))}); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 3)
	if s.ID != 0 {
		t.Errorf("first service has id %d, want 0", s.ID)
	}
	peerMAC := func() net.HardwareAddr {
		l, err := b.peers.Netlink(t).LinkByName("halb0p")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}()
	for i, a := range []netip.Addr{be11, be12, be13} {
		got := backendOf(s, a)
		if got.ID != uint32(i+1) || got.Interface != "halb0" || !bytes.Equal(got.MAC, peerMAC) {
			t.Errorf("backend %s: %+v, want id %d on halb0 with MAC %s", a, got, i+1, peerMAC)
		}
	}
	tb, inner := table(t, dp, s.ID)
	if n := slotsOf(tb); n[0] != 0 || n[1] < 55 || n[1] > 70 || n[3] < 115 || n[3] > 135 {
		t.Errorf("slots per backend id %v: want about 63, 63 and 125 of 251 for weights 1, 1, 2", n)
	}

	// The same services again: nothing is written.
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be13, 2), backend(be12, 1), backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	if _, again := table(t, dp, s.ID); again != inner {
		t.Errorf("applying the same backends in another order replaced the maglev table (map %d, now %d)", inner, again)
	}

	// An IPv6 service, persistent: its backend's MAC comes from neighbour
	// discovery, and its record asks for source hashing.
	v6 := service.Service{Name: "web6", Key: web6, Scheduler: "sh", Forward: service.DR,
		Backends: []service.Backend{{Addr: be6, Port: 443, Weight: 1}}}
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be13, 2), backend(be12, 1), backend(be11, 1)), v6}); err != nil {
		t.Fatal(err)
	}
	s6 := waitLive(t, dp, web6, 1)
	if got := backendOf(s6, be6); !bytes.Equal(got.MAC, peerMAC) || got.Addr.Port() != 443 {
		t.Errorf("backend %s: %+v, want port 443 and MAC %s", be6, got, peerMAC)
	}
	k6, err := serviceKey(web6)
	if err != nil {
		t.Fatal(err)
	}
	var rec6 halbService
	if err := dp.lb.objs.HalbServices.Lookup(&k6, &rec6); err != nil || rec6.Flags != halbServiceFlagsSERVICE_F_SOURCE_HASH || rec6.Id != s6.ID {
		t.Errorf("%s in halb_services: %+v (%v), want id %d and source hashing", web6, rec6, err, s6.ID)
	}

	// Drain be12, remove be13, add be14 and a second service; web6 goes.
	err = dp.Apply(ctx, []service.Service{
		svc(web, backend(be11, 1), backend(be12, 0), backend(be14, 1)),
		svc(dns, service.Backend{Addr: be11, Weight: 1}),
	})
	if err != nil {
		t.Fatal(err)
	}
	s = waitLive(t, dp, web, 2)
	if got := backendOf(s, be12); got.ID != 2 || got.Live || got.MAC == nil || got.Weight != 0 {
		t.Errorf("drained backend %s: %+v, want id 2 with its MAC, not live", be12, got)
	}
	// web6's backend took id 4, and dns comes first (services are written
	// in key order) and takes id 5; ids 3 and 4, freed just now, must wait
	// behind every unused one.
	if got := backendOf(s, be14); got.ID != 6 {
		t.Errorf("new backend %s has id %d, want 6", be14, got.ID)
	}
	var rec halbBackend
	if err := dp.lb.objs.HalbBackends.Lookup(uint32(3), &rec); err != nil || rec != (halbBackend{}) {
		t.Errorf("removed backend's record: %+v (%v), want cleared", rec, err)
	}
	if err := dp.lb.objs.HalbBackends.Lookup(uint32(2), &rec); err != nil || rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE == 0 || rec.Weight != 0 {
		t.Errorf("drained backend's record: %+v (%v), want active with weight 0", rec, err)
	}
	tb, _ = table(t, dp, s.ID)
	if n := slotsOf(tb); len(n) != 2 || n[1] == 0 || n[6] == 0 {
		t.Errorf("slots per backend id %v: want backends 1 and 6 only", n)
	}
	st, err := dp.Status()
	if err != nil || len(st) != 2 || st[0].Key != dns || st[0].ID != 1 || st[0].Backends[0].Addr.Port() != 53 {
		t.Errorf("status %+v (%v): want dns with web6's freed id 1 and its backend on port 53 first", st, err)
	}

	// What the data path cannot do is refused; the rest is applied. A
	// backend it cannot reach is no error: it is reported with the
	// reason, out of the table.
	lc := svc(dns, backend(be11, 1))
	lc.Scheduler = "lc"
	unrouted := netip.MustParseAddr("203.0.113.9")
	err = dp.Apply(ctx, []service.Service{
		svc(web, backend(be11, 1), backend(be14, 1), backend(unrouted, 1)),
		lc,
	})
	if !errors.Is(err, service.ErrUnsupported) || !strings.Contains(err.Error(), "scheduler lc") ||
		strings.Contains(err.Error(), "203.0.113.9") {
		t.Errorf("Apply with scheduler lc and an unreachable backend: %v; want ErrUnsupported naming lc, and not the backend", err)
	}
	st, _ = dp.Status()
	if len(st) != 1 || st[0].Key != web || len(st[0].Backends) != 3 {
		t.Errorf("status %+v: want web alone with its two reachable backends and the unreachable one", st)
	} else if got := backendOf(st[0], unrouted); got.ID != 0 || got.Live || !strings.Contains(got.Problem, "no route") {
		t.Errorf("unreachable backend %s: %+v, want no id, not live, and the problem \"no route\"", unrouted, got)
	}
	if tb, _ := table(t, dp, st[0].ID); len(slotsOf(tb)) != 2 {
		t.Errorf("slots per backend id %v: want the two reachable backends", slotsOf(tb))
	}

	// Nothing left.
	if err := dp.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*ebpf.Map{dp.lb.objs.HalbServices, dp.lb.objs.HalbVips, dp.lb.objs.HalbMaglev} {
		var k, v []byte
		if it := m.Iterate(); it.Next(&k, &v) {
			t.Errorf("%v is not empty after applying no services", m)
		}
	}
}

// A backend whose MAC is unknown waits out of the table, and joins it when
// the neighbour table learns its address.
func TestDatapathNeighbourLater(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	late := netip.MustParseAddr("192.0.2.20") // nobody has it yet
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1), backend(late, 1))}); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 1)
	if got := backendOf(s, late); got.ID == 0 || got.Live || got.MAC != nil {
		t.Fatalf("backend %s without a neighbour: %+v, want an id and no MAC", late, got)
	}
	tb, _ := table(t, dp, s.ID)
	if n := slotsOf(tb); len(n) != 1 {
		t.Fatalf("slots per backend id %v: want %s alone", n, be11)
	}
	// The address turns up: the retry's ARP request finds it.
	up(t, b.peers.Netlink(t), "halb0p", "192.0.2.20/24")
	s = waitLive(t, dp, web, 2)
	tb, _ = table(t, dp, s.ID)
	if n := slotsOf(tb); len(n) != 2 {
		t.Fatalf("slots per backend id %v: want both backends", n)
	}

	// Its MAC changes: the record follows, the table stays.
	_, inner := table(t, dp, s.ID)
	newMAC := net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x01}
	h := b.lb.Netlink(t)
	l, _ := h.LinkByName("halb0")
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: late.AsSlice(), HardwareAddr: newMAC, State: netlink.NUD_PERMANENT}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !bytes.Equal(backendOf(waitLive(t, dp, web, 2), late).MAC, newMAC) {
		if time.Now().After(deadline) {
			t.Fatalf("backend %s kept its old MAC after the neighbour table changed", late)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, again := table(t, dp, s.ID); again != inner {
		t.Errorf("a MAC change replaced the maglev table")
	}
}

// pins lists what is pinned under dir.
func pins(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// xdpOn tells which program is attached to halb0 and how.
func xdpOn(t *testing.T, b *dpBench) (progID uint32, mode uint32) {
	t.Helper()
	l, err := b.lb.Netlink(t).LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId, x.AttachMode
	}
	return 0, 0
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// TestDatapathRestart is halb restarting: Close leaves everything pinned
// and forwarding, the next Datapath adopts it and changes nothing that
// did not change, an incompatible map is replaced with a log line, and
// Cleanup leaves nothing behind.
func TestDatapathRestart(t *testing.T) {
	b := newDPBench(t)
	ctx := context.Background()
	services := []service.Service{svc(web, backend(be11, 1), backend(be12, 1))}

	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 2)
	tb, inner := table(t, dp, s.ID)
	servicesID := mapID(t, dp.lb.objs.HalbServices)
	ctID := mapID(t, dp.lb.objs.HalbCt)
	wantPins := []string{"halb_backend_stats", "halb_backends", "halb_ct", "halb_drops", "halb_events", "halb_fnat", "halb_maglev",
		"halb_service_ids", "halb_service_stats", "halb_services", "halb_tx_ports", "halb_vips", "halb_xdp_lb", "halb_xdp_lb_halb0"}
	if got := pins(t, b.cfg.BPFFS); !slices.Equal(got, wantPins) {
		t.Errorf("pins %v, want %v", got, wantPins)
	}
	prog1, mode := xdpOn(t, b)
	if prog1 == 0 || mode != nl.XDP_ATTACHED_DRV {
		t.Fatalf("XDP on halb0: program %d mode %d, want native", prog1, mode)
	}

	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if prog, _ := xdpOn(t, b); prog != prog1 {
		t.Fatalf("after Close the program on halb0 is %d, want %d still attached", prog, prog1)
	}

	// The restart: everything adopted, the program replaced in place.
	dp = b.start(t, b.cfg, config.ModeXDP)
	if got := mapID(t, dp.lb.objs.HalbServices); got != servicesID {
		t.Errorf("halb_services is map %d after the restart, want the pinned %d", got, servicesID)
	}
	prog2, mode := xdpOn(t, b)
	if prog2 == prog1 || prog2 == 0 || mode != nl.XDP_ATTACHED_DRV {
		t.Errorf("after the restart halb0 runs program %d (mode %d), want the new one, not %d, natively", prog2, mode, prog1)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	s2 := waitLive(t, dp, web, 2)
	tb2, inner2 := table(t, dp, s2.ID)
	if s2.ID != s.ID || !slices.EqualFunc(s2.Backends, s.Backends, func(a, b BackendStatus) bool { return a.ID == b.ID }) {
		t.Errorf("after the restart %+v, want the same ids as %+v", s2, s)
	}
	if inner2 != inner || !slices.Equal(tb2, tb) {
		t.Errorf("the restart rewrote an unchanged maglev table (map %d, was %d)", inner2, inner)
	}
	dp.Close()

	// Another table size: halb_maglev cannot take the new tables and is
	// replaced; the program on halb0 changes only once they are written.
	cfg := b.cfg
	cfg.MaglevTableSize = 257
	dp = b.start(t, cfg, config.ModeXDP)
	if !strings.Contains(b.log.String(), "replacing it") || !strings.Contains(b.log.String(), "map=halb_maglev") {
		t.Errorf("no log line says halb_maglev was replaced:\n%s", b.log)
	}
	if got := mapID(t, dp.lb.objs.HalbCt); got != ctID {
		t.Errorf("halb_ct was replaced too (map %d, was %d): only halb_maglev changed", got, ctID)
	}
	if prog, _ := xdpOn(t, b); prog != prog2 {
		t.Errorf("program on halb0 replaced before the new maps were written")
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	s3 := waitLive(t, dp, web, 2)
	if tb3, _ := table(t, dp, s3.ID); len(tb3) != 257 {
		t.Errorf("maglev table of %d slots, want 257", len(tb3))
	}
	if prog, _ := xdpOn(t, b); prog == prog2 || prog == 0 {
		t.Errorf("program on halb0 still %d after the first apply, want the new one", prog)
	}

	// Cleanup: nothing attached, nothing pinned.
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if prog, _ := xdpOn(t, b); prog != 0 {
		t.Errorf("program %d still on halb0 after Cleanup", prog)
	}
	if _, err := os.Stat(b.cfg.BPFFS); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still there after Cleanup: %v %v", b.cfg.BPFFS, err, pins(t, b.cfg.BPFFS))
	}
}

// TestDatapathTC attaches halb_tc_lb through tcx, then moves to XDP on a
// restart without a moment where neither is attached.
func TestDatapathTC(t *testing.T) {
	b := newDPBench(t)
	b.peerXDPPass(t) // so that auto may pick native XDP on the veth
	dp := b.start(t, b.cfg, config.ModeTC)
	if dp.Name() != "tc" || !slices.Equal(dp.Attachments(), []Attachment{{"halb0", HookTCX}}) {
		t.Fatalf("Name %q, Attachments %v; want tc through tcx on halb0", dp.Name(), dp.Attachments())
	}
	// Each program takes the verifier a while: the one no hook runs
	// is not loaded.
	if n := len(dp.lb.loaded()); n != 1 {
		t.Errorf("%d programs loaded for a data path on tc, want halb_tc_lb alone", n)
	}
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	if got := pins(t, b.cfg.BPFFS); !slices.Contains(got, "halb_tc_lb_halb0") || !slices.Contains(got, "halb_tc_lb") || slices.Contains(got, "halb_xdp_lb") {
		t.Errorf("pins %v: want halb_tc_lb and its link on halb0, and no halb_xdp_lb", got)
	}
	dp.Close()

	cfg := b.cfg
	cfg.XDPMode = "auto"
	dp = b.start(t, cfg, config.ModeXDP)
	if !slices.Equal(dp.Attachments(), []Attachment{{"halb0", HookXDPNative}}) {
		t.Errorf("Attachments %v after moving to xdp, want native on halb0", dp.Attachments())
	}
	if n := len(dp.lb.loaded()); n != 1 {
		t.Errorf("%d programs loaded for a data path on native XDP, want halb_xdp_lb alone", n)
	}
	if got := pins(t, b.cfg.BPFFS); slices.Contains(got, "halb_tc_lb_halb0") || slices.Contains(got, "halb_tc_lb") {
		t.Errorf("pins %v: the tc link and program should be gone", got)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// xdp_mode auto falls back from native XDP to generic on a driver without
// native XDP (a bridge); native alone is refused there, naming the reason.
// (halb0's peer has an XDP program: see TestDatapathVethPeer.)
func TestDatapathFallback(t *testing.T) {
	b := newDPBench(t)
	b.peerXDPPass(t) // so that auto may pick native XDP on the veth
	h := b.lb.Netlink(t)
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	up(t, h, "br0")
	cfg := b.cfg
	cfg.Interfaces = []string{"halb0", "br0"}
	cfg.XDPMode = "auto"
	dp := b.start(t, cfg, config.ModeXDP)
	want := []Attachment{{"halb0", HookXDPNative}, {"br0", HookXDPGeneric}}
	if got := dp.Attachments(); !slices.Equal(got, want) {
		t.Errorf("Attachments %v, want %v", got, want)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}

	cfg.XDPMode = "native"
	err := b.lb.Do(func() error {
		dp, err := NewDatapath(cfg, config.ModeXDP, nil)
		if err == nil {
			dp.Cleanup()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "attach to br0") || !strings.Contains(err.Error(), "xdp native") {
		t.Errorf("native XDP on br0: %v, want an error naming br0 and xdp native", err)
	}
	if err := RemovePinned(cfg.BPFFS); err != nil {
		t.Fatal(err)
	}
	if prog, _ := xdpOn(t, b); prog != 0 {
		t.Errorf("program %d left on halb0 after RemovePinned", prog)
	}
}

// A datapath.bpffs whose parent is on no bpf filesystem, outside
// /sys/fs/bpf, is refused with the mount to make, and nothing is mounted
// or made: empty or not, the directory is not halb's to mount over.
func TestPrepareBPFFSRefusesOutsideSysFsBpf(t *testing.T) {
	netnstest.Require(t)
	for _, full := range []bool{false, true} {
		parent := t.TempDir()
		if full {
			if err := os.WriteFile(filepath.Join(parent, "keep"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		before := mountCount(t, parent)
		dir := filepath.Join(parent, "halb")
		mounted, created, err := prepareBPFFS(dir, slog.Default())
		want := "mount -t bpf bpf " + parent
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("prepareBPFFS %s (parent holds a file: %v): %v, want a refusal naming %q", dir, full, err, want)
		}
		if cerr := CheckBPFFS(dir); cerr == nil || !strings.Contains(cerr.Error(), want) {
			t.Errorf("CheckBPFFS %s: %v, want a refusal naming %q", dir, cerr, want)
		}
		if onBPFFS(parent) {
			unix.Unmount(parent, 0)
			t.Fatalf("mounted a bpf filesystem on %s", parent)
		}
		if mounted != "" || created || mountCount(t, parent) != before {
			t.Errorf("prepareBPFFS %s mounted %q, created %v, mounts %d then %d", dir, mounted, created, before, mountCount(t, parent))
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("prepareBPFFS made %s: %v", dir, err)
		}
	}
	// On a bpf filesystem, the same path is fine.
	parent := halbtest.BPFFS(t)
	if err := CheckBPFFS(filepath.Join(parent, "halb")); err != nil {
		t.Errorf("CheckBPFFS under a bpf filesystem: %v", err)
	}
	if _, _, err := prepareBPFFS(filepath.Join(parent, "halb"), slog.Default()); err != nil {
		t.Errorf("prepareBPFFS under a bpf filesystem: %v", err)
	}
}

// On a host booted without a bpf filesystem, halb mounts one on
// /sys/fs/bpf as today; in a mount namespace of its own (ip netns exec),
// where that mount dies with halb, it says so and names nsenter. The test
// makes such a namespace on its own thread, with an empty /sys/fs/bpf.
func TestPrepareBPFFSMountsSysFsBpfInPrivateNS(t *testing.T) {
	netnstest.Require(t)
	var (
		logs              bytes.Buffer
		mounted, onFS     string
		created, fsBefore bool
	)
	hostBefore, mountsBefore := onBPFFS(hostBPFFS), mountCount(t, "/sys")
	// The mount namespace the test started in stands for the host's
	// (PID 1's may not be readable in a container): held open, it is
	// read through the descriptor.
	host, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	defer func(was string) { initMountNS = was }(initMountNS)
	initMountNS = fmt.Sprintf("/proc/self/fd/%d", host.Fd())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is never unlocked: it ends with the goroutine,
		// and its mount namespace with it.
		runtime.LockOSThread()
		if err = unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			return
		}
		if err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return
		}
		// What ip netns exec gives: a /sys of its own, so an empty
		// /sys/fs/bpf with no bpf filesystem on it.
		if err = unix.Mount("tmpfs", "/sys/fs", "tmpfs", 0, "mode=0755"); err != nil {
			return
		}
		if err = os.Mkdir(hostBPFFS, 0o755); err != nil {
			return
		}
		fsBefore = onBPFFS(hostBPFFS)
		log := slog.New(slog.NewTextHandler(&logs, nil))
		mounted, created, err = prepareBPFFS(filepath.Join(hostBPFFS, "halb"), log)
		if onBPFFS(filepath.Join(hostBPFFS, "halb")) {
			onFS = "bpf"
		}
	}()
	<-done
	if err != nil {
		t.Fatalf("prepareBPFFS /sys/fs/bpf/halb in a private mount namespace: %v\n%s", err, logs.String())
	}
	if fsBefore || mounted != hostBPFFS || !created || onFS != "bpf" {
		t.Errorf("mounted %q, created %v, on bpf %q (bpf before: %v), want a bpf filesystem mounted on %s and halb made in it",
			mounted, created, onFS, fsBefore, hostBPFFS)
	}
	if !strings.Contains(logs.String(), "nsenter --net=/run/netns/NAME") {
		t.Errorf("no warning naming nsenter:\n%s", logs.String())
	}
	// The test's own mount namespace is untouched.
	if onBPFFS(hostBPFFS) != hostBefore || mountCount(t, "/sys") != mountsBefore {
		t.Errorf("the mount namespace of the test changed: bpf on %s %v then %v, %d mounts then %d",
			hostBPFFS, hostBefore, onBPFFS(hostBPFFS), mountsBefore, mountCount(t, "/sys"))
	}
}

// mountCount counts the mounts this thread sees at or below any of under.
// Only those: the tests of other packages, run at the same time, mount and
// unmount bpf filesystems of their own in the same mount namespace.
func mountCount(t *testing.T, under ...string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		point := fields[4] // octal-escaped, as under is not: a path with a blank is not one of the tests'
		for _, dir := range under {
			if point == dir || strings.HasPrefix(point, strings.TrimSuffix(dir, "/")+"/") {
				n++
				break
			}
		}
	}
	return n
}

// purgeConntrack finds every flow of the backends it is given, across
// batches.
func TestPurgeConntrack(t *testing.T) {
	const flows = 10000
	lb := withFlows(t, flows, func(i int) halbCtEntry { return halbCtEntry{BackendId: uint32(i%4 + 1)} })
	n, err := lb.purgeConntrack(map[uint32]bool{2: true, 4: true})
	if err != nil || n != flows/2 {
		t.Fatalf("purged %d flows (%v), want %d", n, err, flows/2)
	}
	var (
		k    halbFlow
		v    halbCtEntry
		left int
	)
	for it := lb.objs.HalbCt.Iterate(); it.Next(&k, &v); left++ {
		if v.BackendId == 2 || v.BackendId == 4 {
			t.Fatalf("flow %+v of backend %d survived", k, v.BackendId)
		}
	}
	if left != flows/2 {
		t.Errorf("%d flows left, want %d", left, flows/2)
	}
}

// An interface deleted and made again while halb was stopped: the pinned
// link is defunct, and the next Datapath attaches afresh.
func TestDatapathInterfaceRecreated(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	h := b.lb.Netlink(t)
	l, err := h.LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halb0", HardwareAddr: halb0MAC}, PeerName: "halb0p"}); err != nil {
		t.Fatal(err)
	}
	up(t, h, "halb0", "192.0.2.1/24")

	dp = b.start(t, b.cfg, config.ModeXDP)
	if prog, mode := xdpOn(t, b); prog == 0 || mode != nl.XDP_ATTACHED_DRV {
		t.Errorf("halb0 made again: program %d mode %d, want attached natively", prog, mode)
	}
	if !strings.Contains(b.log.String(), "not attached to its interface") {
		t.Errorf("no log line about the defunct link:\n%s", b.log)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// forward: tun takes backends anywhere the kernel routes to through one of
// datapath.interfaces, with the balancer's address toward each as the
// outer source, and asks for the next hops' MACs; an interface that does
// not forward is reported, since the program's FIB lookups need it, and a
// backend routed elsewhere is left out.
func TestDatapathTUN(t *testing.T) {
	b := newDPBench(t)
	h := b.lb.Netlink(t)
	routed := netip.MustParseAddr("203.0.113.9")
	_, dst, _ := net.ParseCIDR("203.0.113.0/24")
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: be12.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other0p"}); err != nil {
		t.Fatal(err)
	}
	up(t, h, "other0p")
	up(t, h, "other0", "198.51.100.1/24")
	elsewhere := netip.MustParseAddr("198.51.100.50")

	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	tun := service.Service{Name: "tun", Key: web, Scheduler: "mh", Forward: service.TUN,
		Backends: []service.Backend{{Addr: be11, Weight: 1}, {Addr: routed, Weight: 1}, {Addr: elsewhere, Weight: 1}}}
	tun6 := service.Service{Name: "tun6", Key: web6, Scheduler: "mh", Forward: service.TUN,
		Backends: []service.Backend{{Addr: be6, Weight: 1}}}

	// Without forwarding the program's FIB lookups fail: the backends
	// are not served, and each says why. So is the one routed elsewhere.
	if err := dp.Apply(ctx, []service.Service{tun, tun6}); err != nil {
		t.Errorf("Apply without forwarding: %v; want the problems in Status, not an error", err)
	}
	problems := map[netip.Addr]string{}
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		for _, b := range s.Backends {
			problems[b.Addr.Addr()] = b.Problem
			if b.Live {
				t.Errorf("backend %s is live without forwarding: %+v", b.Addr, b)
			}
		}
	}
	for a, want := range map[netip.Addr]string{
		be11: "sysctl -w net.ipv4.conf.halb0.forwarding=1", routed: "sysctl -w net.ipv4.conf.halb0.forwarding=1",
		be6: "sysctl -w net.ipv6.conf.halb0.forwarding=1", elsewhere: "routed through other0, which is not one of datapath.interfaces",
	} {
		if !strings.Contains(problems[a], want) {
			t.Errorf("backend %s: problem %q, want one that says %q", a, problems[a], want)
		}
	}
	// Forwarding on: the retry takes them in without another Apply.
	err = b.lb.Do(func() error {
		for _, p := range []string{"/proc/sys/net/ipv4/conf/halb0/forwarding", "/proc/sys/net/ipv6/conf/halb0/forwarding"} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 2)
	src := netip.MustParseAddr("192.0.2.1")
	for _, a := range []netip.Addr{be11, routed} {
		got := backendOf(s, a)
		if got.ID == 0 || got.TunnelSrc != src || got.Interface != "halb0" || got.MAC != nil || !got.Live {
			t.Errorf("tunnel end %s: %+v, want live on halb0 from %s without a MAC", a, got, src)
		}
		var rec halbBackend
		if err := dp.lb.objs.HalbBackends.Lookup(got.ID, &rec); err != nil || addrFrom(rec.Src, rec.Family) != src ||
			rec.Flags != halbBackendFlagsBACKEND_F_ACTIVE || rec.Addr != (halbAddr{Bytes: a.As16()}) {
			t.Errorf("record of %s: %+v (%v), want active with source %s", a, rec, err, src)
		}
	}
	if got := backendOf(s, elsewhere); got.ID != 0 || !strings.Contains(got.Problem, "routed through other0") {
		t.Errorf("backend %s routed through other0 was written: %+v", elsewhere, got)
	}
	s6 := waitLive(t, dp, web6, 1)
	if got := backendOf(s6, be6); got.TunnelSrc != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("ipv6 tunnel end %s: %+v, want source 2001:db8::1", be6, got)
	}
	k, err := serviceKey(web)
	if err != nil {
		t.Fatal(err)
	}
	var rec halbService
	if err := dp.lb.objs.HalbServices.Lookup(&k, &rec); err != nil || rec.Forward != halbForwardModeFORWARD_TUN {
		t.Errorf("%s in halb_services: %+v (%v), want forward tun", web, rec, err)
	}

	// The routed backend's next hop is asked for, and the neighbour
	// table learns it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := h.NeighList(0, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(list, func(n netlink.Neigh) bool {
			return n.IP.Equal(be12.AsSlice()) && n.State&neighbourStates != 0
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no neighbour entry for the next hop %s after 10s: %v", be12, list)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// With forwarding on, and the backend elsewhere gone, all is well.
	tun.Backends = tun.Backends[:2]
	if err := dp.Apply(ctx, []service.Service{tun, tun6}); err != nil {
		t.Errorf("Apply with forwarding on: %v", err)
	}
	if s := waitLive(t, dp, web, 2); len(s.Backends) != 2 || backendOf(s, elsewhere).Addr.IsValid() {
		t.Errorf("backends after %s left: %+v", elsewhere, s.Backends)
	}

	// Back to DR: the same backends, with MACs; the routed one cannot be,
	// and says why.
	tun.Forward = service.DR
	if err := dp.Apply(ctx, []service.Service{tun}); err != nil {
		t.Errorf("DR with a routed backend: %v, want its problem in Status, not an error", err)
	}
	s = waitLive(t, dp, web, 1)
	if got := backendOf(s, be11); got.MAC == nil || got.TunnelSrc.IsValid() {
		t.Errorf("backend %s after the move to DR: %+v, want a MAC and no tunnel source", be11, got)
	}
	if got := backendOf(s, routed); got.Live || !strings.Contains(got.Problem, "use forward: tun for a routed backend") {
		t.Errorf("DR with a routed backend: %+v, want it not live with a problem that points at forward: tun", got)
	}
}

// A backend that leaves is out of its service's table when Apply returns:
// no slot names its freed id, so no new flow meets a cleared record
// (DROP_NO_BACKEND) while the next Apply is still to come. Its counters
// stay in its service's: a service's counters, in Status, are its
// backends' added up and its own (what no backend took; the program
// counts a packet in one per-CPU counter only), and do not go back.
func TestDatapathRemovedBackendLeavesTable(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(be13, 1))}); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 3)
	gone := backendOf(s, be13).ID
	put := countsPutter(t)
	put(dp.lb.objs.HalbServiceStats, s.ID, 1) // unserved: dropped, say
	for i, a := range []netip.Addr{be11, be12, be13} {
		put(dp.lb.objs.HalbBackendStats, backendOf(s, a).ID, uint64(10*(i+1)))
	}
	stats := func(n uint64) service.Stats { return service.Stats{Packets: 2 * n, Bytes: 200 * n, NewFlows: 2} }
	total := service.Stats{Packets: 2 * 61, Bytes: 200 * 61, NewFlows: 8}
	wantCounts(t, dp, "three backends", total, map[netip.Addr]service.Stats{be11: stats(10), be12: stats(20), be13: stats(30)})

	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1))}); err != nil {
		t.Fatal(err)
	}
	tb, _ := table(t, dp, s.ID)
	n := slotsOf(tb)
	if n[gone] != 0 || n[0] != 0 || len(n) != 2 {
		t.Errorf("slots per backend id after removing %s (id %d): %v, want only the two that stay", be13, gone, n)
	}
	wantCounts(t, dp, "one backend left", total, map[netip.Addr]service.Stats{be11: stats(10), be12: stats(20)})
}

// countsPutter returns put, which writes n packets of 100 bytes and one
// new flow on the first and the last CPU each into id of a per-CPU stats
// map, as the program counts them.
func countsPutter(t *testing.T) func(m *ebpf.Map, id uint32, n uint64) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	return func(m *ebpf.Map, id uint32, n uint64) {
		t.Helper()
		perCPU := make([]halbStats, cpus)
		perCPU[0] = halbStats{Packets: n, Bytes: 100 * n, NewFlows: 1}
		perCPU[cpus-1].Packets += n
		perCPU[cpus-1].Bytes += 100 * n
		perCPU[cpus-1].NewFlows++
		if err := m.Put(id, perCPU); err != nil {
			t.Fatal(err)
		}
	}
}

// wantCounts wants Status to show web's counters total, and backends'
// each (and no other backend).
func wantCounts(t *testing.T, dp *Datapath, what string, total service.Stats, backends map[netip.Addr]service.Stats) {
	t.Helper()
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st, func(s ServiceStatus) bool { return s.Key == web })
	if i < 0 {
		t.Fatalf("%s: no %s in %+v", what, web, st)
	}
	if st[i].Stats != total {
		t.Errorf("%s: service counters %+v, want %+v", what, st[i].Stats, total)
	}
	for a, w := range backends {
		if got := backendOf(st[i], a).Stats; got != w {
			t.Errorf("%s: backend %s counters %+v, want %+v", what, a, got, w)
		}
	}
	if len(st[i].Backends) != len(backends) {
		t.Errorf("%s: %d backends, want %d", what, len(st[i].Backends), len(backends))
	}
}

// A backend the host has no way to yet (booting before its network) is no
// error: Apply serves the others, Status says why it is not served, and a
// route that comes later brings it in without another Apply. One that
// loses its way keeps its id, out of the table, until the way is back.
func TestDatapathUnreachableBackend(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	late := netip.MustParseAddr("203.0.113.20") // on halb0p, but halb0 has no route to it yet
	up(t, b.peers.Netlink(t), "halb0p", "203.0.113.20/24")
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(late, 1))}); err != nil {
		t.Fatalf("Apply with an unreachable backend: %v, want no error", err)
	}
	s := waitLive(t, dp, web, 2)
	if got := backendOf(s, late); got.ID != 0 || got.Live || !strings.Contains(got.Problem, "no route") {
		t.Errorf("backend %s without a route: %+v, want no id, not live, problem \"no route\"", late, got)
	}
	if tb, _ := table(t, dp, s.ID); len(slotsOf(tb)) != 2 || slotsOf(tb)[0] != 0 {
		t.Errorf("slots per backend id %v: want the two reachable backends alone", slotsOf(tb))
	}
	if !regexp.MustCompile(`level=WARN msg="backend not served" .*backend=203.0.113.20:80 reason="no route`).MatchString(b.log.String()) {
		t.Errorf("no log line for the unreachable backend:\n%s", b.log)
	}

	// The route comes: no Apply, the netlink event brings it in.
	h := b.lb.Netlink(t)
	halb0, err := h.LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{LinkIndex: halb0.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IP{203, 0, 113, 0}, Mask: net.CIDRMask(24, 32)}}
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	s = waitLive(t, dp, web, 3)
	got := backendOf(s, late)
	if got.ID == 0 || got.Problem != "" || got.MAC == nil {
		t.Errorf("backend %s once routed: %+v, want an id, a MAC and no problem", late, got)
	}
	if tb, _ := table(t, dp, s.ID); len(slotsOf(tb)) != 3 {
		t.Errorf("slots per backend id %v: want all three backends", slotsOf(tb))
	}
	if !regexp.MustCompile(`level=INFO msg="backend served again" .*backend=203.0.113.20:80`).MatchString(b.log.String()) {
		t.Errorf("no log line for the backend served again:\n%s", b.log)
	}

	// The route goes: the next Apply (the daemon's periodic one) takes
	// it out of the table, keeping its id and counters.
	id := got.ID
	if err := h.RouteDel(route); err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(late, 1))}); err != nil {
		t.Fatalf("Apply after the route went: %v", err)
	}
	s = waitLive(t, dp, web, 2)
	if got := backendOf(s, late); got.ID != id || got.Live || !strings.Contains(got.Problem, "no route") {
		t.Errorf("backend %s after its route went: %+v, want id %d kept, not live, problem \"no route\"", late, got, id)
	}
	if tb, _ := table(t, dp, s.ID); slotsOf(tb)[id] != 0 {
		t.Errorf("slots per backend id %v: backend %d has no route and is still in the table", slotsOf(tb), id)
	}
	var rec halbBackend
	if err := dp.lb.objs.HalbBackends.Lookup(id, &rec); err != nil || rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE != 0 || rec.Addr != (halbAddr{Bytes: late.As16()}) {
		t.Errorf("record of %s without a route: %+v (%v), want kept and inactive", late, rec, err)
	}
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	if got := backendOf(waitLive(t, dp, web, 3), late); got.ID != id {
		t.Errorf("backend %s back with id %d, want its old id %d", late, got.ID, id)
	}
}

// startErr is NewDatapath in the balancer's namespace, for a start that
// should fail.
func (b *dpBench) startErr(t *testing.T, cfg config.Datapath) error {
	t.Helper()
	return b.lb.Do(func() error {
		dp, err := NewDatapath(cfg, config.ModeXDP, slog.New(slog.NewTextHandler(b.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err == nil {
			dp.Close()
		}
		return err
	})
}

// waitAttachments waits until dp is attached to want, in that order.
func waitAttachments(t *testing.T, dp *Datapath, want ...string) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		var got []string
		for _, a := range dp.Attachments() {
			got = append(got, a.Interface)
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("attached to %v after 10s, want %v", got, want)
		}
	}
}

// A data-path interface that is missing at the start is waited for, as a
// VRRP instance waits for its own: halb starts on the others, attaches
// when the interface appears, lets go when it goes, and attaches again
// when it is made again.
func TestDatapathInterfaceLate(t *testing.T) {
	b := newDPBench(t)
	cfg := b.cfg
	cfg.Interfaces = []string{"late0", "halb0"}
	dp := b.start(t, cfg, config.ModeXDP)
	if !regexp.MustCompile(`level=WARN msg="data path interface missing, waiting for it" .*interface=late0`).MatchString(b.log.String()) {
		t.Errorf("no log line about the missing late0:\n%s", b.log)
	}
	waitAttachments(t, dp, "halb0")
	if dp.Name() != config.ModeXDP {
		t.Errorf("Name %q, want xdp", dp.Name())
	}
	if got, want := dp.Hooks(), []string{"late0: missing, waiting for it", "halb0: xdp native"}; !slices.Equal(got, want) {
		t.Errorf("Hooks %q, want %q", got, want)
	}
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)

	h := b.lb.Netlink(t)
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0x1a, 0x7e}
	makeLate := func() int {
		t.Helper()
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "late0", HardwareAddr: mac}, PeerName: "late0p"}); err != nil {
			t.Fatal(err)
		}
		up(t, h, "late0p")
		up(t, h, "late0")
		l, err := h.LinkByName("late0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Index
	}
	pin := filepath.Join(b.cfg.BPFFS, "halb_xdp_lb_late0")
	for round := range 2 {
		ifindex := makeLate()
		waitAttachments(t, dp, "late0", "halb0")
		if got, want := dp.Hooks(), []string{"late0: xdp native", "halb0: xdp native"}; !slices.Equal(got, want) {
			t.Errorf("round %d: Hooks %q, want %q", round, got, want)
		}
		l, err := h.LinkByIndex(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if x := l.Attrs().Xdp; x == nil || !x.Attached || x.AttachMode != nl.XDP_ATTACHED_DRV {
			t.Errorf("round %d: late0 appeared, xdp %+v: want halb's program attached natively", round, x)
		}
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("round %d: late0's link is not pinned: %v", round, err)
		}
		var v uint32
		if err := dp.lb.objs.HalbTxPorts.Lookup(uint32(ifindex), &v); err != nil {
			t.Errorf("round %d: late0 (ifindex %d) is not a tx port: %v", round, ifindex, err)
		}
		if !strings.Contains(b.log.String(), `msg="data path attached" datapath=xdp interface=late0`) {
			t.Errorf("round %d: no log line for the late attach:\n%s", round, b.log)
		}
		if err := h.LinkDel(l); err != nil {
			t.Fatal(err)
		}
		waitAttachments(t, dp, "halb0")
		if _, err := os.Stat(pin); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("round %d: late0 went and its pin stayed: %v", round, err)
		}
		if err := dp.lb.objs.HalbTxPorts.Lookup(uint32(ifindex), &v); err == nil {
			t.Errorf("round %d: late0 went and ifindex %d is still a tx port", round, ifindex)
		}
	}
	if s := waitLive(t, dp, web, 1); backendOf(s, be11).Interface != "halb0" {
		t.Errorf("backend on halb0 after late0 came and went: %+v", s)
	}
}

// A start that fails on its second interface leaves nothing it made: no
// program on the first, no pins, no bpffs directory or mount. What an
// earlier halb pinned and this one adopted stays attached and pinned.
func TestDatapathFailedStartUndoes(t *testing.T) {
	b := newDPBench(t)
	h := b.lb.Netlink(t)
	// A bridge has an Ethernet address and no native XDP.
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br9"}}); err != nil {
		t.Fatal(err)
	}
	up(t, h, "br9")
	cfg := b.cfg
	cfg.Interfaces = []string{"halb0", "br9"}

	mountsBefore := mountCount(t, filepath.Dir(b.cfg.BPFFS), hostBPFFS)
	err := b.startErr(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "attach to br9") {
		t.Fatalf("start with native XDP on a bridge: %v, want a failure to attach to br9", err)
	}
	if prog, _ := xdpOn(t, b); prog != 0 {
		t.Errorf("the failed start left program %d attached to halb0", prog)
	}
	if names := pins(t, b.cfg.BPFFS); len(names) != 0 {
		t.Errorf("the failed start left pins %v", names)
	}
	if _, err := os.Stat(b.cfg.BPFFS); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the failed start left %s: %v", b.cfg.BPFFS, err)
	}
	if after := mountCount(t, filepath.Dir(b.cfg.BPFFS), hostBPFFS); after != mountsBefore {
		t.Errorf("the failed start left a mount: %d mounts before, %d after\n%s", mountsBefore, after, b.log)
	}

	// An earlier halb's data path, adopted by a start that fails.
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	before := pins(t, b.cfg.BPFFS)
	prog, _ := xdpOn(t, b)
	if err := b.startErr(t, cfg); err == nil {
		t.Fatal("second start with native XDP on a bridge succeeded")
	}
	if now, _ := xdpOn(t, b); now != prog || prog == 0 {
		t.Errorf("program on halb0 %d after a failed start, want the earlier halb's %d", now, prog)
	}
	if after := pins(t, b.cfg.BPFFS); !slices.Equal(after, before) {
		t.Errorf("pins %v after a failed start, want the earlier halb's %v", after, before)
	}
}

// Pins taken away under a running halb come back: the maps, the program
// and the link are pinned again from the objects it holds, with a log
// line, within a few seconds, and a link pin removed just before a stop is
// restored by the stop itself, so the program stays attached across the
// restart that follows.
func TestDatapathPinsRestored(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	want := pins(t, b.cfg.BPFFS)
	prog, _ := xdpOn(t, b)
	linkPinPath := filepath.Join(b.cfg.BPFFS, "halb_xdp_lb_halb0")
	if !slices.Contains(want, "halb_xdp_lb_halb0") || !slices.Contains(want, "halb_services") || prog == 0 {
		t.Fatalf("pins %v, program %d: want halb_xdp_lb_halb0 and the maps, and a program on halb0", want, prog)
	}

	// rm -r of the whole directory, between two pin checks: one that
	// pinned a map again mid-way would make the directory not empty.
	dp.mu.Lock()
	err := os.RemoveAll(b.cfg.BPFFS)
	dp.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !slices.Equal(pins(t, b.cfg.BPFFS), want); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("pins %v 30s after they were removed, want %v again", pins(t, b.cfg.BPFFS), want)
		}
	}
	// The check logs each pin after making it, under the lock: the log
	// read under it holds the last one's line.
	dp.mu.Lock()
	logged := b.log.String()
	dp.mu.Unlock()
	m, err := ebpf.LoadPinnedMap(filepath.Join(b.cfg.BPFFS, "halb_services"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mapID(t, m); got != mapID(t, dp.lb.objs.HalbServices) {
		t.Errorf("restored halb_services pin names map %d, want halb's own %d", got, mapID(t, dp.lb.objs.HalbServices))
	}
	m.Close()
	for _, p := range []string{"halb_services", "halb_xdp_lb", "halb_xdp_lb_halb0"} {
		if !regexp.MustCompile(`level=WARN msg="restored a pin removed from under halb" .*pin=\S*/` + p + ` .*was=missing`).MatchString(logged) {
			t.Errorf("no log line for the restored pin %s:\n%s", p, logged)
		}
	}
	// Pins in place are left alone: a check later restores nothing.
	seen := len(b.log.String())
	time.Sleep(pinCheckInterval + time.Second)
	if later := b.log.String()[seen:]; strings.Contains(later, "restored a pin") || strings.Contains(later, "attached it again") {
		t.Errorf("a check with every pin in place restored something:\n%s", later)
	}

	// The link detached from under halb (bpftool link detach): the
	// program goes on again.
	l, err := link.LoadPinnedLink(linkPinPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if now, _ := xdpOn(t, b); now == prog && strings.Contains(b.log.String(), "attached it again") {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the program was not attached again 30s after its link was detached:\n%s", b.log)
		}
	}

	// The link's pin alone, just before a stop.
	if err := os.Remove(linkPinPath); err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(linkPinPath); err != nil {
		t.Errorf("link pin removed before the stop is still missing after it: %v", err)
	}
	if now, _ := xdpOn(t, b); now != prog {
		t.Fatalf("program on halb0 after the stop: %d, want %d still attached", now, prog)
	}

	// The next halb adopts the link.
	dp = b.start(t, b.cfg, config.ModeXDP)
	if now, _ := xdpOn(t, b); now == 0 {
		t.Errorf("no program on halb0 after the restart")
	}
	if !strings.Contains(b.log.String(), `msg="adopted the pinned data path" datapath=xdp interface=halb0`) {
		t.Errorf("the restarted data path did not adopt the link:\n%s", b.log)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// A second halb with a bpffs of its own on an interface where the first
// one's program runs is refused, whichever hook it would take, naming the
// interface, the first one's program id and its pin, and changes nothing:
// the first one's program stays the only one on halb0 and the second
// makes not even its datapath.bpffs. Before, it fell back to tcx and both balanced.
func TestDatapathRefusesAnotherHalb(t *testing.T) {
	b := newDPBench(t)
	b.start(t, b.cfg, config.ModeXDP)
	h := b.lb.Netlink(t)
	xdpProg := func() uint32 {
		l, err := h.LinkByName("halb0")
		if err != nil {
			t.Fatal(err)
		}
		if x := l.Attrs().Xdp; x != nil {
			return x.ProgId
		}
		return 0
	}
	held := xdpProg()
	if held == 0 {
		t.Fatal("the first halb attached no XDP program to halb0")
	}

	root := halbtest.BPFFS(t)
	for _, c := range []struct{ mode, xdpMode string }{
		{config.ModeXDP, "auto"}, {config.ModeXDP, "generic"}, {config.ModeTC, ""},
	} {
		cfg := b.cfg
		cfg.BPFFS, cfg.XDPMode = filepath.Join(root, "halb"), c.xdpMode
		err := b.lb.Do(func() error {
			dp, err := NewDatapath(cfg, c.mode, slog.New(slog.NewTextHandler(b.log, nil)))
			if err == nil {
				dp.Cleanup()
			}
			return err
		})
		if !errors.Is(err, ErrOtherHalb) {
			t.Fatalf("second halb (%s %s) on halb0: %v, want ErrOtherHalb", c.mode, c.xdpMode, err)
		}
		for _, want := range []string{"halb0", fmt.Sprintf("program id %d", held), linkPin(b.cfg.BPFFS, halbProgHalbXdpLb, "halb0")} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("second halb (%s %s): %v, want it to name %q", c.mode, c.xdpMode, err, want)
			}
		}
		if got := xdpProg(); got != held {
			t.Errorf("second halb (%s %s): XDP program on halb0 %d, want the first's %d", c.mode, c.xdpMode, got, held)
		}
		if n := tcxCount(t, b, "halb0"); n != 0 {
			t.Errorf("second halb (%s %s): %d tcx programs on halb0, want none", c.mode, c.xdpMode, n)
		}
		if _, err := os.Stat(cfg.BPFFS); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("second halb (%s %s) made %s (%v), pins %v", c.mode, c.xdpMode, cfg.BPFFS, err, pins(t, cfg.BPFFS))
		}
	}
}

// A program not halb's on the XDP hook keeps halb on tcx, as before, and
// that is said as a warning: halb then balances only what it passes.
func TestDatapathFallbackPastForeignXDPWarns(t *testing.T) {
	b := newDPBench(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "other_xdp", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var other link.Link
	if err := b.lb.Do(func() error {
		l, err := b.lb.Netlink(t).LinkByName("halb0")
		if err != nil {
			return err
		}
		other, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: l.Attrs().Index, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	cfg := b.cfg
	cfg.XDPMode = "auto"
	dp := b.start(t, cfg, config.ModeXDP)
	if got := dp.Attachments(); len(got) != 1 || got[0].Hook != HookTCX {
		t.Fatalf("attachments %+v, want halb0 on tcx", got)
	}
	if !regexp.MustCompile(`level=WARN msg="another program holds the xdp hook[^\n]*interface=halb0[^\n]*xdp_prog=other_xdp`).MatchString(b.log.String()) {
		t.Errorf("no warning naming the program on halb0's XDP hook:\n%s", b.log)
	}
	dp.Cleanup()
}

// tcxCount is how many programs the tcx ingress hook of ifname holds in
// the balancer's namespace.
func tcxCount(t *testing.T, b *dpBench, ifname string) int {
	t.Helper()
	l, err := b.lb.Netlink(t).LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}
