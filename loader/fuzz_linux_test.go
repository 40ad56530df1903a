package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// FuzzXDP runs frames through halb_xdp_lb and halb_tc_lb with
// BPF_PROG_TEST_RUN and holds what comes out against a model of the
// program written apart from it, from the rules in bpf/halb_lb.c's opening
// comment: which frames are for a service, which are malformed, which go
// to the kernel. For every frame and both programs:
//
//   - the run succeeds (but for frames the kernel refuses before the
//     program runs: too short) and the verdict is one of pass,
//     drop, XDP_TX and redirect;
//   - a frame the model passes comes out passed and unchanged: the program
//     sits on a host's main interface and must not touch its traffic;
//   - a frame is dropped only when it is malformed and to a VIP, or for a
//     service that cannot take it (no backend, no route, too big, ...),
//     and counted once in halb_drops under the reason the model gives
//     (the ip-header, ip-length, tcp-header, udp-header, bad-source and
//     vip-source checks among them); a frame passed or forwarded is
//     counted nowhere;
//   - a frame that is forwarded is for a configured service (its address,
//     port and protocol, or an ICMP "too big" quoting one of its flows),
//     and goes to one of that service's backends, well formed: for dr the
//     IP packet byte for byte and only the MACs changed, to the backend's;
//     for tun an outer header (checked field by field, and decoded by
//     gopacket) whose IPv4 checksum verifies, then the IP packet as it
//     came;
//   - a forwarded packet's IPv4 header checksum verifies wherever the
//     input's did: the program never breaks one.
//
// The inputs are a raw frame when recipe is 0, else a frame built from the
// recipe's bits (target, protocol, tags, options, fragments, ICMP error)
// with raw as its payload, so that mutation reaches past the parser's
// first checks; cut and poke then truncate it and flip bits in one byte.
func FuzzXDP(f *testing.F) {
	fb := newFuzzBench(f)
	for _, s := range fuzzSeeds(f) {
		f.Add(s.raw, s.recipe, s.cut, s.at, s.xor)
	}
	f.Fuzz(func(t *testing.T, raw []byte, recipe uint64, cut, at uint16, xor byte) {
		in := fuzzFrame(t, raw, recipe, cut, at, xor)
		want := fb.model(in)
		for _, prog := range []string{halbProgHalbXdpLb, halbProgHalbTcLb} {
			fb.check(t, prog, in, want)
		}
	})
}

// fuzzMaxFrame bounds the frames: a full-sized Ethernet frame with a tag.
// Longer ones are cut to it.
const fuzzMaxFrame = 1518

// fuzzMTU is the veths' MTU, which bounds a tunnelled packet.
const fuzzMTU = 1500

type fuzzBackend struct {
	Backend
	egress int              // the interface the frame leaves by
	hop    net.HardwareAddr // tun: the next hop's MAC; nil when the neighbour table lacks it
}

type fuzzService struct {
	key      service.Key
	svc      Service
	backends []uint32 // none: the service has no Maglev table
}

// fuzzBench is the testbed of TestTUN, in a form a fuzz target can set up
// once per fuzzing process, with services of every kind.
type fuzzBench struct {
	tb       *testbed
	backends map[uint32]fuzzBackend
	services []fuzzService
}

func newFuzzBench(f *testing.F) *fuzzBench {
	f.Helper()
	ns := netnstest.New(f)
	h := ns.Netlink(f)
	tb := &testbed{ns: ns, backends: map[uint32]Backend{}}
	for _, l := range []struct {
		name  string
		mac   net.HardwareAddr
		index *int
		addrs []string
	}{
		{"halb0", halb0MAC, &tb.halb0, []string{"192.0.2.1/24", "2001:db8:0:10::1/64"}},
		{"halb1", halb1MAC, &tb.halb1, []string{"198.51.100.1/24", "2001:db8:0:11::1/64"}},
	} {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.name, HardwareAddr: l.mac, MTU: fuzzMTU}, PeerName: l.name + "p"}
		if err := h.LinkAdd(veth); err != nil {
			f.Fatalf("add veth %s: %v", l.name, err)
		}
		for _, name := range []string{l.name, l.name + "p"} {
			link, err := h.LinkByName(name)
			if err == nil {
				err = h.LinkSetUp(link)
			}
			if err != nil {
				f.Fatalf("bring up %s: %v", name, err)
			}
			if name == l.name {
				*l.index = link.Attrs().Index
			}
		}
		for _, a := range l.addrs {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				f.Fatal(err)
			}
			addr.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: *l.index}}, addr); err != nil {
				f.Fatalf("add %s: %v", a, err)
			}
		}
	}
	err := ns.Do(func() error {
		for _, p := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	waitLocal(f, h, tunSrc4, tunSrc4b, tunSrc6, tunSrc6b)
	addNeighbours(f, h, tb.tunNeighbours()...)
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{
		{netip.MustParsePrefix("203.0.113.128/25"), gw4},
		{netip.MustParsePrefix("2001:db8:0:20::/64"), gw6},
	} {
		dst := &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())}
		if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: r.gw.AsSlice()}); err != nil {
			f.Fatalf("route %s via %s: %v", r.dst, r.gw, err)
		}
	}

	// A small Maglev table: the program's modulus follows it, and the
	// bench sets up faster.
	lb, err := loadLB(Options{MaglevTableSize: 251, ConntrackEntries: 1024})
	if err != nil {
		f.Fatalf("load: %v", err)
	}
	f.Cleanup(func() { lb.close() })
	tb.lb = lb
	if err := ns.Do(func() error { return lb.addTxPort(tb.halb1) }); err != nil {
		f.Fatal(err)
	}
	// halb0's own MAC and a VMAC it holds: frames to either are the
	// node's.
	if err := lb.setLocalMACs(tb.halb0, testLocalMACs(tb.halb0)); err != nil {
		f.Fatal(err)
	}

	fb := &fuzzBench{tb: tb, backends: map[uint32]fuzzBackend{}}
	dr := func(addr string, ifindex int, src net.HardwareAddr, id byte) fuzzBackend {
		return fuzzBackend{
			Backend: Backend{Addr: netip.MustParseAddr(addr), MAC: net.HardwareAddr{0x02, 0, 0, 0, 0x01, id}, Ifindex: ifindex, SrcMAC: src},
			egress:  ifindex,
		}
	}
	tun := func(addr, src netip.Addr, ifindex int, srcMAC, hop net.HardwareAddr) fuzzBackend {
		return fuzzBackend{Backend: Backend{Addr: addr, Src: src, Ifindex: ifindex, SrcMAC: srcMAC}, egress: ifindex, hop: hop}
	}
	backends := map[uint32]fuzzBackend{
		1:  dr("198.51.100.11", tb.halb0, halb0MAC, 1), // XDP_TX
		2:  dr("198.51.100.12", tb.halb1, halb1MAC, 2), // XDP_REDIRECT
		3:  dr("198.51.100.13", tb.halb1, halb1MAC, 3),
		4:  dr("2001:db8:1::14", tb.halb0, halb0MAC, 4),
		5:  tun(onLink4, tunSrc4, tb.halb0, halb0MAC, onLink4MAC),
		6:  tun(routed4, tunSrc4b, tb.halb1, halb1MAC, gw4MAC),
		7:  tun(onLink6, tunSrc6, tb.halb0, halb0MAC, onLink6MAC),
		8:  tun(routed6, tunSrc6b, tb.halb1, halb1MAC, gw6MAC),
		9:  tun(noNeigh4, tunSrc4, tb.halb0, halb0MAC, nil),
		10: tun(onLink4, tunSrc4, tb.halb0, halb0MAC, onLink4MAC), // for an IPv6 service
	}
	fb.services = fuzzServices
	for _, s := range fb.services {
		if err := lb.putService(s.key, s.svc); err != nil {
			f.Fatal(err)
		}
		for _, id := range s.backends {
			b := backends[id]
			b.Service = s.svc.ID
			if err := lb.putBackend(id, b.Backend); err != nil {
				f.Fatalf("backend %d: %v", id, err)
			}
			fb.backends[id] = b
			tb.backends[id] = b.Backend
		}
		if len(s.backends) == 0 {
			continue
		}
		table := make([]uint32, lb.maglevTableSize())
		for i := range table {
			table[i] = s.backends[i%len(s.backends)]
		}
		if err := lb.setMaglevTable(s.svc.ID, table); err != nil {
			f.Fatal(err)
		}
	}
	return fb
}

// fuzzServices are the bench's services, one of each kind, with the
// backends newFuzzBench defines.
var fuzzServices = []fuzzService{
	{service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, Service{ID: 1, Forward: ForwardDR}, []uint32{1, 2}},
	{service.Key{VIP: vip4, Port: 53, Proto: service.UDP}, Service{ID: 2, Forward: ForwardDR, Persistence: true}, []uint32{3}},
	{service.Key{VIP: vip6, Port: 80, Proto: service.TCP}, Service{ID: 3, Forward: ForwardDR}, []uint32{4}},
	{service.Key{VIP: vip4, Port: 443, Proto: service.TCP}, Service{ID: 4, Forward: ForwardTUN}, []uint32{5}},
	{service.Key{VIP: vip4, Port: 4443, Proto: service.UDP}, Service{ID: 5, Forward: ForwardTUN}, []uint32{6}},
	{service.Key{VIP: vip6, Port: 53, Proto: service.UDP}, Service{ID: 6, Forward: ForwardTUN}, []uint32{7}},
	{service.Key{VIP: vip6, Port: 443, Proto: service.TCP}, Service{ID: 7, Forward: ForwardTUN}, []uint32{8}},
	{service.Key{VIP: vip4, Port: 81, Proto: service.TCP}, Service{ID: 8, Forward: ForwardTUN}, []uint32{9}},
	{service.Key{VIP: vip6, Port: 81, Proto: service.UDP}, Service{ID: 9, Forward: ForwardTUN}, []uint32{10}},
	{service.Key{VIP: vip6, Port: 8080, Proto: service.TCP}, Service{ID: 10, Forward: ForwardDR}, nil},
}

// fuzzTargets are where built frames go: the services, and three places
// that are none.
var fuzzTargets = func() []service.Key {
	ts := make([]service.Key, 0, len(fuzzServices)+3)
	for _, s := range fuzzServices {
		ts = append(ts, s.key)
	}
	return append(ts,
		service.Key{VIP: other4, Port: 80, Proto: service.TCP}, // not a VIP
		service.Key{VIP: vip4, Port: 8080, Proto: service.TCP}, // a VIP, no service on the port
		service.Key{VIP: vip6, Port: 9999, Proto: service.UDP}) // the same in IPv6
}()

// Recipe bits of a built frame; recipe 0 means raw.
const (
	// Bits 0-3: the target, modulo len(fuzzTargets).
	rcTarget = 0xf
	// Bits 4-5: 0 the target's protocol, 1 the other of TCP and UDP,
	// 2 an ICMP "too big" quoting a packet of the flow from the VIP,
	// 3 an ICMP echo.
	rcProtoShft = 4
	// Bits 6-7: no VLAN tag, 802.1Q, 802.1ad, two tags.
	rcTagShft = 6
	rcAck     = 1 << 8
	rcOptions = 1 << 9  // IPv4 options, or an IPv6 hop-by-hop header
	rcMF      = 1 << 10 // IPv4 more fragments
	rcLater   = 1 << 11 // IPv4, a later fragment
	rcDF      = 1 << 12 // IPv4 don't fragment
	// raw is the tail of the IP payload, counted in the IP length;
	// without it raw trails the packet as Ethernet padding.
	rcPayload   = 1 << 13
	rcPortShft  = 16      // bits 16-31: the client's port
	rcTOSShft   = 32      // bits 32-39: TOS or traffic class
	rcQuoteShft = 40      // bits 40-47: how much an ICMP error quotes, 0 all
	rcBuilt     = 1 << 63 // set in every seed recipe, so none is 0
)

// fuzzFrame makes the input frame from the fuzzer's arguments.
func fuzzFrame(t testing.TB, raw []byte, recipe uint64, cut, at uint16, xor byte) []byte {
	var in []byte
	if recipe == 0 {
		in = bytes.Clone(raw)
	} else {
		in = buildFrame(t, raw, recipe)
	}
	if cut != 0 {
		in = in[:int(cut)%(len(in)+1)]
	}
	if xor != 0 && len(in) > 0 {
		in[int(at)%len(in)] ^= xor
	}
	if len(in) > fuzzMaxFrame {
		in = in[:fuzzMaxFrame]
	}
	return in
}

// buildFrame is the frame recipe describes, with raw after its headers.
func buildFrame(t testing.TB, raw []byte, recipe uint64) []byte {
	target := fuzzTargets[int(recipe&rcTarget)%len(fuzzTargets)]
	client := client4
	if target.VIP.Is6() {
		client = client6
	}
	proto := layers.IPProtocolTCP
	if target.Proto == service.UDP {
		proto = layers.IPProtocolUDP
	}
	mode := recipe >> rcProtoShft & 3
	if mode == 1 {
		proto ^= layers.IPProtocolTCP ^ layers.IPProtocolUDP
	}
	if mode == 3 {
		proto = layers.IPProtocolICMPv4
	}
	p := packet{
		src:   ap(client, uint16(recipe>>rcPortShft)),
		dst:   ap(target.VIP, target.Port),
		proto: proto,
		ack:   recipe&rcAck != 0,
		tos:   uint8(recipe >> rcTOSShft),
	}
	if target.VIP.Is4() {
		if recipe&rcOptions != 0 {
			p.ipv4Opts = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
		}
		p.moreFrags = recipe&rcMF != 0
		p.dontFrag = recipe&rcDF != 0
		if recipe&rcLater != 0 {
			p.fragOffset = 185
		}
	} else {
		p.hopByHop = recipe&rcOptions != 0
		p.flowLabel = uint32(recipe>>rcPortShft) & 0xfffff
	}
	var frame []byte
	if mode == 2 {
		reply := p
		reply.src, reply.dst, reply.ack = p.dst, p.src, true
		router := router4
		if target.VIP.Is6() {
			router = router6
		}
		quote := int(recipe >> rcQuoteShft & 0xff)
		if n := len(reply.frame(t, halb0MAC, routerMAC)) - 14; quote > n {
			quote %= n + 1
		}
		frame = tooBig(t, router, reply, quote)
	} else {
		frame = p.frame(t, routerMAC, halb0MAC)
	}

	// Tags go in after the MACs, outermost first.
	if tags := recipe >> rcTagShft & 3; tags != 0 {
		tag := map[uint64][]byte{
			1: {0x81, 0x00, 0x00, 100},                        // 802.1Q
			2: {0x88, 0xa8, 0x00, 100},                        // 802.1ad
			3: {0x88, 0xa8, 0x00, 200, 0x81, 0x00, 0x00, 100}, // two: the program reads no further
		}[tags]
		frame = append(append(bytes.Clone(frame[:12]), tag...), frame[12:]...)
	}
	frame = append(frame, raw...)
	if recipe&rcPayload != 0 {
		fixLength(frame, len(raw))
	}
	return frame
}

// fixLength counts n more bytes in the IP length of frame, and sums the
// IPv4 header checksum again.
func fixLength(frame []byte, n int) {
	l3 := 14
	for l3+4 <= len(frame) && (binary.BigEndian.Uint16(frame[l3-2:]) == 0x8100 || binary.BigEndian.Uint16(frame[l3-2:]) == 0x88a8) {
		l3 += 4
	}
	switch binary.BigEndian.Uint16(frame[l3-2:]) {
	case 0x0800:
		ip := frame[l3:]
		binary.BigEndian.PutUint16(ip[2:], binary.BigEndian.Uint16(ip[2:])+uint16(n))
		hl := int(ip[0]&0xf) * 4
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], ^checksum(ip[:hl]))
	case 0x86dd:
		ip := frame[l3:]
		binary.BigEndian.PutUint16(ip[4:], binary.BigEndian.Uint16(ip[4:])+uint16(n))
	}
}

// expectation is what the model says the program must do with a frame.
type expectation struct {
	verdict expectVerdict
	why     string
	reason  DropReason   // for expectDrop: the halb_drops counter it goes up
	svc     *fuzzService // for a service
	l3      int          // where the IP header starts
	family  int          // 4 or 6
	ipLen   int          // the IP packet's length, by its header
	icmp    bool         // an ICMP error about a flow
	df      bool         // IPv4 with don't fragment set
}

type expectVerdict int

const (
	expectPass expectVerdict = iota
	expectDrop
	expectService // dropped or forwarded, as the service and its backend allow
)

func pass(why string) expectation { return expectation{verdict: expectPass, why: why} }

// model reads in as the rules in bpf/halb_lb.c say the program must: at
// most one VLAN tag, on a VLAN the node has (testVLANs); IPv4 without later fragments and IPv6 without
// extension headers; TCP, UDP or an ICMP "too big" quoting a TCP or UDP
// packet from the VIP; the header, length and source checks; and nothing
// but passing for a frame that is not addressed to halb0 (its own MAC or
// the VMAC it holds).
func (fb *fuzzBench) model(in []byte) expectation {
	e := fb.modelPacket(in)
	if e.verdict != expectPass && !bytes.Equal(in[:6], halb0MAC) && !bytes.Equal(in[:6], testVMAC) {
		return pass("not addressed to this node: " + e.why)
	}
	// The VLAN of the (first) tag: 0, priority-tagged, is no VLAN.
	if e.verdict != expectPass && len(in) >= 18 && (in[12] == 0x81 && in[13] == 0x00 || in[12] == 0x88 && in[13] == 0xa8) {
		if vid := binary.BigEndian.Uint16(in[14:]) & 0xfff; vid != 0 && !slices.Contains(testVLANs, vid) {
			return pass(fmt.Sprintf("on VLAN %d, which the node does not have: %s", vid, e.why))
		}
	}
	return e
}

// modelPacket is model but for the destination MAC.
func (fb *fuzzBench) modelPacket(in []byte) expectation {
	be16 := func(off int) uint16 { return binary.BigEndian.Uint16(in[off:]) }
	if len(in) < 14 {
		return pass("shorter than an Ethernet header")
	}
	etype, l3 := be16(12), 14
	if etype == 0x8100 || etype == 0x88a8 {
		if len(in) < 18 {
			return pass("VLAN tag cut short")
		}
		etype, l3 = be16(16), 18
	}
	var (
		src, dst netip.Addr
		proto    uint8
		l4       int
		e        = expectation{l3: l3}
		isICMP   bool
	)
	switch etype {
	case 0x0800:
		if len(in) < l3+20 {
			return pass("IPv4 header cut short")
		}
		ip := in[l3:]
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		if ip[0]>>4 != 4 || ip[0]&0xf < 5 {
			return fb.malformed(dst, DropIPHeader, "IPv4 version or header length")
		}
		if be16(l3+6)&0x1fff != 0 {
			return pass("a later IPv4 fragment")
		}
		e.family, e.ipLen, e.df = 4, int(be16(l3+2)), ip[6]&0x40 != 0
		proto, l4 = ip[9], l3+int(ip[0]&0xf)*4
		if e.ipLen > len(in)-l3 {
			return fb.malformed(dst, DropIPLength, "IPv4 total length past the frame")
		}
		if e.ipLen < l4-l3+8 {
			return fb.malformed(dst, DropIPLength, "IPv4 total length short of the headers")
		}
		isICMP = proto == 1
	case 0x86dd:
		if len(in) < l3+40 {
			return pass("IPv6 header cut short")
		}
		ip := in[l3:]
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		if ip[0]>>4 != 6 {
			return fb.malformed(dst, DropIPHeader, "IPv6 version")
		}
		e.family, e.ipLen = 6, 40+int(be16(l3+4))
		proto, l4 = ip[6], l3+40
		if e.ipLen > len(in)-l3 {
			return fb.malformed(dst, DropIPLength, "IPv6 payload length past the frame")
		}
		if e.ipLen < 48 {
			return fb.malformed(dst, DropIPLength, "IPv6 payload length short of a transport header")
		}
		isICMP = proto == 58
	default:
		return pass("not IP")
	}
	if why := noClient(src); why != "" {
		return fb.malformed(dst, DropBadSource, "from "+src.String()+": "+why)
	}

	var port uint16
	switch {
	case isICMP:
		// RFC 792, RFC 4443 §3.2: type, code, checksum, a word with the
		// MTU, then the packet the VIP sent, from the VIP, with its ports.
		inner := l4 + 8
		innerLen, srcOff, protoOff := 20, 12, 9
		if e.family == 6 {
			innerLen, srcOff, protoOff = 40, 8, 6
		}
		if len(in) < inner+innerLen {
			return pass("ICMP quotes less than an IP header")
		}
		if e.family == 4 && (in[l4] != 3 || in[l4+1] != 4) || e.family == 6 && in[l4] != 2 {
			return pass("ICMP but not too big")
		}
		if e.family == 4 && (in[inner] != 0x45 || be16(inner+6)&0x1fff != 0) {
			return pass("ICMP quotes IPv4 options or a later fragment")
		}
		n := dst.BitLen() / 8
		quotedSrc, _ := netip.AddrFromSlice(in[inner+srcOff : inner+srcOff+n])
		if quotedSrc != dst {
			return pass("ICMP quotes a packet not from the VIP")
		}
		proto = in[inner+protoOff]
		if proto != 6 && proto != 17 {
			return pass("ICMP quotes neither TCP nor UDP")
		}
		if len(in) < inner+innerLen+4 {
			return pass("ICMP quotes too little to read the ports")
		}
		port = be16(inner + innerLen) // the quoted packet's source
		// The flow is the client's: the quoted packet's destination.
		src, _ = netip.AddrFromSlice(in[inner+srcOff+n : inner+srcOff+2*n])
		e.icmp = true
	case proto == 6:
		seg := e.ipLen - (l4 - l3)
		if seg < 20 {
			return fb.malformed(dst, DropTCPHeader, "TCP segment shorter than its header")
		}
		if doff := int(in[l4+12] >> 4); doff < 5 || doff*4 > seg {
			return fb.malformed(dst, DropTCPHeader, "TCP data offset below 5 or past the segment")
		}
		port = be16(l4 + 2)
	case proto == 17:
		if ulen := int(be16(l4 + 4)); ulen < 8 || ulen > e.ipLen-(l4-l3) {
			return fb.malformed(dst, DropUDPHeader, "UDP length below 8 or past the IP payload")
		}
		port = be16(l4 + 2)
	default:
		return pass("neither TCP, UDP nor ICMP")
	}
	key := service.Key{VIP: dst, Port: port, Proto: service.Protocol(proto)}
	for i := range fb.services {
		if fb.services[i].key != key {
			continue
		}
		// halb_ct is empty for every input: each flow is new, and one
		// from a VIP is refused.
		if fb.isVIP(src) {
			return expectation{verdict: expectDrop, reason: DropVIPSource, why: "from a VIP to service " + key.String()}
		}
		e.verdict, e.svc, e.why = expectService, &fb.services[i], "for service "+key.String()
		return e
	}
	return pass("no service at " + key.String())
}

// noClient says why no client can have the source address a, or "" when
// one can: the list of bpf/halb_checks.h, written from its RFCs apart from
// it.
func noClient(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		switch {
		case b[0] == 0:
			return `"this network" (RFC 1122)`
		case a.IsLoopback():
			return "loopback"
		case a.IsMulticast():
			return "multicast"
		case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return "the limited broadcast"
		}
		return ""
	}
	b := a.As16()
	switch {
	case a.IsMulticast():
		return "multicast"
	case a.Is4In6():
		return "IPv4-mapped"
	case [12]byte(b[:12]) == [12]byte{}:
		return "::/96: unspecified, loopback, IPv4-compatible"
	}
	return ""
}

func (fb *fuzzBench) isVIP(a netip.Addr) bool {
	for _, s := range fb.services {
		if s.key.VIP == a {
			return true
		}
	}
	return false
}

// malformed is a frame broken after its destination address, or from a
// source no client has: dropped when that is a VIP, else passed.
func (fb *fuzzBench) malformed(dst netip.Addr, reason DropReason, why string) expectation {
	if fb.isVIP(dst) {
		return expectation{verdict: expectDrop, reason: reason, why: "malformed to a VIP: " + why}
	}
	return pass("malformed, not to a VIP: " + why)
}

// check runs in through prog and holds the result against want.
func (fb *fuzzBench) check(t *testing.T, prog string, in []byte, want expectation) {
	t.Helper()
	tb := fb.tb.on(prog)
	defer fb.clearConntrack(t)
	before, err := tb.lb.drops()
	if err != nil {
		t.Fatal(err)
	}
	action, out, err := fb.run(in)
	if err != nil {
		// BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet
		// header, and makes no skb of one whose IP header is cut
		// short: the program never sees those.
		if errors.Is(err, unix.EINVAL) && (len(in) < 14 || tb.tc && skbRefused(in)) {
			return
		}
		t.Fatalf("%s: run %x: %v", prog, in, err)
	}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: %s (model: %s)\nin  %x\nout %x", prog, fmt.Sprintf(format, args...), want.why, in, out)
	}
	// The drop counters that went up, and by how much: one frame is
	// counted once, under the reason it was dropped for, or not at all.
	after, err := tb.lb.drops()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[DropReason]uint64{}
	for r, n := range after {
		if n != before[r] {
			counted[r] = n - before[r]
		}
	}
	wantCounted := func(reason DropReason, counts bool) {
		t.Helper()
		want := map[DropReason]uint64{}
		if counts {
			want[reason] = 1
		}
		if !maps.Equal(counted, want) {
			fail("%v counted as drops %v, want %v", action, counted, want)
		}
	}
	switch action {
	case xdpPass, xdpDrop, xdpRedirect:
	case xdpTX:
		if tb.tc {
			fail("tc verdict %v", action)
		}
	default:
		fail("verdict %v", action)
	}

	switch want.verdict {
	case expectPass:
		if action != xdpPass || !bytes.Equal(out, in) {
			fail("%v, want XDP_PASS untouched", action)
		}
		wantCounted(0, false)
		return
	case expectDrop:
		if action != xdpDrop {
			fail("%v, want XDP_DROP", action)
		}
		wantCounted(want.reason, true)
		return
	}

	// For a service: which way it must go, if any.
	s := want.svc
	if len(s.backends) == 0 {
		if action != xdpDrop {
			fail("%v from a service without backends", action)
		}
		wantCounted(DropNoBackend, true)
		return
	}
	if action == xdpPass {
		fail("XDP_PASS of a frame for a service")
	}
	if s.svc.Forward == ForwardDR {
		if action == xdpDrop {
			fail("XDP_DROP of a frame for a dr service whose backends are all reachable")
		}
		fb.checkDR(t, fail, in, out, action, s)
		wantCounted(0, false)
		return
	}
	// forward: tun has a single backend per service on the bench.
	b := fb.backends[s.backends[0]]
	outer := 20
	if want.family == 6 {
		outer = 40
	}
	dropWhy, dropReason := "", DropReason(0)
	switch {
	case b.Addr.Is4() != (want.family == 4):
		dropWhy, dropReason = "the backend's family is not the packet's", DropUnsupported
	case !tb.tc && b.hop == nil:
		// XDP learns the MTU from the next hop's entry: without one
		// the packet is not known to be too big, answered or not.
		dropWhy, dropReason = "no neighbour entry for the next hop (XDP)", DropNoNeigh
	case outer+want.ipLen > fuzzMTU:
		// XDP answers with ICMP what path MTU discovery can use: IPv4
		// with DF, IPv6 over the minimum MTU, never an ICMP error.
		answered := !want.icmp && (want.family == 4 && want.df || want.family == 6 && want.ipLen > 1280)
		if !tb.tc && answered {
			if action != xdpTX {
				fail("%v, want XDP_TX of an ICMP too big", action)
			}
			checkTooBig(fail, in, out, want, outer)
			wantCounted(DropTooBigAnswered, true)
			return
		}
		dropWhy, dropReason = "too big for the MTU with the outer header", DropTooBig
	case tb.tc && want.l3 != 14:
		dropWhy, dropReason = "a VLAN tag in the frame (tc)", DropEncap
	}
	if dropWhy != "" {
		if action != xdpDrop {
			fail("%v, want XDP_DROP: %s", action, dropWhy)
		}
		wantCounted(dropReason, true)
		return
	}
	if action == xdpDrop {
		fail("XDP_DROP of a frame for a tun service that can take it")
	}
	fb.checkTUN(t, fail, in, out, action, want, b)
	wantCounted(0, false)
}

// checkTooBig checks XDP's answer to a packet too big for the tunnel: the
// frame turned around (MACs swapped, a VLAN tag kept), from the VIP to the
// client, ICMP "fragmentation needed" or ICMPv6 "packet too big" naming
// the tunnel's MTU and quoting the start of the packet, checksums right.
func checkTooBig(fail func(string, ...any), in, out []byte, want expectation, outer int) {
	l3 := want.l3
	if len(out) < l3+48 || !bytes.Equal(out[:6], in[6:12]) || !bytes.Equal(out[6:12], in[:6]) ||
		!bytes.Equal(out[12:l3], in[12:l3]) {
		fail("too big: the answer is not the frame turned around")
	}
	ip, orig := out[l3:], in[l3:]
	if want.family == 4 {
		hl := 20
		n := int(binary.BigEndian.Uint16(ip[2:]))
		switch {
		case ip[0] != 0x45 || ip[9] != 1 || ip[8] != 64 || n != len(ip) || n > 576:
			fail("too big: IPv4 header %x, want 20 bytes, ICMP, TTL 64, the frame's length up to 576", ip[:20])
		case !bytes.Equal(ip[12:16], orig[16:20]) || !bytes.Equal(ip[16:20], orig[12:16]):
			fail("too big: answer from %x to %x, want the VIP to the client", ip[12:16], ip[16:20])
		case checksum(ip[:hl]) != 0 || checksum(ip[hl:n]) != 0:
			fail("too big: a checksum does not verify")
		case ip[hl] != 3 || ip[hl+1] != 4 || int(binary.BigEndian.Uint16(ip[hl+6:])) != fuzzMTU-outer:
			fail("too big: ICMP %d/%d MTU %d, want 3/4 MTU %d", ip[hl], ip[hl+1], binary.BigEndian.Uint16(ip[hl+6:]), fuzzMTU-outer)
		case !bytes.Equal(ip[hl+8:n], orig[:n-hl-8]):
			fail("too big: the quote is not the start of the packet")
		}
		return
	}
	n := 40 + int(binary.BigEndian.Uint16(ip[4:]))
	var pseudo []byte
	pseudo = append(pseudo, ip[8:40]...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(n-40))
	pseudo = append(pseudo, 0, 0, 0, 58)
	switch {
	case ip[0]>>4 != 6 || ip[6] != 58 || ip[7] != 64 || n != len(ip) || n > 1280:
		fail("too big: IPv6 header %x, want ICMPv6, hop limit 64, the frame's length up to 1280", ip[:40])
	case !bytes.Equal(ip[8:24], orig[24:40]) || !bytes.Equal(ip[24:40], orig[8:24]):
		fail("too big: answer from %x to %x, want the VIP to the client", ip[8:24], ip[24:40])
	case checksum(append(pseudo, ip[40:n]...)) != 0:
		fail("too big: the ICMPv6 checksum does not verify")
	case ip[40] != 2 || ip[41] != 0 || int(binary.BigEndian.Uint32(ip[44:])) != max(fuzzMTU-outer, 1280):
		fail("too big: ICMPv6 %d/%d MTU %d, want 2/0 MTU %d", ip[40], ip[41], binary.BigEndian.Uint32(ip[44:]), max(fuzzMTU-outer, 1280))
	case !bytes.Equal(ip[48:n], orig[:n-48]):
		fail("too big: the quote is not the start of the packet")
	}
}

// checkDR checks a frame forwarded by dr: the IP packet unchanged, the
// MACs those of one of the service's backends.
func (fb *fuzzBench) checkDR(t *testing.T, fail func(string, ...any), in, out []byte, action xdpAction, s *fuzzService) {
	t.Helper()
	if len(out) != len(in) || !bytes.Equal(out[12:], in[12:]) {
		fail("dr changed the frame past its MACs")
	}
	for _, id := range s.backends {
		b := fb.backends[id]
		if !bytes.Equal(out[:6], b.MAC) {
			continue
		}
		if !bytes.Equal(out[6:12], b.SrcMAC) {
			fail("dr to backend %d from %s, want %s", id, net.HardwareAddr(out[6:12]), b.SrcMAC)
		}
		if want := fb.action(b); action != want {
			fail("dr to backend %d: %v, want %v", id, action, want)
		}
		return
	}
	fail("dr to %s, which is no backend of %s", net.HardwareAddr(out[:6]), s.key)
}

// checkTUN checks a frame forwarded by tun to backend b: a new Ethernet
// header, the outer header, the IP packet as it came.
func (fb *fuzzBench) checkTUN(t *testing.T, fail func(string, ...any), in, out []byte, action xdpAction, want expectation, b fuzzBackend) {
	t.Helper()
	inner := in[want.l3:]
	outer := 20
	if want.family == 6 {
		outer = 40
	}
	if len(out) != 14+outer+len(inner) || !bytes.Equal(out[14+outer:], inner) {
		fail("tun: the IP packet is not the input's after a %d-byte outer header", outer)
	}
	dst, src := b.hop, b.SrcMAC
	if b.hop == nil { // tc: the kernel's neighbour layer writes them
		dst, src = in[:6], in[6:12]
	}
	if !bytes.Equal(out[:6], dst) || !bytes.Equal(out[6:12], src) {
		fail("tun: frame from %s to %s, want %s to %s", net.HardwareAddr(out[6:12]), net.HardwareAddr(out[:6]), src, dst)
	}
	if wantAction := fb.action(b); action != wantAction {
		fail("tun: %v, want %v", action, wantAction)
	}

	// The outer header as gopacket reads it.
	if want.family == 4 {
		if et := binary.BigEndian.Uint16(out[12:]); et != 0x0800 {
			fail("tun: EtherType %#04x, want IPv4", et)
		}
		var ip layers.IPv4
		if err := ip.DecodeFromBytes(out[14:14+outer], gopacket.NilDecodeFeedback); err != nil {
			fail("tun: outer IPv4 header: %v", err)
		}
		if sum := checksum(out[14 : 14+outer]); sum != 0 {
			fail("tun: outer IPv4 header checksum does not verify (residue %#04x)", sum)
		}
		wantFlags := layers.IPv4Flag(0)
		if inner[6]&0x40 != 0 {
			wantFlags = layers.IPv4DontFragment
		}
		switch {
		case ip.Version != 4 || ip.IHL != 5:
			fail("tun: outer version %d, header length %d", ip.Version, ip.IHL)
		case int(ip.Length) != outer+want.ipLen:
			fail("tun: outer length %d, want %d", ip.Length, outer+want.ipLen)
		case ip.TOS != inner[1] || ip.Id != binary.BigEndian.Uint16(inner[4:]) || ip.Flags != wantFlags || ip.FragOffset != 0:
			fail("tun: outer TOS %#x, id %#x, flags %v, offset %d; want the inner's TOS, id and DF", ip.TOS, ip.Id, ip.Flags, ip.FragOffset)
		case ip.TTL != 64 || ip.Protocol != layers.IPProtocolIPv4:
			fail("tun: outer TTL %d, protocol %v", ip.TTL, ip.Protocol)
		case !ip.SrcIP.Equal(b.Src.AsSlice()) || !ip.DstIP.Equal(b.Addr.AsSlice()):
			fail("tun: outer %s > %s, want %s > %s", ip.SrcIP, ip.DstIP, b.Src, b.Addr)
		}
	} else {
		if et := binary.BigEndian.Uint16(out[12:]); et != 0x86dd {
			fail("tun: EtherType %#04x, want IPv6", et)
		}
		var ip layers.IPv6
		// gopacket checks the payload length against what follows
		// the header: give it the packet the length names.
		if err := ip.DecodeFromBytes(out[14:14+outer+want.ipLen], gopacket.NilDecodeFeedback); err != nil {
			fail("tun: outer IPv6 header: %v", err)
		}
		first := binary.BigEndian.Uint32(inner)
		switch {
		case ip.Version != 6:
			fail("tun: outer version %d", ip.Version)
		case int(ip.Length) != want.ipLen:
			fail("tun: outer payload length %d, want %d", ip.Length, want.ipLen)
		case ip.TrafficClass != uint8(first>>20) || ip.FlowLabel != first&0xfffff:
			fail("tun: outer traffic class %#x, flow label %#x; want the inner's", ip.TrafficClass, ip.FlowLabel)
		case ip.HopLimit != 64 || ip.NextHeader != layers.IPProtocolIPv6:
			fail("tun: outer hop limit %d, next header %v", ip.HopLimit, ip.NextHeader)
		case !ip.SrcIP.Equal(b.Src.AsSlice()) || !ip.DstIP.Equal(b.Addr.AsSlice()):
			fail("tun: outer %s > %s, want %s > %s", ip.SrcIP, ip.DstIP, b.Src, b.Addr)
		}
	}
}

// action is the verdict that sends a frame to b's egress interface.
func (fb *fuzzBench) action(b fuzzBackend) xdpAction {
	switch {
	case fb.tb.tc:
		return xdpRedirect
	case b.egress == fb.tb.halb0:
		return xdpTX
	}
	return xdpRedirect
}

// run is testbed.runErr: for tc some frames are refused before the
// program runs.
func (fb *fuzzBench) run(in []byte) (xdpAction, []byte, error) { return fb.tb.runErr(in) }

// skbRefused tells the frames of at least an Ethernet header that
// BPF_PROG_TEST_RUN makes no skb of.
func skbRefused(in []byte) bool {
	switch binary.BigEndian.Uint16(in[12:]) {
	case 0x0800:
		return len(in) < 14+20
	case 0x86dd:
		return len(in) < 14+40
	}
	return false
}

// clearConntrack empties halb_ct, so that every input meets the same
// program state and a failure reproduces from its input alone.
func (fb *fuzzBench) clearConntrack(t *testing.T) {
	t.Helper()
	ct := fb.tb.lb.objs.HalbCt
	var k halbFlow
	for range 8 {
		if err := ct.NextKey(nil, &k); errors.Is(err, ebpf.ErrKeyNotExist) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
		if err := ct.Delete(&k); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("halb_ct still holds flows after 8 deletes: one run learnt more than one flow")
}

type fuzzSeed struct {
	raw     []byte
	recipe  uint64
	cut, at uint16
	xor     byte
}

// fuzzSeeds are the frames of the packet tables (TestXDP, TestTUN,
// TestICMPTooBig) and recipes for each target.
func fuzzSeeds(t testing.TB) []fuzzSeed {
	var seeds []fuzzSeed
	raw := func(frame []byte) { seeds = append(seeds, fuzzSeed{raw: frame}) }
	tcp4 := packet{src: ap(client4, 40000), dst: ap(vip4, 80)}
	udp4 := packet{src: ap(client4, 40000), dst: ap(vip4, 53), proto: layers.IPProtocolUDP}
	tcp6 := packet{src: ap(client6, 40000), dst: ap(vip6, 80)}
	tun4 := packet{src: ap(client4, 40000), dst: ap(vip4, 443)}
	tun6 := packet{src: ap(client6, 40000), dst: ap(vip6, 53), proto: layers.IPProtocolUDP}
	with := func(p packet, change func(*packet)) packet { change(&p); return p }
	frames := []packet{
		tcp4, udp4, tcp6, tun4, tun6,
		with(tcp4, func(p *packet) { p.ack = true }),
		with(tcp4, func(p *packet) { p.vlans = []uint16{100} }),
		with(tun6, func(p *packet) { p.vlans, p.tpid = []uint16{200}, layers.EthernetTypeQinQ }),
		with(tcp4, func(p *packet) { p.vlans, p.tpid = []uint16{200, 100}, layers.EthernetTypeQinQ }),
		with(tcp4, func(p *packet) {
			p.ipv4Opts = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}),
		with(udp4, func(p *packet) { p.moreFrags = true }),
		with(tcp4, func(p *packet) { p.fragOffset = 185 }),
		with(tcp6, func(p *packet) { p.hopByHop = true }),
		with(tun4, func(p *packet) { p.tos, p.dontFrag, p.id = 0xb8, true, 0x1234 }),
		with(tcp6, func(p *packet) { p.tos, p.flowLabel = 0x2e, 0xbeef }),
		{src: ap(client4, 40000), dst: ap(vip4, 8080)},
		{src: ap(client4, 40000), dst: ap(other4, 80)},
		{src: ap(client4, 0), dst: ap(vip4, 0), proto: layers.IPProtocolICMPv4},
	}
	for _, p := range frames {
		frame := p.frame(t, routerMAC, halb0MAC)
		raw(frame)
		// Truncated: within the IP header, within the transport header.
		raw(frame[:14+16])
		raw(frame[:len(frame)-len(payload)-4])
	}
	raw(arpRequest(t, vip4))
	badIHL := tcp4.frame(t, routerMAC, halb0MAC)
	badIHL[14] = 0x44
	raw(badIHL)

	// One of each drop reason about the packet itself, and padding that
	// is none.
	edit := func(p packet, change func([]byte) []byte) { raw(change(p.frame(t, routerMAC, halb0MAC))) }
	edit(tcp4, func(b []byte) []byte { return setIPLength(b, 14, len(b)-14+1) })
	edit(tcp6, func(b []byte) []byte { return setIPLength(b, 14, len(b)-14-40+1) })
	edit(tcp4, func(b []byte) []byte { return setIPLength(append(b, make([]byte, 20)...), 14, 32) })
	edit(tcp4, func(b []byte) []byte { b[14+20+12] = 4 << 4; return b })
	edit(tcp4, func(b []byte) []byte { b[14+20+12] = 15 << 4; return b })
	edit(udp4, func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+20+4:], 7); return b })
	edit(udp4, func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+20+4:], uint16(len(b)-14-20+1)); return b })
	edit(tcp4, func(b []byte) []byte { return append(b, make([]byte, 30)...) })
	edit(tun4, func(b []byte) []byte { return append(b, make([]byte, 30)...) })
	for _, src := range []string{"255.255.255.255", "0.0.0.0", "127.0.0.1", "224.0.0.18", "240.0.0.1", vip4.String()} {
		raw(with(tcp4, func(p *packet) { p.src = ap(netip.MustParseAddr(src), 40000) }).frame(t, routerMAC, halb0MAC))
	}
	for _, src := range []string{"::", "::1", "ff02::1", "::ffff:203.0.113.7", "fe80::7", vip6.String()} {
		raw(with(tcp6, func(p *packet) { p.src = ap(netip.MustParseAddr(src), 40000) }).frame(t, routerMAC, halb0MAC))
	}
	// Frames to MACs that are not halb0's, and to the VMAC it holds.
	for _, mac := range []net.HardwareAddr{layers.EthernetBroadcast, {0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, {0x33, 0x33, 0, 0, 0, 1}, routerMAC, otherVMAC, testVMAC} {
		raw(tcp4.frame(t, routerMAC, mac))
		raw(tun6.frame(t, routerMAC, mac))
	}
	reply := func(p packet) packet { p.src, p.dst, p.ack = p.dst, p.src, true; return p }
	for _, quote := range []int{0, 28, 22} {
		raw(tooBig(t, router4, reply(tcp4), quote))
		raw(tooBig(t, router4, reply(tun4), quote))
	}
	for _, quote := range []int{0, 48, 43} {
		raw(tooBig(t, router6, reply(tcp6), quote))
		raw(tooBig(t, router6, reply(tun6), quote))
	}
	for target := range uint64(len(fuzzTargets)) {
		for _, r := range []uint64{0, 1 << rcProtoShft, 2 << rcProtoShft, 1 << rcTagShft, rcPayload, 2<<rcProtoShft | 2<<rcTagShft} {
			seeds = append(seeds, fuzzSeed{raw: []byte("fuzz"), recipe: rcBuilt | r | target | 40001<<rcPortShft})
		}
	}
	// Big enough to need more than the MTU with an outer header.
	seeds = append(seeds, fuzzSeed{raw: make([]byte, 1460), recipe: rcBuilt | rcPayload | 3})
	return seeds
}
