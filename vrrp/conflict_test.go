package vrrp

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"golang.org/x/net/bpf"
)

var (
	ourMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	vmacMAC  = net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, 51}
	theirMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	vip4     = netip.MustParseAddr("192.0.2.100")
	vip6     = netip.MustParseAddr("2001:db8::100")
)

func arpFrame(t *testing.T, op arp.Operation, mac net.HardwareAddr, sender, target netip.Addr) []byte {
	t.Helper()
	p, err := arp.NewPacket(op, mac, sender, broadcastMAC, target)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	f, err := (&ethernet.Frame{Destination: broadcastMAC, Source: mac, EtherType: ethernet.EtherTypeARP, Payload: b}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Which frames claim which address: a gratuitous ARP, a reply or a
// request sent from the address claim it; a probe (sender 0.0.0.0) does
// not; an NA claims its target for its TLLA.
func TestClaims(t *testing.T) {
	garp, err := GratuitousARP(theirMAC, vip4)
	if err != nil {
		t.Fatal(err)
	}
	na, err := UnsolicitedNA(theirMAC, netip.MustParseAddr("fe80::2"), vip6)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		parse func([]byte) (claim, bool)
		want  netip.Addr // invalid: no claim
	}{
		{"gratuitous ARP", garp, arpClaim, vip4},
		{"ARP reply", arpFrame(t, arp.OperationReply, theirMAC, vip4, netip.MustParseAddr("192.0.2.3")), arpClaim, vip4},
		{"ARP request from the VIP", arpFrame(t, arp.OperationRequest, theirMAC, vip4, netip.MustParseAddr("192.0.2.1")), arpClaim, vip4},
		{"ARP probe", arpFrame(t, arp.OperationRequest, theirMAC, netip.IPv4Unspecified(), vip4), arpClaim, netip.Addr{}},
		{"unsolicited NA", na, naClaim, vip6},
		{"NA as ARP", na, arpClaim, netip.Addr{}},
		{"ARP as NA", garp, naClaim, netip.Addr{}},
		{"short", garp[:20], arpClaim, netip.Addr{}},
		{"short NA", na[:60], naClaim, netip.Addr{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := tc.parse(tc.frame)
			if ok != tc.want.IsValid() || (ok && (c.ip != tc.want || !bytes.Equal(c.mac, theirMAC))) {
				t.Errorf("claim %+v %v, want %v at %s", c, ok, tc.want, theirMAC)
			}
		})
	}
}

// A claim on a VIP from a MAC not ours is a conflict; the first in each
// second per VIP is answered, and the answer says how many came since the
// last one.
func TestConflictsRateLimit(t *testing.T) {
	c := newConflicts([]netip.Prefix{netip.PrefixFrom(vip4, 24), netip.PrefixFrom(vip6, 64)}, ourMAC, vmacMAC, nil)
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		at       time.Duration
		cl       claim
		conflict bool
		answer   bool
		claims   uint64
	}{
		{0, claim{vip4, ourMAC}, false, false, 0},
		{0, claim{vip4, vmacMAC}, false, false, 0},
		{0, claim{netip.MustParseAddr("192.0.2.7"), theirMAC}, false, false, 0},
		{0, claim{vip4, theirMAC}, true, true, 1},
		{100 * time.Millisecond, claim{vip4, theirMAC}, true, false, 1},
		{200 * time.Millisecond, claim{vip6, theirMAC}, true, true, 1}, // another VIP: its own limit
		{900 * time.Millisecond, claim{vip4, theirMAC}, true, false, 2},
		{time.Second, claim{vip4, theirMAC}, true, true, 3},
		{1500 * time.Millisecond, claim{vip4, theirMAC}, true, false, 1},
	} {
		conflict, answer, claims := c.check(t0.Add(tc.at), tc.cl)
		if conflict != tc.conflict || answer != tc.answer || claims != tc.claims {
			t.Errorf("at %v %s from %s: conflict %v answer %v claims %d, want %v %v %d",
				tc.at, tc.cl.ip, tc.cl.mac, conflict, answer, claims, tc.conflict, tc.answer, tc.claims)
		}
	}
}

// The kernel filters pass only what the watch wants: ARP from a VIP, and
// NAs.
func TestConflictFilters(t *testing.T) {
	run := func(prog []bpf.RawInstruction, frame []byte) bool {
		t.Helper()
		var insns []bpf.Instruction
		for _, r := range prog {
			insns = append(insns, r.Disassemble())
		}
		vm, err := bpf.NewVM(insns)
		if err != nil {
			t.Fatal(err)
		}
		n, err := vm.Run(frame)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	arpProg, err := arpFilter([]netip.Addr{netip.MustParseAddr("198.51.100.1"), vip4, vip6})
	if err != nil {
		t.Fatal(err)
	}
	naProg, err := naFilter()
	if err != nil {
		t.Fatal(err)
	}
	garp, _ := GratuitousARP(theirMAC, vip4)
	other, _ := GratuitousARP(theirMAC, netip.MustParseAddr("192.0.2.7"))
	na, _ := UnsolicitedNA(theirMAC, netip.MustParseAddr("fe80::2"), vip6)
	advert, err := (&Advert{Version: 3, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{vip6}}).
		Marshal(nil, netip.MustParseAddr("fe80::2"), netip.MustParseAddr("ff02::12"))
	if err != nil {
		t.Fatal(err)
	}
	advertFrame, _ := (&ethernet.Frame{Destination: allNodesMAC, Source: theirMAC, EtherType: ethernet.EtherTypeIPv6,
		Payload: append(ipv6Header(netip.MustParseAddr("fe80::2"), netip.MustParseAddr("ff02::12"), 112, len(advert)), advert...)}).MarshalBinary()
	for _, tc := range []struct {
		name  string
		prog  []bpf.RawInstruction
		frame []byte
		want  bool
	}{
		{"ARP from the VIP", arpProg, garp, true},
		{"ARP from another address", arpProg, other, false},
		{"NA", naProg, na, true},
		{"IPv6 advert", naProg, advertFrame, false},
	} {
		if got := run(tc.prog, tc.frame); got != tc.want {
			t.Errorf("%s: passed %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The claim parsers read frames any host on the link can send: they must
// never panic, and a claim they return names an address and a MAC.
func FuzzClaims(f *testing.F) {
	garp, _ := GratuitousARP(theirMAC, vip4)
	na, _ := UnsolicitedNA(theirMAC, netip.MustParseAddr("fe80::2"), vip6)
	f.Add(garp)
	f.Add(na)
	f.Add(na[:60])
	f.Fuzz(func(t *testing.T, frame []byte) {
		for _, parse := range []func([]byte) (claim, bool){arpClaim, naClaim} {
			if c, ok := parse(frame); ok && (!c.ip.IsValid() || isZeroMAC(c.mac)) {
				t.Fatalf("claim %+v without an address or a MAC", c)
			}
		}
	})
}

// A Master defends its VIPs over the link's conflict watch: the watch
// starts with the takeover on the interface that holds the VIPs and
// stops when the VIPs are given up; every claim is counted; a due answer
// goes out through the watch that read the claim, and only while it is
// still the running one.
func TestVIPDefenceOverFakeLink(t *testing.T) {
	cfg := baseConfig()
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	lan0, _ := f.lookup("lan0")
	ws := f.conflictWatches()
	if len(ws) != 1 || ws[0].index != lan0.Index || ws[0].isStopped() {
		t.Fatalf("conflict watches %+v at takeover, want one running on lan0", ws)
	}
	w1 := ws[0]

	// Claims are counted as they are read, answered or not.
	w1.claim(vipA.Addr(), theirMAC, 1)
	r := w1.claim(vipA.Addr(), theirMAC, 2)
	if got := d.Status().Conflicts[vipA.Addr().String()]; got != 2 {
		t.Errorf("%d conflicts counted, want 2", got)
	}
	d.answerDue(now, r)
	if asked, answers := w1.counts(); asked != 1 || answers != 1 {
		t.Errorf("as MASTER: answer asked %d times, %d sent; want 1, 1", asked, answers)
	}
	if !strings.Contains(d.log.String(), "answered with our announcement") {
		t.Errorf("the answer was not logged:\n%s", d.log)
	}

	// A higher priority takes over: the watch stops with the VIPs.
	d.receive(now, advertFrom(t, cfg, peerA, 200))
	if d.m.State() != Backup || !w1.isStopped() {
		t.Fatalf("after a higher priority's advert: state %s, watch stopped %v", d.m.State(), w1.isStopped())
	}
	// Master again: a new watch. A claim the old one read is not
	// answered, by either.
	now = now.Add(time.Minute)
	d.tick(now)
	ws = f.conflictWatches()
	if d.m.State() != Master || len(ws) != 2 || ws[1].isStopped() {
		t.Fatalf("MASTER again: state %s, watches %+v; want a second one running", d.m.State(), ws)
	}
	d.answerDue(now, r)
	// The first watch was asked once, as MASTER; the second never.
	for i, want := range []int{1, 0} {
		if asked, _ := ws[i].counts(); asked != want {
			t.Errorf("watch %d asked to answer %d times, want %d: a claim of the stopped watch went to a watch", i, asked, want)
		}
	}
}

// A claim whose answer is due waits for what came before it: an advert
// already read that makes the Master give up is handled first, and the
// claim is not answered (the peer took over by the protocol). An instance
// no longer Master answers nothing, even on a watch still running.
func TestVIPDefenceYieldsToAdverts(t *testing.T) {
	cfg := baseConfig()
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	w := f.conflictWatches()[0]
	r := w.claim(vipA.Addr(), theirMAC, 1)
	d.adverts <- advertFrom(t, cfg, peerA, 200)
	d.answerDue(now, r)
	if asked, _ := w.counts(); d.m.State() != Backup || asked != 0 || len(d.adverts) != 0 {
		t.Errorf("a due claim behind a higher priority's advert: state %s, answer asked %d times, %d adverts queued; want BACKUP, none",
			d.m.State(), asked, len(d.adverts))
	}

	// The machine has moved on and its watch is (not yet) stopped.
	d = newDriven(t, cfg, upLAN(cfg))
	now = d.toMaster(t)
	w = d.fake.conflictWatches()[0]
	r = w.claim(vipA.Addr(), theirMAC, 1)
	d.m.Receive(now, Received{Priority: 200, Interval: cfg.AdvertInterval, Src: peerA})
	d.answerDue(now, r)
	if asked, _ := w.counts(); asked != 0 {
		t.Errorf("as %s: answer asked %d times, want none", d.m.State(), asked)
	}
}

// What a conflict watch does with the claims its sockets read, without
// the sockets: each conflict is reported at once, with the watch that
// read it; the one to answer is handed to the instance's loop
// (conflictAnswerDelay later), and the claims in between are folded into
// the next answer's count. Our own MACs claim nothing. After stop nothing
// is handed over (a hand-over already waiting gives up) and no answer
// runs.
func TestClaimWatch(t *testing.T) {
	id := &fakeWatch{}
	var mu sync.Mutex
	var reports []conflictReport
	due := make(chan conflictReport) // unbuffered: a hand-over waits for the loop
	c := newClaimWatch(id, []netip.Prefix{vipA}, func(r conflictReport) {
		mu.Lock()
		defer mu.Unlock()
		reports = append(reports, r)
	}, due, ourMAC, vmacMAC)
	reported := func() []conflictReport {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(reports)
	}

	c.read(t0, claim{ip: vipA.Addr(), mac: ourMAC})
	c.read(t0, claim{ip: vipA.Addr(), mac: vmacMAC})
	c.read(t0, claim{ip: netip.MustParseAddr("192.0.2.9"), mac: theirMAC})
	if r := reported(); len(r) != 0 {
		t.Fatalf("reports %+v for our own MACs and an address that is not a VIP, want none", r)
	}

	c.read(t0, claim{ip: vipA.Addr(), mac: theirMAC})
	c.read(t0.Add(100*time.Millisecond), claim{ip: vipA.Addr(), mac: theirMAC}) // within conflictAnswerInterval
	c.read(t0.Add(conflictAnswerInterval), claim{ip: vipA.Addr(), mac: theirMAC})
	if r := reported(); len(r) != 3 || slices.ContainsFunc(r, func(r conflictReport) bool { return r.watch != id || r.due || r.vip != vipA.Addr() }) {
		t.Fatalf("reports %+v, want three from the watch, none due", r)
	}
	// Each hand-over waits on a timer of its own: they may come in
	// either order.
	var counts []uint64
	for i := range 2 {
		select {
		case r := <-due:
			if !r.due || r.watch != id || !slices.Equal(r.mac, theirMAC) {
				t.Errorf("hand-over %d: %+v, want due from the watch", i, r)
			}
			counts = append(counts, r.claims)
		case <-time.After(10 * time.Second):
			t.Fatalf("hand-over %d did not come within 10 s", i)
		}
	}
	if slices.Sort(counts); !slices.Equal(counts, []uint64{1, 2}) {
		t.Errorf("hand-overs with %v claims, want 1 (the first) and 2 (the next, with the one in between)", counts)
	}
	if !c.whileRunning(func() {}) {
		t.Error("an answer did not run while the watch runs")
	}

	// A hand-over waiting when the watch stops gives up; stop returns
	// with nothing handed over, and no answer runs after it.
	c.read(t0.Add(2*conflictAnswerInterval), claim{ip: vipA.Addr(), mac: theirMAC})
	c.stop()
	select {
	case r := <-due:
		t.Errorf("handed over %+v after stop", r)
	default:
	}
	if c.whileRunning(func() { t.Error("an answer ran after stop") }) {
		t.Error("whileRunning reports an answer after stop")
	}
	c.read(t0.Add(3*conflictAnswerInterval), claim{ip: vipA.Addr(), mac: theirMAC})
	c.stop() // again: waits for nothing, since nothing was scheduled
}

// Through Run: a claim the watch reads is counted, and its due answer,
// handed to Run's loop, goes out through the running watch.
func TestVIPDefenceThroughRun(t *testing.T) {
	cfg := baseConfig()
	cfg.AdvertInterval = 100 * time.Millisecond
	f := upLAN(cfg)
	r := startRun(t, cfg, f, nil)
	r.waitState(t, Master)
	w := *waitFor(t, "a conflict watch", func() **fakeWatch {
		if ws := f.conflictWatches(); len(ws) == 1 {
			return &ws[0]
		}
		return nil
	})
	w.due <- w.claim(vipA.Addr(), theirMAC, 1)
	waitFor(t, "the answer", func() *int {
		if _, n := w.counts(); n == 1 {
			return &n
		}
		return nil
	})
	if got := r.Status().Conflicts[vipA.Addr().String()]; got != 1 {
		t.Errorf("%d conflicts counted, want 1", got)
	}
	r.stop(t)
	if !w.isStopped() {
		t.Error("the conflict watch still runs after Run returned")
	}
}
