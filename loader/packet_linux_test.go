package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// The bench for halb_xdp_lb: a network namespace with three veth pairs and
// the program loaded, fed frames through BPF_PROG_TEST_RUN as if they had
// arrived on halb0. Backends behind halb0 get XDP_TX, backends behind halb1
// (a tx port) XDP_REDIRECT; halb2 is not a tx port.

var (
	routerMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01} // hands the clients' frames to the LB
	halb0MAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x10}
	halb1MAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x11}
	halb2MAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x12}
	// testVMAC is the VRRP virtual MAC of VRID 51, which halb0 holds on
	// the bench; otherVMAC is VRID 52's, which it does not.
	testVMAC  = net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, 51}
	otherVMAC = net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, 52}
)

type testbed struct {
	ns                  *netnstest.NS
	lb                  *kernelLB
	halb0, halb1, halb2 int // ifindexes
	backends            map[uint32]Backend
	tc                  bool // run halb_tc_lb rather than halb_xdp_lb
}

// on makes the testbed run prog, halb_xdp_lb or halb_tc_lb.
func (tb *testbed) on(prog string) *testbed {
	tb.tc = prog == halbProgHalbTcLb
	return tb
}

// forPrograms runs f as a subtest for each of the programs: they share
// their logic and must agree on every case.
func forPrograms(t *testing.T, f func(t *testing.T, prog string)) {
	for _, prog := range []string{halbProgHalbXdpLb, halbProgHalbTcLb} {
		t.Run(prog, func(t *testing.T) { f(t, prog) })
	}
}

func newTestbed(t *testing.T, opts Options) *testbed {
	t.Helper()
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	tb := &testbed{ns: ns, backends: map[uint32]Backend{}}
	for _, l := range []struct {
		name  string
		mac   net.HardwareAddr
		index *int
	}{
		{"halb0", halb0MAC, &tb.halb0},
		{"halb1", halb1MAC, &tb.halb1},
		{"halb2", halb2MAC, &tb.halb2},
	} {
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: l.name, HardwareAddr: l.mac},
			PeerName:  l.name + "p",
		}
		if err := h.LinkAdd(veth); err != nil {
			t.Fatalf("add veth %s: %v", l.name, err)
		}
		link, err := h.LinkByName(l.name)
		if err == nil {
			err = h.LinkSetUp(link)
		}
		if err != nil {
			t.Fatalf("bring up %s: %v", l.name, err)
		}
		*l.index = link.Attrs().Index
	}

	lb, err := loadLB(opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { lb.close() })
	tb.lb = lb
	if err := ns.Do(func() error { return lb.addTxPort(tb.halb1) }); err != nil {
		t.Fatal(err)
	}
	// Frames arrive on halb0 addressed to it or to the VMAC it holds,
	// untagged or on the VLANs the bench has, as the Datapath would have
	// them (the VMAC's interface is made up: the program does not read
	// it).
	if err := lb.setLocalMACs(tb.halb0, testLocalMACs(tb.halb0)); err != nil {
		t.Fatal(err)
	}
	return tb
}

// backend adds backend id at addr, reached through the interface ifindex.
func (tb *testbed) backend(t *testing.T, id uint32, addr string, ifindex int) {
	t.Helper()
	src := map[int]net.HardwareAddr{tb.halb0: halb0MAC, tb.halb1: halb1MAC, tb.halb2: halb2MAC}[ifindex]
	b := Backend{
		Addr:    netip.MustParseAddr(addr),
		MAC:     net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, byte(id)},
		Ifindex: ifindex,
		SrcMAC:  src,
	}
	if err := tb.lb.putBackend(id, b); err != nil {
		t.Fatal(err)
	}
	tb.backends[id] = b
}

func (tb *testbed) service(t *testing.T, key service.Key, svc Service) {
	t.Helper()
	if err := tb.lb.putService(key, svc); err != nil {
		t.Fatal(err)
	}
}

// table installs a Maglev table for service id whose slots cycle through
// backends (all slots 0 when there are none), and makes those backends the
// service's: the program honours a conntrack entry only for a backend of
// the packet's service.
func (tb *testbed) table(t *testing.T, service uint32, backends ...uint32) []uint32 {
	t.Helper()
	for _, id := range backends {
		b := tb.backends[id]
		b.Service = service
		if err := tb.lb.putBackend(id, b); err != nil {
			t.Fatal(err)
		}
		tb.backends[id] = b
	}
	table := make([]uint32, tb.lb.maglevTableSize())
	for i := range table {
		if len(backends) > 0 {
			table[i] = backends[i%len(backends)]
		}
	}
	if err := tb.lb.setMaglevTable(service, table); err != nil {
		t.Fatal(err)
	}
	return table
}

// xdpMD is struct xdp_md, the context BPF_PROG_TEST_RUN hands the program.
type xdpMD struct {
	Data, DataEnd, DataMeta uint32
	IngressIfindex          uint32
	RxQueueIndex            uint32
	EgressIfindex           uint32
}

// skbCtx is the start of struct __sk_buff, the context BPF_PROG_TEST_RUN
// hands a tc program; the kernel takes a prefix.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex, Ifindex                    uint32
}

// The tc verdicts halb_tc_lb returns.
const (
	tcActUnspec   = 0xffffffff // TC_ACT_UNSPEC (-1): tcx goes on to the next program or the stack
	tcActShot     = 2
	tcActRedirect = 7
)

// run feeds frame to the program as if it had arrived on halb0 and returns
// the action and the frame as the program left it. halb_tc_lb's verdicts
// come back as the XDP actions that mean the same: TC_ACT_UNSPEC as
// XDP_PASS, TC_ACT_SHOT as XDP_DROP, TC_ACT_REDIRECT as XDP_REDIRECT.
func (tb *testbed) run(t *testing.T, frame []byte) (xdpAction, []byte) {
	t.Helper()
	return tb.runOn(t, tb.halb0, frame)
}

// runOn is run for a frame that arrives on ifindex.
func (tb *testbed) runOn(t *testing.T, ifindex int, frame []byte) (xdpAction, []byte) {
	t.Helper()
	action, out, err := tb.runErrOn(ifindex, frame)
	if err != nil {
		t.Fatalf("run the program: %v", err)
	}
	return action, out
}

// runErr is run that returns the run's error rather than failing: for tc
// some frames are refused before the program runs (the fuzzer feeds
// those too).
func (tb *testbed) runErr(frame []byte) (xdpAction, []byte, error) {
	return tb.runErrOn(tb.halb0, frame)
}

// runErrOn is runErr for a frame that arrives on ifindex.
func (tb *testbed) runErrOn(ifindex int, frame []byte) (xdpAction, []byte, error) {
	prog := tb.lb.xdpProgram()
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)},
	}
	if tb.tc {
		prog = tb.lb.tcProgram()
		opts.Context = skbCtx{IngressIfindex: uint32(ifindex), Ifindex: uint32(ifindex)}
	}
	var ret uint32
	err := tb.ns.Do(func() error {
		var err error
		ret, err = prog.Run(opts)
		return err
	})
	if err != nil || !tb.tc {
		return xdpAction(ret), opts.DataOut, err
	}
	switch ret {
	case tcActUnspec:
		return xdpPass, opts.DataOut, nil
	case tcActShot:
		return xdpDrop, opts.DataOut, nil
	case tcActRedirect:
		return xdpRedirect, opts.DataOut, nil
	}
	return xdpAction(1000 + ret), opts.DataOut, nil
}

// expect is the action the testbed's program gives for what XDP does with
// action: halb_tc_lb redirects where halb_xdp_lb transmits.
func (tb *testbed) expect(action xdpAction) xdpAction {
	if tb.tc && action == xdpTX {
		return xdpRedirect
	}
	return action
}

// forwardedTo is frame as DR sends it to backend id: only the MACs change.
func (tb *testbed) forwardedTo(t *testing.T, p packet, id uint32) []byte {
	t.Helper()
	b, ok := tb.backends[id]
	if !ok {
		t.Fatalf("no backend %d on the bench", id)
	}
	return p.frame(t, b.SrcMAC, b.MAC)
}

// expectForward runs p and checks that it leaves unchanged but for the MACs
// of backend id, with valid checksums, as action.
func (tb *testbed) expectForward(t *testing.T, p packet, action xdpAction, id uint32) {
	t.Helper()
	action2, out := tb.run(t, p.frame(t, routerMAC, halb0MAC))
	want := tb.forwardedTo(t, p, id)
	if action2 != tb.expect(action) || !bytes.Equal(out, want) {
		t.Fatalf("%v: got %v to %s, want %v to backend %d (%s)\ngot  %x\nwant %x",
			p, action2, macOf(out), action, id, tb.backends[id].MAC, out, want)
	}
	verifyChecksums(t, out)
}

// expectDrop runs p and checks that it is dropped untouched.
func (tb *testbed) expectDrop(t *testing.T, p packet) {
	t.Helper()
	in := p.frame(t, routerMAC, halb0MAC)
	action, out := tb.run(t, in)
	if action != xdpDrop || !bytes.Equal(out, in) {
		t.Fatalf("%v: got %v to %s, want XDP_DROP untouched", p, action, macOf(out))
	}
}

func macOf(frame []byte) net.HardwareAddr {
	if len(frame) < 6 {
		return nil
	}
	return net.HardwareAddr(frame[:6])
}

type xdpAction uint32

const (
	xdpAborted xdpAction = iota
	xdpDrop
	xdpPass
	xdpTX
	xdpRedirect
)

func (a xdpAction) String() string {
	names := []string{"XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"}
	if int(a) < len(names) {
		return names[a]
	}
	if a >= 1000 {
		return fmt.Sprintf("tc(%d)", int32(a-1000))
	}
	return fmt.Sprintf("xdp(%d)", uint32(a))
}

// packet describes a test frame from a client to dst; its zero options
// make a TCP SYN.
type packet struct {
	src, dst netip.AddrPort
	proto    layers.IPProtocol // 0 means TCP
	ack      bool              // TCP: an ACK of an open connection, not a SYN
	// vlans are the 802.1Q tags, outermost first; tpid is the outer tag's
	// EtherType (0 means 802.1Q, 0x88a8 is 802.1ad).
	vlans      []uint16
	tpid       layers.EthernetType
	ipv4Opts   []layers.IPv4Option
	fragOffset uint16 // IPv4, in 8-byte units; a later fragment carries no TCP/UDP header
	moreFrags  bool   // IPv4: MF
	dontFrag   bool   // IPv4: DF
	id         uint16 // IPv4: the identification
	tos        uint8  // IPv4 TOS, IPv6 traffic class
	flowLabel  uint32 // IPv6
	hopByHop   bool   // IPv6: a hop-by-hop options header before TCP/UDP
	data       []byte // the payload; nil: payload
}

var payload = []byte("halb test payload")

func (p packet) String() string {
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	s := fmt.Sprintf("%s %s > %s", proto, p.src, p.dst)
	if proto == layers.IPProtocolTCP && p.ack {
		s += " ack"
	} else if proto == layers.IPProtocolTCP {
		s += " syn"
	}
	return s
}

// frame serialises p from the Ethernet address src to dst, checksums and
// lengths computed.
func (p packet) frame(t testing.TB, src, dst net.HardwareAddr) []byte {
	t.Helper()
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}

	var (
		network gopacket.NetworkLayer
		netType layers.EthernetType
		ls      []gopacket.SerializableLayer
	)
	data := payload
	if p.data != nil {
		data = p.data
	}
	if p.dst.Addr().Is4() {
		ip := &layers.IPv4{
			Version: 4, TTL: 64, Protocol: proto, TOS: p.tos, Id: p.id,
			SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice(),
			Options: p.ipv4Opts, FragOffset: p.fragOffset,
		}
		if p.moreFrags {
			ip.Flags = layers.IPv4MoreFragments
		}
		if p.dontFrag {
			ip.Flags |= layers.IPv4DontFragment
		}
		network, netType = ip, layers.EthernetTypeIPv4
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: proto, TrafficClass: p.tos, FlowLabel: p.flowLabel,
			SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice(),
		}
		if p.hopByHop {
			ip.HopByHop = &layers.IPv6HopByHop{Options: []*layers.IPv6HopByHopOption{
				{OptionType: 5, OptionData: []byte{0, 0}}, // router alert
				{OptionType: 1}, // PadN to 8 bytes
			}}
			ip.HopByHop.NextHeader = proto
		}
		network, netType = ip, layers.EthernetTypeIPv6
		ls = append(ls, ip)
	}

	switch {
	case p.fragOffset != 0:
		ls = append(ls, gopacket.Payload(data))
	case proto == layers.IPProtocolTCP:
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()),
			Seq: 1000, Window: 64240, SYN: !p.ack, ACK: p.ack, PSH: p.ack,
		}
		if p.ack {
			tcp.Ack = 2000
		}
		if err := tcp.SetNetworkLayerForChecksum(network); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, tcp, gopacket.Payload(data))
	case proto == layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.src.Port()), DstPort: layers.UDPPort(p.dst.Port())}
		if err := udp.SetNetworkLayerForChecksum(network); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, udp, gopacket.Payload(data))
	case proto == layers.IPProtocolICMPv4:
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1},
			gopacket.Payload(data))
	default:
		t.Fatalf("no builder for %s", proto)
	}

	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: netType}
	head := []gopacket.SerializableLayer{eth}
	for i, id := range p.vlans {
		tagType := layers.EthernetTypeDot1Q
		if i == 0 && p.tpid != 0 {
			tagType = p.tpid
		}
		if i == 0 {
			eth.EthernetType = tagType
		} else {
			head[len(head)-1].(*layers.Dot1Q).Type = tagType
		}
		head = append(head, &layers.Dot1Q{VLANIdentifier: id, Type: netType})
	}
	return serialize(t, append(head, ls...)...)
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

// arpRequest asks who has ip, as a broadcast frame.
func arpRequest(t testing.TB, ip netip.Addr) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: routerMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: routerMAC, SourceProtAddress: []byte{192, 0, 2, 1},
			DstHwAddress: make([]byte, 6), DstProtAddress: ip.AsSlice(),
		})
}

// verifyChecksums recomputes the IPv4 header checksum and the TCP, UDP,
// ICMP or ICMPv6 checksum of frame, independently of how the frame was
// built.
func verifyChecksums(t testing.TB, frame []byte) {
	t.Helper()
	// Decoding errors past the transport layer (a UDP payload on port 53
	// is not DNS, an ICMP error's quote is cut short) do not matter here;
	// a missing layer does.
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var pseudo []byte
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		if sum := checksum(ip.Contents); sum != 0 {
			t.Errorf("IPv4 header checksum does not verify (residue %#04x)", sum)
		}
		if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
			return // the transport checksum covers the whole datagram
		}
		if ip.Protocol == layers.IPProtocolICMPv4 {
			// No pseudo-header (RFC 792).
			if sum := checksum(ip.Payload); sum != 0 {
				t.Errorf("ICMP checksum does not verify (residue %#04x)", sum)
			}
			return
		}
		pseudo = append(append(bytes.Clone(ip.SrcIP.To4()), ip.DstIP.To4()...), 0, byte(ip.Protocol), 0, 0)
		binary.BigEndian.PutUint16(pseudo[10:], uint16(len(ip.Payload)))
	case *layers.IPv6:
		pseudo = append(append(bytes.Clone(ip.SrcIP.To16()), ip.DstIP.To16()...), 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(pseudo[32:], uint32(len(ip.Payload)))
		pseudo[39] = byte(ip.NextHeader)
		if ip.NextHeader == layers.IPProtocolICMPv6 {
			// RFC 4443 §2.3: the pseudo-header of RFC 8200 §8.1.
			if sum := checksum(append(pseudo, ip.Payload...)); sum != 0 {
				t.Errorf("ICMPv6 checksum does not verify (residue %#04x)", sum)
			}
			return
		}
	default:
		t.Fatalf("output has no IP layer")
	}
	tl := pkt.TransportLayer()
	if tl == nil {
		t.Fatalf("output has no TCP or UDP layer")
	}
	if udp, ok := tl.(*layers.UDP); ok && udp.Checksum == 0 && len(pseudo) == 12 {
		return // IPv4 UDP without a checksum (RFC 768)
	}
	segment := append(bytes.Clone(tl.LayerContents()), tl.LayerPayload()...)
	if sum := checksum(append(pseudo, segment...)); sum != 0 {
		t.Errorf("%s checksum does not verify (residue %#04x)", tl.LayerType(), sum)
	}
}

// checksum is the Internet checksum (RFC 1071) of b; over data that
// includes its own checksum it is 0.
func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// flowHash is the Go twin of flow_hash in bpf/halb_lb.c: jhash over the
// addresses as big-endian words, then the ports and the protocol.
func flowHash(src, dst netip.AddrPort, proto uint8, sourceOnly bool) uint32 {
	var w []uint32
	for _, a := range []netip.Addr{src.Addr(), dst.Addr()} {
		b := a.As16()
		for i := 0; i < 16; i += 4 {
			w = append(w, binary.BigEndian.Uint32(b[i:]))
		}
		if sourceOnly {
			return jhashWords(w, hashSeed)
		}
	}
	w = append(w, uint32(src.Port())<<16|uint32(dst.Port()), uint32(proto))
	return jhashWords(w, hashSeed)
}

const hashSeed = 0x68616c62 // HALB_HASH_SEED

// jhashWords is the Go twin of jhash_words in bpf/jhash.h (lookup3).
func jhashWords(k []uint32, seed uint32) uint32 {
	a := 0xdeadbeef + uint32(len(k))<<2 + seed
	b, c := a, a
	for ; len(k) > 3; k = k[3:] {
		a += k[0]
		b += k[1]
		c += k[2]
		a -= c
		a ^= rol(c, 4)
		c += b
		b -= a
		b ^= rol(a, 6)
		a += c
		c -= b
		c ^= rol(b, 8)
		b += a
		a -= c
		a ^= rol(c, 16)
		c += b
		b -= a
		b ^= rol(a, 19)
		a += c
		c -= b
		c ^= rol(b, 4)
		b += a
	}
	switch len(k) {
	case 0:
		return c
	case 3:
		c += k[2]
		fallthrough
	case 2:
		b += k[1]
		fallthrough
	case 1:
		a += k[0]
	}
	c ^= b
	c -= rol(b, 14)
	a ^= c
	a -= rol(c, 11)
	b ^= a
	b -= rol(a, 25)
	c ^= b
	c -= rol(b, 16)
	a ^= c
	a -= rol(c, 4)
	b ^= a
	b -= rol(a, 14)
	c ^= b
	c -= rol(b, 24)
	return c
}

func rol(w uint32, s uint) uint32 { return w<<s | w>>(32-s) }

// testVLANs are the VLANs halb0 carries on the bench, as VLAN interfaces
// on it would: tagged frames on any other are not the node's.
var testVLANs = []uint16{100, 200}

// testLocalMACs are halb0's MAC and the VMAC it holds, untagged and on
// each of testVLANs.
func testLocalMACs(halb0 int) []LocalMAC {
	var out []LocalMAC
	for _, vlan := range append([]uint16{0}, testVLANs...) {
		out = append(out, LocalMAC{MAC: halb0MAC, Via: halb0, VLAN: vlan}, LocalMAC{MAC: testVMAC, Via: 1000, VLAN: vlan})
	}
	return out
}
