package loader

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/service"
)

// The testbed's network for forward: tun, where the program asks the
// kernel's FIB for each packet's next hop:
//
//	halb0 192.0.2.1/24, 2001:db8:0:10::1/64   tunnel ends 192.0.2.21 and
//	                                          2001:db8:0:10::21 on the link;
//	                                          192.0.2.99 without a
//	                                          neighbour entry
//	halb1 198.51.100.1/24, 2001:db8:0:11::1/64 the gateways 198.51.100.254 and
//	                                          2001:db8:0:11::fe, to the
//	                                          routed tunnel ends in
//	                                          203.0.113.128/25 and
//	                                          2001:db8:0:20::/64
//	halb2 2001:db8:0:12::1/64                 not a tx port; the gateway
//	                                          2001:db8:0:12::fe to
//	                                          2001:db8:0:30::/64
//
// and, through halb1's gateways, routes with a locked MTU smaller than the
// links', where a full-size packet does not fit the tunnel:
// 203.0.113.64/26 (MTU 1000), 203.0.113.0/26 (500), 2001:db8:0:21::/64
// (1400) and 2001:db8:0:22::/64 (1300).
//
// Neighbour entries are permanent, so the MACs are known; forwarding is on,
// as the FIB lookup needs.
var (
	tunSrc4   = netip.MustParseAddr("192.0.2.1")
	tunSrc4b  = netip.MustParseAddr("198.51.100.1")
	tunSrc6   = netip.MustParseAddr("2001:db8:0:10::1")
	tunSrc6b  = netip.MustParseAddr("2001:db8:0:11::1")
	tunSrc6c  = netip.MustParseAddr("2001:db8:0:12::1")
	onLink4   = netip.MustParseAddr("192.0.2.21")
	onLink6   = netip.MustParseAddr("2001:db8:0:10::21")
	noNeigh4  = netip.MustParseAddr("192.0.2.99")
	routed4   = netip.MustParseAddr("203.0.113.130")
	routed6   = netip.MustParseAddr("2001:db8:0:20::21")
	unrouted6 = netip.MustParseAddr("2001:db8:dead::1")
	behind2   = netip.MustParseAddr("2001:db8:0:30::1")  // via halb2
	narrow4   = netip.MustParseAddr("203.0.113.70")      // MTU 1000
	narrower4 = netip.MustParseAddr("203.0.113.10")      // MTU 500
	narrow6   = netip.MustParseAddr("2001:db8:0:21::21") // MTU 1400
	narrower6 = netip.MustParseAddr("2001:db8:0:22::21") // MTU 1300
	gw4       = netip.MustParseAddr("198.51.100.254")
	gw6       = netip.MustParseAddr("2001:db8:0:11::fe")
	gw6c      = netip.MustParseAddr("2001:db8:0:12::fe")
	router4   = netip.MustParseAddr("198.51.100.77") // sends ICMP errors
	router6   = netip.MustParseAddr("2001:db8:0:11::77")

	onLink4MAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0x21}
	onLink6MAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0x26}
	gw4MAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0xfe}
	gw6MAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0xf6}
	gw6cMAC    = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0xfc}
)

// tunNet gives the testbed's namespace the addresses, routes, neighbours
// and forwarding above.
func (tb *testbed) tunNet(t *testing.T) {
	t.Helper()
	err := tb.ns.Do(func() error {
		for _, p := range []string{
			"/proc/sys/net/ipv4/conf/all/forwarding",
			"/proc/sys/net/ipv6/conf/all/forwarding",
		} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h := tb.ns.Netlink(t)
	for _, l := range []struct {
		ifindex int
		addrs   []string
	}{
		{tb.halb0, []string{"192.0.2.1/24", "2001:db8:0:10::1/64"}},
		{tb.halb1, []string{"198.51.100.1/24", "2001:db8:0:11::1/64"}},
		{tb.halb2, []string{"2001:db8:0:12::1/64"}},
	} {
		link, err := h.LinkByIndex(l.ifindex)
		if err != nil {
			t.Fatal(err)
		}
		// The peer up too: a link without carrier has no usable routes.
		peer, err := h.LinkByName(link.Attrs().Name + "p")
		if err == nil {
			err = h.LinkSetUp(peer)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range l.addrs {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				t.Fatal(err)
			}
			addr.Flags = unix.IFA_F_NODAD
			if err := h.AddrAdd(link, addr); err != nil {
				t.Fatalf("add %s: %v", a, err)
			}
		}
	}
	waitLocal(t, h, tunSrc4, tunSrc4b, tunSrc6, tunSrc6b, tunSrc6c)
	addNeighbours(t, h, append(tb.tunNeighbours(), neighbour{tb.halb2, gw6c, gw6cMAC})...)
	for _, r := range []struct {
		dst string
		gw  netip.Addr
		mtu int
	}{
		{"203.0.113.128/25", gw4, 0},
		{"2001:db8:0:20::/64", gw6, 0},
		{"2001:db8:0:30::/64", gw6c, 0},
		// Locked: the FIB lookup of a forwarded packet heeds a route's
		// MTU only then.
		{"203.0.113.64/26", gw4, 1000},
		{"203.0.113.0/26", gw4, 500},
		{"2001:db8:0:21::/64", gw6, 1400},
		{"2001:db8:0:22::/64", gw6, 1300},
	} {
		_, dst, err := net.ParseCIDR(r.dst)
		if err != nil {
			t.Fatal(err)
		}
		route := &netlink.Route{Dst: dst, Gw: r.gw.AsSlice(), MTU: r.mtu, MTULock: r.mtu != 0}
		if err := h.RouteAdd(route); err != nil {
			t.Fatalf("route %s via %s: %v", r.dst, r.gw, err)
		}
	}
}

// neighbour is an entry a bench puts in its namespace's neighbour table.
type neighbour struct {
	ifindex int
	addr    netip.Addr
	mac     net.HardwareAddr
}

// tunNeighbours are the hosts on halb0's link and the gateways behind
// halb1 that the tunnel benches (this one and the fuzzer's) know the MACs
// of.
func (tb *testbed) tunNeighbours() []neighbour {
	return []neighbour{
		{tb.halb0, onLink4, onLink4MAC},
		{tb.halb0, onLink6, onLink6MAC},
		{tb.halb1, gw4, gw4MAC},
		{tb.halb1, gw6, gw6MAC},
	}
}

// localWait bounds waitLocal: the kernel's address work waits for the
// RTNL, which other namespaces' setup and teardown hold under load.
const localWait = 10 * time.Second

// waitLocal returns once each of addrs, addresses the bench gave its
// links, has its local route (table local), the route through which the
// FIB, and so bpf_fib_lookup, knows the address for this node's: a packet
// to it is then not forwarded (BPF_FIB_LKUP_RET_NOT_FWDED). An IPv4
// address has it when AddrAdd returns. An IPv6 address, even with
// IFA_F_NODAD, has it only when the kernel's address work has run
// (addrconf_dad_work, queued by the add, completes the address and inserts
// its route), which the RTNL may hold up for a while under load; until
// then the FIB takes the address for a neighbour on its prefix, and a
// case that answers this node (TestNAT's health check answers) would
// test the bench, not the program.
func waitLocal(t testing.TB, h *netlink.Handle, addrs ...netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(localWait)
	for _, a := range addrs {
		filter := &netlink.Route{
			Table: unix.RT_TABLE_LOCAL,
			Dst:   &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())},
		}
		family := netlink.FAMILY_V4
		if a.Is6() {
			family = netlink.FAMILY_V6
		}
		for {
			routes, err := h.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
			if err != nil {
				t.Fatalf("local route of %s: %v", a, err)
			}
			if len(routes) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no local route %v after it was added", a, localWait)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// addNeighbours puts ns in the neighbour table for good (NUD_PERMANENT).
func addNeighbours(t testing.TB, h *netlink.Handle, ns ...neighbour) {
	t.Helper()
	for _, n := range ns {
		err := h.NeighAdd(&netlink.Neigh{LinkIndex: n.ifindex, IP: n.addr.AsSlice(), HardwareAddr: n.mac, State: netlink.NUD_PERMANENT})
		if err != nil {
			t.Fatalf("neighbour %s: %v", n.addr, err)
		}
	}
}

// tunBackend adds tunnel end id at addr, from the balancer's src, whose
// next hop is behind ifindex. The program finds the MACs itself.
func (tb *testbed) tunBackend(t *testing.T, id uint32, addr, src netip.Addr, ifindex int) {
	t.Helper()
	b := Backend{
		Addr:    addr,
		Src:     src,
		Ifindex: ifindex,
		SrcMAC:  map[int]net.HardwareAddr{tb.halb0: halb0MAC, tb.halb1: halb1MAC, tb.halb2: halb2MAC}[ifindex],
	}
	if err := tb.lb.putBackend(id, b); err != nil {
		t.Fatal(err)
	}
	tb.backends[id] = b
}

// tunneled is frame in as forward: tun sends it: the IP packet that starts
// at l3 of in, unchanged, behind an outer header from outerSrc to
// outerDst that copies its DSCP and ECN (IPv6: traffic class and flow
// label) and, for IPv4, its DF bit and identification, in an untagged
// Ethernet frame from src to dst. Ethernet padding after the packet stays
// after it, outside the outer header's length.
func tunneled(t testing.TB, in []byte, l3 int, src, dst net.HardwareAddr, outerSrc, outerDst netip.Addr) []byte {
	t.Helper()
	inner := in[l3:]
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst}
	var (
		ip      gopacket.SerializableLayer
		ipLen   int
		padding []byte
	)
	if outerDst.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{
			Version: 4, TOS: inner[1], Id: binary.BigEndian.Uint16(inner[4:]), TTL: 64,
			Protocol: layers.IPProtocolIPv4, SrcIP: outerSrc.AsSlice(), DstIP: outerDst.AsSlice(),
		}
		if inner[6]&0x40 != 0 {
			ip4.Flags = layers.IPv4DontFragment
		}
		ip, ipLen = ip4, int(binary.BigEndian.Uint16(inner[2:]))
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		first := binary.BigEndian.Uint32(inner)
		ip = &layers.IPv6{
			Version: 6, TrafficClass: uint8(first >> 20), FlowLabel: first & 0xfffff, HopLimit: 64,
			NextHeader: layers.IPProtocolIPv6, SrcIP: outerSrc.AsSlice(), DstIP: outerDst.AsSlice(),
		}
		ipLen = 40 + int(binary.BigEndian.Uint16(inner[4:]))
	}
	inner, padding = inner[:ipLen], inner[ipLen:]
	return append(serialize(t, eth, ip, gopacket.Payload(bytes.Clone(inner))), padding...)
}

// verifyTunnel checks the outer header of a forward: tun frame, its
// checksum and length, and then the checksums of the packet inside.
func verifyTunnel(t testing.TB, frame []byte) {
	t.Helper()
	var inner []byte
	switch binary.BigEndian.Uint16(frame[12:]) {
	case uint16(layers.EthernetTypeIPv4):
		outer := frame[14:34]
		if sum := checksum(outer); sum != 0 {
			t.Errorf("outer IPv4 header checksum does not verify (residue %#04x)", sum)
		}
		inner = frame[34:]
		if n, want := int(binary.BigEndian.Uint16(outer[2:])), 20+int(binary.BigEndian.Uint16(inner[2:])); n != want {
			t.Errorf("outer IPv4 total length %d, want %d", n, want)
		}
	case uint16(layers.EthernetTypeIPv6):
		inner = frame[54:]
		if n, want := int(binary.BigEndian.Uint16(frame[14+4:])), 40+int(binary.BigEndian.Uint16(inner[4:])); n != want {
			t.Errorf("outer IPv6 payload length %d, want %d", n, want)
		}
	default:
		t.Fatalf("outer frame is not IP: %x", frame[:14])
	}
	verifyChecksums(t, append(bytes.Clone(frame[:14]), inner...))
}

// answered is the ICMP error halb_xdp_lb sends back for frame in, whose IP
// packet starts at l3 and does not fit the tunnel: "fragmentation needed"
// (RFC 792, RFC 1191 §4) for IPv4, "packet too big" (RFC 4443 §3.2) for
// IPv6, naming mtu, from the VIP to the client with a TTL or hop limit of
// 64, on the frame's VLAN and back to the MAC it came from. It quotes the
// packet as far as the error stays within 576 bytes (IPv4, RFC 1812
// §4.3.2.3) or 1280 (IPv6, RFC 4443 §2.4), without Ethernet padding.
func answered(t testing.TB, in []byte, l3 int, mtu uint32) []byte {
	t.Helper()
	decoded := gopacket.NewPacket(in, layers.LayerTypeEthernet, gopacket.Default)
	eth := &layers.Ethernet{SrcMAC: in[0:6], DstMAC: in[6:12], EthernetType: layers.EthernetType(binary.BigEndian.Uint16(in[12:]))}
	head := []gopacket.SerializableLayer{eth}
	if l3 > 14 {
		tag := decoded.Layer(layers.LayerTypeDot1Q).(*layers.Dot1Q)
		head = append(head, &layers.Dot1Q{VLANIdentifier: tag.VLANIdentifier, Type: tag.Type})
	}
	inner := in[l3:]
	switch ip := decoded.NetworkLayer().(type) {
	case *layers.IPv4:
		quote := inner[:min(int(ip.Length), 576-20-8)]
		return serialize(t, append(head,
			&layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolICMPv4, SrcIP: ip.DstIP, DstIP: ip.SrcIP},
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), Seq: uint16(mtu)},
			gopacket.Payload(quote))...)
	case *layers.IPv6:
		quote := inner[:min(40+int(ip.Length), 1280-40-8)]
		reply := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: ip.DstIP, DstIP: ip.SrcIP}
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
		if err := icmp.SetNetworkLayerForChecksum(reply); err != nil {
			t.Fatal(err)
		}
		return serialize(t, append(head, reply, icmp, gopacket.Payload(append(binary.BigEndian.AppendUint32(nil, mtu), quote...)))...)
	}
	t.Fatalf("not an IP frame: %x", in)
	return nil
}

// TestTUN is the specification of forward: tun in halb_xdp_lb and
// halb_tc_lb: the frame that comes out for each kind of frame and route.
func TestTUN(t *testing.T) { forPrograms(t, testTUN) }

func testTUN(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.tunNet(t)
	tb.tunBackend(t, 1, onLink4, tunSrc4, tb.halb0)
	tb.tunBackend(t, 2, routed4, tunSrc4b, tb.halb1)
	tb.tunBackend(t, 3, routed6, tunSrc6b, tb.halb1)
	tb.tunBackend(t, 4, onLink6, tunSrc6, tb.halb0)
	tb.tunBackend(t, 5, noNeigh4, tunSrc4, tb.halb0)
	tb.tunBackend(t, 6, unrouted6, tunSrc6, tb.halb0)
	tb.tunBackend(t, 7, behind2, tunSrc6c, tb.halb2)
	tb.tunBackend(t, 8, narrow4, tunSrc4b, tb.halb1)
	tb.tunBackend(t, 9, narrow6, tunSrc6b, tb.halb1)
	tb.tunBackend(t, 10, narrower6, tunSrc6b, tb.halb1)
	tb.tunBackend(t, 11, narrower4, tunSrc4b, tb.halb1)
	services := []struct {
		key     service.Key
		backend uint32
	}{
		{service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, 1},
		{service.Key{VIP: vip4, Port: 53, Proto: service.UDP}, 2},
		{service.Key{VIP: vip6, Port: 80, Proto: service.TCP}, 3},
		{service.Key{VIP: vip6, Port: 53, Proto: service.UDP}, 4},
		{service.Key{VIP: vip4, Port: 81, Proto: service.TCP}, 5},
		{service.Key{VIP: vip6, Port: 81, Proto: service.TCP}, 6},
		{service.Key{VIP: vip6, Port: 82, Proto: service.TCP}, 7},
		{service.Key{VIP: vip4, Port: 83, Proto: service.TCP}, 8},
		{service.Key{VIP: vip6, Port: 83, Proto: service.TCP}, 9},
		{service.Key{VIP: vip6, Port: 84, Proto: service.TCP}, 10},
		{service.Key{VIP: vip4, Port: 85, Proto: service.TCP}, 11},
	}
	for i, s := range services {
		id := uint32(i + 1)
		tb.service(t, s.key, Service{ID: id, Forward: ForwardTUN})
		tb.table(t, id, s.backend)
	}
	port := uint16(42000)
	flow := func(dst netip.Addr, dport uint16, proto layers.IPProtocol) packet {
		port++
		client := client4
		if dst.Is6() {
			client = client6
		}
		return packet{src: ap(client, port), dst: ap(dst, dport), proto: proto}
	}
	tagged := flow(vip4, 80, 0)
	tagged.vlans = []uint16{100}
	marked := flow(vip4, 80, 0)
	marked.tos, marked.dontFrag, marked.id = 0xb8, true, 0x1234 // EF, DF
	labelled := flow(vip6, 80, 0)
	labelled.tos, labelled.flowLabel = 0x2e, 0xbeef
	ack6 := flow(vip6, 53, layers.IPProtocolUDP)
	// big is p grown to an IP packet of n bytes, a TCP segment of an
	// open connection with DF set, as a client that does path MTU
	// discovery sends it.
	big := func(p packet, n int) packet {
		hdr := 20 + 20
		if p.dst.Addr().Is6() {
			hdr = 40 + 20
		}
		p.ack, p.dontFrag, p.data = true, true, bytes.Repeat([]byte{'x'}, n-hdr)
		return p
	}
	bigNoDF := big(flow(vip4, 83, 0), 1000)
	bigNoDF.dontFrag = false
	bigTagged := big(flow(vip4, 83, 0), 1000)
	bigTagged.vlans = []uint16{100}
	// An ICMP error about a large packet the VIP sent, itself too big.
	bigError := tooBig(t, router6, packet{src: ap(vip6, 83), dst: ap(client6, 42999), ack: true, data: bytes.Repeat([]byte{'x'}, 1340)}, 0)

	type outcome struct {
		action   xdpAction
		hop      net.HardwareAddr // the next hop's MAC; nil: dropped untouched
		src      netip.Addr       // outer source
		drop     DropReason
		event    Event
		counted  bool   // an event, not a drop
		viaHalb1 bool   // the egress is halb1, not the ingress halb0
		answer   uint32 // the MTU of the ICMP error sent back in its place
	}
	cases := []struct {
		name    string
		p       packet
		in      []byte // the frame, when not p's
		backend uint32
		xdp, tc outcome // tc: when it differs
		tcSame  bool
	}{
		{name: "ipv4 tcp to a tunnel end on the ingress link", p: flow(vip4, 80, 0), backend: 1,
			xdp: outcome{action: xdpTX, hop: onLink4MAC, src: tunSrc4}, tcSame: true},
		{name: "ipv4 tcp keeps its DSCP, DF and identification", p: marked, backend: 1,
			xdp: outcome{action: xdpTX, hop: onLink4MAC, src: tunSrc4}, tcSame: true},
		{name: "ipv4 udp to a routed tunnel end behind another interface", p: flow(vip4, 53, layers.IPProtocolUDP), backend: 2,
			xdp: outcome{action: xdpRedirect, hop: gw4MAC, src: tunSrc4b, viaHalb1: true}, tcSame: true},
		{name: "ipv6 tcp to a routed tunnel end", p: flow(vip6, 80, 0), backend: 3,
			xdp: outcome{action: xdpRedirect, hop: gw6MAC, src: tunSrc6b, viaHalb1: true}, tcSame: true},
		{name: "ipv6 tcp keeps its traffic class and flow label", p: labelled, backend: 3,
			xdp: outcome{action: xdpRedirect, hop: gw6MAC, src: tunSrc6b, viaHalb1: true}, tcSame: true},
		{name: "ipv6 udp to a tunnel end on the ingress link", p: ack6, backend: 4,
			xdp: outcome{action: xdpTX, hop: onLink6MAC, src: tunSrc6}, tcSame: true},
		// XDP rebuilds the Ethernet header, and the FIB's next hop is
		// untagged. tc sees a tag in the frame only when the kernel
		// did not take it into the skb's metadata, and drops.
		{name: "802.1Q tagged ipv4 goes out untagged", p: tagged, backend: 1,
			xdp: outcome{action: xdpTX, hop: onLink4MAC, src: tunSrc4},
			tc:  outcome{action: xdpDrop, drop: DropEncap}},
		// No neighbour entry: XDP drops, the Datapath has the kernel
		// resolve it; tc hands the encapsulated packet to the kernel's
		// neighbour layer, the MACs left for it to fill.
		{name: "a next hop without a neighbour entry", p: flow(vip4, 81, 0), backend: 5,
			xdp: outcome{action: xdpDrop, drop: DropNoNeigh},
			tc:  outcome{action: xdpRedirect, hop: halb0MAC, src: tunSrc4, event: EventNeighResolve, counted: true}},
		{name: "no route to the tunnel end", p: flow(vip6, 81, 0), backend: 6,
			xdp: outcome{action: xdpDrop, drop: DropNoRoute}, tcSame: true},
		{name: "a next hop behind an interface that is not a tx port", p: flow(vip6, 82, 0), backend: 7,
			xdp: outcome{action: xdpDrop, drop: DropNoTxPort}, tcSame: true},

		// Too big for the tunnel: XDP answers the client with the
		// tunnel's MTU, as IPVS does, where it may; tc drops what it
		// sees whole (it leaves GSO packets to segmentation).
		{name: "ipv4 with DF too big for the tunnel is answered with fragmentation needed", p: big(flow(vip4, 83, 0), 1000), backend: 8,
			xdp: outcome{action: xdpTX, answer: 1000 - 20},
			tc:  outcome{action: xdpDrop, drop: DropTooBig}},
		{name: "802.1Q tagged ipv4 too big is answered on its VLAN", p: bigTagged, backend: 8,
			xdp: outcome{action: xdpTX, answer: 1000 - 20},
			tc:  outcome{action: xdpDrop, drop: DropTooBig}},
		// 503 bytes: the error quotes all of it, and its checksum
		// covers an odd number of bytes.
		{name: "ipv4 shorter than 548 bytes is quoted whole", p: big(flow(vip4, 85, 0), 503), backend: 11,
			xdp: outcome{action: xdpTX, answer: 500 - 20},
			tc:  outcome{action: xdpDrop, drop: DropTooBig}},
		{name: "ipv4 without DF too big for the tunnel is dropped unanswered", p: bigNoDF, backend: 8,
			xdp: outcome{action: xdpDrop, drop: DropTooBig}, tcSame: true},
		{name: "ipv6 too big for the tunnel is answered with packet too big", p: big(flow(vip6, 83, 0), 1400), backend: 9,
			xdp: outcome{action: xdpTX, answer: 1400 - 40},
			tc:  outcome{action: xdpDrop, drop: DropTooBig}},
		{name: "ipv6 packet too big names 1280 for a tunnel MTU under it", p: big(flow(vip6, 84, 0), 1300), backend: 10,
			xdp: outcome{action: xdpTX, answer: 1280},
			tc:  outcome{action: xdpDrop, drop: DropTooBig}},
		{name: "ipv6 that fits in 1280 bytes is dropped unanswered", p: big(flow(vip6, 84, 0), 1270), backend: 10,
			xdp: outcome{action: xdpDrop, drop: DropTooBig}, tcSame: true},
		{name: "an ICMP error too big for the tunnel is dropped unanswered", in: bigError, backend: 9,
			xdp: outcome{action: xdpDrop, drop: DropTooBig}, tcSame: true},
	}

	wantDrops := map[DropReason]uint64{}
	wantEvents := map[Event]uint64{}
	wantBackends := map[uint32]Stats{}
	for _, c := range cases {
		o := c.xdp
		if tb.tc && !c.tcSame {
			o = c.tc
		}
		in := c.in
		if in == nil {
			in = c.p.frame(t, routerMAC, halb0MAC)
		}
		l3 := 14 + 4*len(c.p.vlans)
		t.Run(c.name, func(t *testing.T) {
			action, out := tb.run(t, in)
			if action != tb.expect(o.action) {
				t.Errorf("action %v, want %v", action, tb.expect(o.action))
			}
			want := in
			if o.answer != 0 {
				want = answered(t, in, l3, o.answer)
			}
			if o.hop != nil {
				src := halb0MAC
				if o.viaHalb1 {
					src = halb1MAC
				}
				if o.counted { // not sent by the program: the MACs are the frame's
					src = routerMAC
				}
				want = tunneled(t, in, l3, src, o.hop, o.src, tb.backends[c.backend].Addr)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\ngot  %x\nwant %x", out, want)
			}
			switch {
			case o.hop != nil:
				verifyTunnel(t, out)
			case o.answer != 0:
				verifyChecksums(t, out)
			}
		})
		switch {
		case o.counted:
			wantEvents[o.event]++
		case o.answer != 0:
			wantDrops[DropTooBigAnswered]++
		case o.action == xdpDrop:
			wantDrops[o.drop]++
		}
		if o.action != xdpDrop && o.answer == 0 {
			s := wantBackends[c.backend]
			s.Packets, s.Bytes, s.NewFlows = s.Packets+1, s.Bytes+uint64(len(in)), s.NewFlows+1
			wantBackends[c.backend] = s
		}
	}
	t.Run("counters", func(t *testing.T) {
		tb.wantDrops(t, wantDrops)
		tb.wantEvents(t, wantEvents)
		for id := range tb.backends {
			tb.wantBackendStats(t, id, wantBackends[id])
		}
	})
}

// wantEvents checks every event counter: those missing from want are 0.
func (tb *testbed) wantEvents(t *testing.T, want map[Event]uint64) {
	t.Helper()
	got, err := tb.lb.events()
	wantCounters(t, "events", got, err, want)
}

// tooBig is the ICMP error a router at from sends to vip about a packet
// the VIP sent to client (whose first bytes it quotes): "fragmentation
// needed" (RFC 792, RFC 1191 §4) for IPv4, "packet too big" (RFC 4443
// §3.2) for IPv6, with a next-hop MTU of 1400. quote is how much of the
// packet it quotes; 0 means all.
func tooBig(t testing.TB, from netip.Addr, sent packet, quote int) []byte {
	t.Helper()
	p := sent.frame(t, halb0MAC, routerMAC)
	quoted := p[14:]
	if quote > 0 {
		quoted = quoted[:quote]
	}
	eth := &layers.Ethernet{SrcMAC: routerMAC, DstMAC: halb0MAC}
	vip := sent.src.Addr()
	if vip.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: from.AsSlice(), DstIP: vip.AsSlice()}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), Seq: 1400}
		return serialize(t, eth, ip, icmp, gopacket.Payload(quoted))
	}
	eth.EthernetType = layers.EthernetTypeIPv6
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: from.AsSlice(), DstIP: vip.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth, ip, icmp, gopacket.Payload(append([]byte{0, 0, 0x05, 0x78}, quoted...)))
}

// TestICMPTooBig is how halb_xdp_lb and halb_tc_lb treat an ICMP "too big"
// error to a VIP: it goes to the backend of the flow it quotes, as
// conntrack or Maglev say and as the service forwards, so that path MTU
// discovery works for the backend that sent the packet; other ICMP passes.
func TestICMPTooBig(t *testing.T) { forPrograms(t, testICMPTooBig) }

func testICMPTooBig(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.tunNet(t)
	web4 := service.Key{VIP: vip4, Port: 80, Proto: service.TCP}
	dns4 := service.Key{VIP: vip4, Port: 53, Proto: service.UDP}
	web6 := service.Key{VIP: vip6, Port: 80, Proto: service.TCP}
	tb.backend(t, 1, "198.51.100.11", tb.halb0)
	tb.backend(t, 2, "198.51.100.12", tb.halb1)
	tb.backend(t, 5, "198.51.100.15", tb.halb0)
	tb.tunBackend(t, 3, routed6, tunSrc6b, tb.halb1)
	tb.tunBackend(t, 4, onLink6, tunSrc6, tb.halb0)
	tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
	tb.service(t, dns4, Service{ID: 2, Forward: ForwardDR})
	tb.service(t, web6, Service{ID: 3, Forward: ForwardTUN})
	tb.table(t, 2, 2)

	// The flows start on one backend, and the tables then move to
	// another: an error about a flow goes where conntrack says.
	tb.table(t, 1, 1)
	tb.expectForward(t, packet{src: ap(client4, 40000), dst: ap(vip4, 80)}, xdpTX, 1)
	tb.table(t, 1, 5)
	tb.table(t, 3, 3)
	syn6 := packet{src: ap(client6, 40000), dst: ap(vip6, 80)}
	if action, _ := tb.run(t, syn6.frame(t, routerMAC, halb0MAC)); action != tb.expect(xdpRedirect) {
		t.Fatalf("ipv6 syn: %v", action)
	}
	tb.table(t, 3, 4)

	reply := func(p packet) packet { p.src, p.dst = p.dst, p.src; return p }
	// A quote whose source is not the VIP, sent to the VIP.
	notFromVIP := tooBig(t, router4, packet{src: ap(other4, 80), dst: ap(client4, 40000), ack: true}, 0)
	copy(notFromVIP[14+16:], vip4.AsSlice())
	binary.BigEndian.PutUint16(notFromVIP[14+10:], 0)
	binary.BigEndian.PutUint16(notFromVIP[14+10:], ^checksum(notFromVIP[14:34]))
	// Destination unreachable, but not "fragmentation needed".
	portUnreachable := tooBig(t, router4, reply(packet{src: ap(client4, 40000), dst: ap(vip4, 80), ack: true}), 0)
	portUnreachable[14+20+1] = 3 // port unreachable
	binary.BigEndian.PutUint16(portUnreachable[14+20+2:], 0)
	binary.BigEndian.PutUint16(portUnreachable[14+20+2:], ^checksum(portUnreachable[14+20:]))

	cases := []struct {
		name    string
		in      []byte
		action  xdpAction
		backend uint32 // 0: passed untouched
		tunnel  bool
	}{
		{name: "ipv4 fragmentation needed about a flow in conntrack goes to its backend (DR)",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40000), dst: ap(vip4, 80), ack: true}), 0), action: xdpTX, backend: 1},
		{name: "quoting the IP header and 8 bytes is enough",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40000), dst: ap(vip4, 80), ack: true}), 28), action: xdpTX, backend: 1},
		{name: "about a flow conntrack does not know: the Maglev choice",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40001), dst: ap(vip4, 80), ack: true}), 0), action: xdpTX, backend: 5},
		{name: "about a udp flow",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40002), dst: ap(vip4, 53), proto: layers.IPProtocolUDP}), 0), action: xdpRedirect, backend: 2},
		{name: "ipv6 packet too big about a flow in conntrack goes to its backend (TUN)",
			in: tooBig(t, router6, reply(packet{src: ap(client6, 40000), dst: ap(vip6, 80), ack: true}), 0), action: xdpRedirect, backend: 3, tunnel: true},
		{name: "ipv6 about a flow conntrack does not know",
			in: tooBig(t, router6, reply(packet{src: ap(client6, 40001), dst: ap(vip6, 80), ack: true}), 48), action: xdpTX, backend: 4, tunnel: true},

		{name: "quoting too little to read the ports passes",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40000), dst: ap(vip4, 80), ack: true}), 22), action: xdpPass},
		{name: "ipv6 quoting too little passes",
			in: tooBig(t, router6, reply(packet{src: ap(client6, 40000), dst: ap(vip6, 80), ack: true}), 43), action: xdpPass},
		{name: "about a packet that did not come from the VIP passes", in: notFromVIP, action: xdpPass},
		{name: "about a port without a service passes",
			in: tooBig(t, router4, reply(packet{src: ap(client4, 40000), dst: ap(vip4, 8080), ack: true}), 0), action: xdpPass},
		{name: "another destination unreachable passes", in: portUnreachable, action: xdpPass},
	}

	forwarded := uint64(0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			action, out := tb.run(t, c.in)
			if action != tb.expect(c.action) {
				t.Errorf("action %v, want %v", action, tb.expect(c.action))
			}
			want := c.in
			b := tb.backends[c.backend]
			switch {
			case c.backend == 0:
			case c.tunnel:
				src, hop := halb1MAC, gw6MAC
				if c.backend == 4 {
					src, hop = halb0MAC, onLink6MAC
				}
				want = tunneled(t, c.in, 14, src, hop, b.Src, b.Addr)
			default:
				want = append(append(bytes.Clone(b.MAC), b.SrcMAC...), c.in[12:]...)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\ngot  %x\nwant %x", out, want)
			}
			switch {
			case c.tunnel:
				verifyTunnel(t, out)
			case c.backend != 0:
				verifyChecksums(t, out)
			}
		})
		if c.backend != 0 {
			forwarded++
		}
	}
	t.Run("counters", func(t *testing.T) {
		tb.wantEvents(t, map[Event]uint64{EventICMPTooBig: forwarded})
		tb.wantDrops(t, nil)
		// Errors are not flows: conntrack learnt none.
		for _, p := range []packet{
			{src: ap(client4, 40001), dst: ap(vip4, 80)},
			{src: ap(client4, 40002), dst: ap(vip4, 53), proto: layers.IPProtocolUDP},
			{src: ap(client6, 40001), dst: ap(vip6, 80)},
		} {
			if id, ok := tb.conntrack(t, p); ok {
				t.Errorf("%v: conntrack holds backend %d after an ICMP error, want nothing", p, id)
			}
		}
		// The backend counts the error as a packet, not as a new flow.
		s, err := tb.lb.backendStats(5)
		if err != nil {
			t.Fatal(err)
		}
		if s.Packets != 1 || s.NewFlows != 0 {
			t.Errorf("backend 5 counters %+v, want 1 packet and no new flow", s)
		}
	})
}

// TestTUNNextHopChanges: halb_xdp_lb caches each TUN backend's next hop
// per CPU; once the loader says so (forgetNexthops, which the Datapath
// calls on every route and neighbour update), a new MAC for the gateway
// and a new MTU on the route are what the next packets get.
func TestTUNNextHopChanges(t *testing.T) {
	tb := newTestbed(t, Options{})
	tb.tunNet(t)
	tb.tunBackend(t, 1, routed4, tunSrc4b, tb.halb1)
	tb.service(t, service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, Service{ID: 1, Forward: ForwardTUN})
	tb.table(t, 1, 1)
	h := tb.ns.Netlink(t)

	send := func(t *testing.T, p packet, hop net.HardwareAddr) {
		t.Helper()
		in := p.frame(t, routerMAC, halb0MAC)
		action, out := tb.run(t, in)
		want := tunneled(t, in, 14, halb1MAC, hop, tunSrc4b, routed4)
		if action != xdpRedirect || !bytes.Equal(out, want) {
			t.Errorf("%v, frame\n%x\nwant XDP_REDIRECT, frame\n%x", action, out, want)
		}
	}
	syn := packet{src: ap(client4, 43000), dst: ap(vip4, 80)}
	for range 3 { // the first fills the cache, the others read it
		send(t, syn, gw4MAC)
	}

	moved := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x02, 0xee}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: tb.halb1, IP: gw4.AsSlice(), HardwareAddr: moved, State: netlink.NUD_PERMANENT}); err != nil {
		t.Fatal(err)
	}
	if err := tb.lb.forgetNexthops(); err != nil {
		t.Fatal(err)
	}
	send(t, syn, moved)

	// The route to the backend gets a locked MTU of 1000: a 1200-byte
	// DF packet no longer fits the tunnel and is answered.
	_, dst, _ := net.ParseCIDR("203.0.113.128/25")
	if err := h.RouteReplace(&netlink.Route{Dst: dst, Gw: gw4.AsSlice(), MTU: 1000, MTULock: true}); err != nil {
		t.Fatal(err)
	}
	if err := tb.lb.forgetNexthops(); err != nil {
		t.Fatal(err)
	}
	big := packet{src: ap(client4, 43001), dst: ap(vip4, 80), ack: true, dontFrag: true, data: bytes.Repeat([]byte{'x'}, 1200-40)}
	in := big.frame(t, routerMAC, halb0MAC)
	action, out := tb.run(t, in)
	if want := answered(t, in, 14, 1000-20); action != xdpTX || !bytes.Equal(out, want) {
		t.Errorf("1200 bytes over a 1000-byte route: %v, frame\n%x\nwant XDP_TX, frame\n%x", action, out, want)
	}
	send(t, syn, moved) // a small one still goes
}
