package vrrp

import (
	"bytes"
	"net"
	"net/netip"
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
