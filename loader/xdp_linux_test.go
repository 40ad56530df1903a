package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

var (
	vip4    = netip.MustParseAddr("192.0.2.100")
	vip6    = netip.MustParseAddr("2001:db8::100")
	other4  = netip.MustParseAddr("192.0.2.200") // on the same link, not a VIP
	client4 = netip.MustParseAddr("203.0.113.7")
	client6 = netip.MustParseAddr("2001:db8:ff::7")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// cut keeps the first n bytes of frame: a packet truncated on the wire.
func cut(frame []byte, n int) []byte { return frame[:n] }

// setIPLength sets the length field of the IP header at l3 in frame: an
// IPv4 total length (the header checksum summed again), an IPv6 payload
// length.
func setIPLength(frame []byte, l3, n int) []byte {
	ip := frame[l3:]
	if ip[0]>>4 == 6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(n))
		return frame
	}
	binary.BigEndian.PutUint16(ip[2:], uint16(n))
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], ^checksum(ip[:int(ip[0]&0xf)*4]))
	return frame
}

// TestXDP is the specification of halb_xdp_lb, and of halb_tc_lb beside
// it: what they do with each kind of frame, shown as the frame that comes
// out. Every service here has a single backend, so where a flow goes
// depends only on the service; the Maglev choice among several backends is
// TestXDPScheduling's.
func TestXDP(t *testing.T) { forPrograms(t, testSpec) }

func testSpec(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.backend(t, 1, "198.51.100.11", tb.halb0)
	tb.backend(t, 2, "198.51.100.12", tb.halb1)
	tb.backend(t, 3, "2001:db8:1::11", tb.halb0)
	tb.backend(t, 4, "2001:db8:1::12", tb.halb1)
	for _, s := range []struct {
		key     service.Key
		id      uint32
		backend uint32
	}{
		{service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, 1, 1},
		{service.Key{VIP: vip4, Port: 53, Proto: service.UDP}, 2, 2},
		{service.Key{VIP: vip6, Port: 80, Proto: service.TCP}, 3, 3},
		{service.Key{VIP: vip6, Port: 53, Proto: service.UDP}, 4, 4},
	} {
		tb.service(t, s.key, Service{ID: s.id, Forward: ForwardDR})
		tb.table(t, s.id, s.backend)
	}

	var (
		tcp4 = packet{src: ap(client4, 40000), dst: ap(vip4, 80)}
		udp4 = packet{src: ap(client4, 40000), dst: ap(vip4, 53), proto: layers.IPProtocolUDP}
		tcp6 = packet{src: ap(client6, 40000), dst: ap(vip6, 80)}
		udp6 = packet{src: ap(client6, 40000), dst: ap(vip6, 53), proto: layers.IPProtocolUDP}
	)
	// with returns p from another source port: every forwarded case is a
	// flow of its own, so each counts as a new flow.
	port := uint16(41000)
	with := func(p packet, change func(*packet)) packet {
		port++
		p.src = ap(p.src.Addr(), port)
		if change != nil {
			change(&p)
		}
		return p
	}
	badIHL := tcp4.frame(t, routerMAC, halb0MAC)
	badIHL[14] = 0x44 // version 4, header length 4 words
	shortLen := tcp4.frame(t, routerMAC, halb0MAC)
	shortLen[14+3] = 20 // total length 20: the IPv4 header and nothing more
	shortLen6 := tcp6.frame(t, routerMAC, halb0MAC)
	shortLen6[14+4], shortLen6[14+5] = 0, 0 // payload length 0

	// Frames whose headers say more or less than they hold. Each changes
	// one field, IPv4 header checksums kept valid, so that the one field
	// is what the program must catch.
	tcp4Frame := func() []byte { return with(tcp4, nil).frame(t, routerMAC, halb0MAC) }
	tcp6Frame := func() []byte { return with(tcp6, nil).frame(t, routerMAC, halb0MAC) }
	udp4Frame := func() []byte { return with(udp4, nil).frame(t, routerMAC, halb0MAC) }
	longLen := setIPLength(tcp4Frame(), 14, len(tcp4Frame())-14+1)               // one byte past the frame
	longLen6 := setIPLength(tcp6Frame(), 14, len(tcp6Frame())-14-40+1)           // the same in IPv6
	longLenMax := setIPLength(tcp4Frame(), 14, 0xffff)                           // a lot past it
	tcpShort := setIPLength(append(tcp4Frame(), make([]byte, 20)...), 14, 20+12) // 12 bytes of TCP, padding after
	doffLow := tcp4Frame()
	doffLow[14+20+12] = 4 << 4 // data offset 4 words
	doffLow6 := tcp6Frame()
	doffLow6[14+40+12] = 0 // data offset 0
	doffPast := tcp4Frame()
	doffPast[14+20+12] = 15 << 4 // 60 bytes of header in a 37-byte segment
	udpLenLow := udp4Frame()
	binary.BigEndian.PutUint16(udpLenLow[14+20+4:], 7)
	udpLenPast := udp4Frame()
	binary.BigEndian.PutUint16(udpLenPast[14+20+4:], uint16(len(udpLenPast)-14-20+1))
	padding := make([]byte, 30) // Ethernet pads a frame to 60 bytes; any trailer goes along
	from := func(p packet, src string) packet {
		p = with(p, nil)
		p.src = ap(netip.MustParseAddr(src), p.src.Port())
		return p
	}
	to := func(p packet, mac net.HardwareAddr) []byte { return with(p, nil).frame(t, routerMAC, mac) }
	broadcastBadIHL := bytes.Clone(badIHL)
	copy(broadcastBadIHL, layers.EthernetBroadcast)

	cases := []struct {
		name    string
		p       packet
		in      []byte // when the frame is not p's own
		action  xdpAction
		service uint32 // the service the frame is for, 0 for none
		backend uint32 // where it goes: its MACs replace the frame's
		pad     []byte // after the packet, in the frame that comes in and goes out
		vmac    bool   // p's frame to testVMAC, which halb0 holds, not to halb0's MAC
		drop    DropReason
		// A frame for a service (or malformed to a VIP) to a MAC that is
		// not the node's: passed, counted as EventOtherHost.
		other bool
		// BPF_PROG_TEST_RUN refuses the frame as an skb (EINVAL): a tc
		// program cannot be shown it.
		noSKB bool
	}{
		// Forwarded: the output is the input with the backend's MAC as
		// destination and the egress interface's as source.
		{name: "ipv4 tcp syn to a backend behind the ingress interface", p: with(tcp4, nil), action: xdpTX, service: 1, backend: 1},
		{name: "ipv4 tcp ack without conntrack", p: with(tcp4, func(p *packet) { p.ack = true }), action: xdpTX, service: 1, backend: 1},
		{name: "ipv4 udp to a backend behind another interface", p: with(udp4, nil), action: xdpRedirect, service: 2, backend: 2},
		{name: "ipv6 tcp syn", p: with(tcp6, nil), action: xdpTX, service: 3, backend: 3},
		{name: "ipv6 udp", p: with(udp6, nil), action: xdpRedirect, service: 4, backend: 4},
		{name: "802.1Q tagged ipv4 tcp keeps its tag", p: with(tcp4, func(p *packet) { p.vlans = []uint16{100} }), action: xdpTX, service: 1, backend: 1},
		{name: "802.1ad tagged ipv6 udp keeps its tag", p: with(udp6, func(p *packet) { p.vlans, p.tpid = []uint16{200}, layers.EthernetTypeQinQ }), action: xdpRedirect, service: 4, backend: 4},
		{name: "ipv4 with options", p: with(tcp4, func(p *packet) {
			p.ipv4Opts = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
		}), action: xdpTX, service: 1, backend: 1},
		{name: "ipv4 first fragment is balanced on its ports", p: with(udp4, func(p *packet) { p.moreFrags = true }), action: xdpRedirect, service: 2, backend: 2},

		// Not for a service: passed untouched.
		{name: "tcp to a VIP port without a service", p: packet{src: ap(client4, 40000), dst: ap(vip4, 8080)}, action: xdpPass},
		{name: "udp to a tcp service's port", p: packet{src: ap(client4, 40000), dst: ap(vip4, 80), proto: layers.IPProtocolUDP}, action: xdpPass},
		{name: "ipv6 udp to a tcp service's port", p: packet{src: ap(client6, 40000), dst: ap(vip6, 80), proto: layers.IPProtocolUDP}, action: xdpPass},
		{name: "ipv4 to an address that is not a VIP", p: packet{src: ap(client4, 40000), dst: ap(other4, 80)}, action: xdpPass},
		{name: "arp request for the VIP", in: arpRequest(t, vip4), action: xdpPass},
		{name: "icmp echo to the VIP", p: packet{src: ap(client4, 0), dst: ap(vip4, 0), proto: layers.IPProtocolICMPv4}, action: xdpPass},
		{name: "ipv4 later fragment to the VIP", p: with(tcp4, func(p *packet) { p.fragOffset = 185 }), action: xdpPass},
		{name: "ipv6 with a hop-by-hop header to the VIP", p: with(tcp6, func(p *packet) { p.hopByHop = true }), action: xdpPass},
		{name: "802.1Q tagged with a VLAN the node does not have", p: with(tcp4, func(p *packet) { p.vlans = []uint16{300} }), action: xdpPass, other: true},
		{name: "802.1ad tagged with a VLAN the node does not have", p: with(udp6, func(p *packet) { p.vlans, p.tpid = []uint16{4094}, layers.EthernetTypeQinQ }), action: xdpPass, other: true},
		{name: "two stacked VLAN tags", p: with(tcp4, func(p *packet) { p.vlans, p.tpid = []uint16{200, 100}, layers.EthernetTypeQinQ }), action: xdpPass},

		// Cut short before the destination address: not known to be
		// ours, passed.
		{name: "vlan tag cut short", in: cut(with(tcp4, func(p *packet) { p.vlans = []uint16{100} }).frame(t, routerMAC, halb0MAC), 16), action: xdpPass},
		{name: "ipv4 header cut before the addresses", in: cut(tcp4.frame(t, routerMAC, halb0MAC), 14+16), action: xdpPass, noSKB: true},
		{name: "ipv6 header cut before the addresses", in: cut(tcp6.frame(t, routerMAC, halb0MAC), 14+30), action: xdpPass, noSKB: true},
		// Broken after it: dropped when the address is a VIP.
		{name: "ipv4 options cut short, to a VIP", in: cut(with(tcp4, func(p *packet) {
			p.ipv4Opts = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}).frame(t, routerMAC, halb0MAC), 14+22), action: xdpDrop, drop: DropIPLength},
		{name: "ipv4 header length below 5 words, to a VIP", in: badIHL, action: xdpDrop, drop: DropIPHeader},
		{name: "ipv4 total length short of the headers, to a VIP", in: shortLen, action: xdpDrop, drop: DropIPLength},
		{name: "ipv6 payload length short of a transport header, to a VIP", in: shortLen6, action: xdpDrop, drop: DropIPLength},
		{name: "tcp header cut short, to a VIP", in: cut(tcp4.frame(t, routerMAC, halb0MAC), 14+20+10), action: xdpDrop, drop: DropIPLength},
		{name: "udp header cut short, to a VIP", in: cut(udp4.frame(t, routerMAC, halb0MAC), 14+20+4), action: xdpDrop, drop: DropIPLength},
		{name: "ipv6 tcp header cut short, to a VIP", in: cut(tcp6.frame(t, routerMAC, halb0MAC), 14+40+12), action: xdpDrop, drop: DropIPLength},
		{name: "tcp header cut short, to another address", in: cut(packet{src: ap(client4, 40000), dst: ap(other4, 80)}.frame(t, routerMAC, halb0MAC), 14+20+10), action: xdpPass},

		// Lengths and offsets that the frame does not bear out:
		// dropped to a VIP, whatever the frame holds after them.
		{name: "ipv4 total length one byte past the frame", in: longLen, action: xdpDrop, drop: DropIPLength},
		{name: "ipv4 total length 65535 in a short frame", in: longLenMax, action: xdpDrop, drop: DropIPLength},
		{name: "ipv6 payload length one byte past the frame", in: longLen6, action: xdpDrop, drop: DropIPLength},
		{name: "tcp data offset below 5 words", in: doffLow, action: xdpDrop, drop: DropTCPHeader},
		{name: "ipv6 tcp data offset 0", in: doffLow6, action: xdpDrop, drop: DropTCPHeader},
		{name: "tcp data offset past the segment", in: doffPast, action: xdpDrop, drop: DropTCPHeader},
		{name: "tcp segment shorter than a tcp header, padding after it", in: tcpShort, action: xdpDrop, drop: DropTCPHeader},
		{name: "udp length below 8", in: udpLenLow, action: xdpDrop, drop: DropUDPHeader},
		{name: "udp length past the ip payload", in: udpLenPast, action: xdpDrop, drop: DropUDPHeader},
		// Padding after the packet (Ethernet's minimum frame, a
		// trailer) is no fault: balanced, the padding along.
		{name: "ipv4 tcp with ethernet padding after the packet", p: with(tcp4, nil), pad: padding, action: xdpTX, service: 1, backend: 1},
		{name: "ipv4 udp with a trailer after the packet", p: with(udp4, nil), pad: padding, action: xdpRedirect, service: 2, backend: 2},
		{name: "ipv6 tcp with a trailer after the packet", p: with(tcp6, nil), pad: padding, action: xdpTX, service: 3, backend: 3},

		// Sources no client has (bpf/halb_checks.h), and the VIPs.
		{name: "from 255.255.255.255", p: from(tcp4, "255.255.255.255"), action: xdpDrop, drop: DropBadSource},
		{name: "from 0.0.0.0", p: from(udp4, "0.0.0.0"), action: xdpDrop, drop: DropBadSource},
		{name: "from loopback", p: from(tcp4, "127.0.0.1"), action: xdpDrop, drop: DropBadSource},
		{name: "from a multicast address", p: from(tcp4, "224.0.0.18"), action: xdpDrop, drop: DropBadSource},
		{name: "icmp echo from 255.255.255.255 to a VIP", p: packet{src: ap(netip.MustParseAddr("255.255.255.255"), 0), dst: ap(vip4, 0), proto: layers.IPProtocolICMPv4}, action: xdpDrop, drop: DropBadSource},
		{name: "from 255.255.255.255 to another address", p: packet{src: ap(netip.MustParseAddr("255.255.255.255"), 40000), dst: ap(other4, 80)}, action: xdpPass},
		{name: "ipv6 from the unspecified address", p: from(tcp6, "::"), action: xdpDrop, drop: DropBadSource},
		{name: "ipv6 from loopback", p: from(udp6, "::1"), action: xdpDrop, drop: DropBadSource},
		{name: "ipv6 from a multicast address", p: from(tcp6, "ff02::1"), action: xdpDrop, drop: DropBadSource},
		{name: "ipv6 from an ipv4-mapped address", p: from(tcp6, "::ffff:203.0.113.7"), action: xdpDrop, drop: DropBadSource},
		{name: "from 240.0.0.1, reserved but routable, is balanced", p: from(tcp4, "240.0.0.1"), action: xdpTX, service: 1, backend: 1},
		{name: "ipv6 from a link-local address is balanced", p: from(tcp6, "fe80::7"), action: xdpTX, service: 3, backend: 3},
		// The program looks a source up in halb_vips only when its last
		// byte is a VIP's; the lookup, not the byte, decides.
		{name: "from a client whose last byte is the VIP's is balanced", p: from(tcp4, "203.0.113.100"), action: xdpTX, service: 1, backend: 1},
		{name: "ipv6 from a client whose last byte is the VIP's is balanced", p: from(udp6, "2001:db8:ff::100"), action: xdpRedirect, service: 4, backend: 4},
		{name: "syn from the VIP itself", p: from(tcp4, vip4.String()), action: xdpDrop, service: 1, drop: DropVIPSource},
		{name: "ack from the VIP itself", p: from(with(tcp4, func(p *packet) { p.ack = true }), vip4.String()), action: xdpDrop, service: 1, drop: DropVIPSource},
		{name: "ipv6 udp from the VIP itself", p: from(udp6, vip6.String()), action: xdpDrop, service: 4, drop: DropVIPSource},

		// Frames not addressed to this node: another host's, whatever
		// they hold, passed untouched. The node they are for balances
		// them; a VMAC the node holds is its own.
		{name: "broadcast syn to a service", in: to(tcp4, layers.EthernetBroadcast), action: xdpPass, other: true},
		{name: "ipv4 multicast mac, udp to a service", in: to(udp4, net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}), action: xdpPass, other: true},
		{name: "ipv6 multicast mac, tcp to a service", in: to(tcp6, net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}), action: xdpPass, other: true},
		{name: "another host's unicast mac, syn to a service", in: to(tcp4, routerMAC), action: xdpPass, other: true},
		{name: "a VMAC the node does not hold, syn to a service", in: to(tcp4, otherVMAC), action: xdpPass, other: true},
		{name: "broadcast, malformed to a VIP", in: broadcastBadIHL, action: xdpPass, other: true},
		{name: "broadcast to a VIP port without a service", in: to(packet{src: ap(client4, 40000), dst: ap(vip4, 8080)}, layers.EthernetBroadcast), action: xdpPass},
		{name: "syn to a VMAC the node holds", p: with(tcp4, nil), vmac: true, action: xdpTX, service: 1, backend: 1},
		{name: "ipv6 udp to a VMAC the node holds", p: with(udp6, nil), vmac: true, action: xdpRedirect, service: 4, backend: 4},
	}

	var (
		wantServices = map[uint32]Stats{}
		wantBackends = map[uint32]Stats{}
		wantDrops    = map[DropReason]uint64{}
		wantEvents   = map[Event]uint64{}
	)
	for _, c := range cases {
		if tb.tc && c.noSKB {
			// Not a case for tc: BPF_PROG_TEST_RUN refuses (EINVAL) to
			// build an skb whose IP header is cut short, and the stack
			// never hands tc one either.
			continue
		}
		in := c.in
		if in == nil {
			dst := halb0MAC
			if c.vmac {
				dst = testVMAC
			}
			in = append(c.p.frame(t, routerMAC, dst), c.pad...)
		}
		t.Run(c.name, func(t *testing.T) {
			action, out := tb.run(t, in)
			want := in
			if c.backend != 0 {
				want = append(tb.forwardedTo(t, c.p, c.backend), c.pad...)
			}
			if action != tb.expect(c.action) {
				t.Errorf("action %v, want %v", action, tb.expect(c.action))
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\ngot  %x\nwant %x", out, want)
			}
			if c.backend != 0 {
				verifyChecksums(t, out[:len(out)-len(c.pad)])
			}
		})

		n := uint64(len(in))
		if c.service != 0 {
			s := wantServices[c.service]
			s.Packets, s.Bytes = s.Packets+1, s.Bytes+n
			if c.backend != 0 {
				s.NewFlows++
			}
			wantServices[c.service] = s
		}
		if c.backend != 0 {
			s := wantBackends[c.backend]
			s.Packets, s.Bytes, s.NewFlows = s.Packets+1, s.Bytes+n, s.NewFlows+1
			wantBackends[c.backend] = s
		}
		if c.action == xdpDrop {
			wantDrops[c.drop]++
		}
		if c.other {
			wantEvents[EventOtherHost]++
		}
	}

	t.Run("counters", func(t *testing.T) {
		for id := uint32(1); id <= 4; id++ {
			tb.wantServiceStats(t, id, wantServices[id])
			tb.wantBackendStats(t, id, wantBackends[id])
		}
		tb.wantDrops(t, wantDrops)
		tb.wantEvents(t, wantEvents)
	})
}

// TestXDPScheduling is how halb_xdp_lb and halb_tc_lb pick a backend among
// several: conntrack first, the Maglev table for flows conntrack does not
// know.
func TestXDPScheduling(t *testing.T) { forPrograms(t, testScheduling) }

func testScheduling(t *testing.T, prog string) {
	netnstest.Require(t)
	web4 := service.Key{VIP: vip4, Port: 80, Proto: service.TCP}
	web6 := service.Key{VIP: vip6, Port: 80, Proto: service.TCP}
	// All frames of a test have this length: TCP SYNs and ACKs from an
	// IPv4 client, without options.
	frameLen := uint64(len(packet{src: ap(client4, 1), dst: ap(vip4, 80)}.frame(t, routerMAC, halb0MAC)))
	stats := func(packets, newFlows uint64) Stats {
		return Stats{Packets: packets, Bytes: packets * frameLen, NewFlows: newFlows}
	}
	syn := func(port uint16) packet { return packet{src: ap(client4, port), dst: ap(vip4, 80)} }
	ack := func(port uint16) packet { return packet{src: ap(client4, port), dst: ap(vip4, 80), ack: true} }

	// Run with the default table size and a small one: the program's
	// modulus must follow the loader's option.
	for _, size := range []uint32{DefaultMaglevTableSize, 251} {
		t.Run(fmt.Sprintf("a non-SYN packet without conntrack takes the Maglev choice (M=%d)", size), func(t *testing.T) {
			tb := newTestbed(t, Options{MaglevTableSize: size}).on(prog)
			tb.backend(t, 1, "198.51.100.11", tb.halb0)
			tb.backend(t, 5, "198.51.100.15", tb.halb0)
			tb.backend(t, 6, "198.51.100.16", tb.halb0)
			tb.backend(t, 3, "2001:db8:1::11", tb.halb0)
			tb.backend(t, 8, "2001:db8:1::18", tb.halb0)
			tb.backend(t, 9, "2001:db8:1::19", tb.halb0)
			tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
			tb.service(t, web6, Service{ID: 2, Forward: ForwardDR})
			tables := map[uint32][]uint32{1: tb.table(t, 1, 1, 5, 6), 2: tb.table(t, 2, 3, 8, 9)}

			for _, f := range []struct {
				client, vip netip.Addr
				service     uint32
			}{{client4, vip4, 1}, {client6, vip6, 2}} {
				chosen := map[uint32]int{}
				for i := range uint16(12) {
					p := packet{src: ap(f.client, 50000+i), dst: ap(f.vip, 80), ack: true}
					table := tables[f.service]
					want := table[flowHash(p.src, p.dst, uint8(layers.IPProtocolTCP), false)%uint32(len(table))]
					tb.expectForward(t, p, xdpTX, want)
					if got, ok := tb.conntrack(t, p); !ok || got != want {
						t.Errorf("%v: conntrack holds backend %d (present %v), want %d", p, got, ok, want)
					}
					chosen[want]++
				}
				if len(chosen) < 2 {
					t.Errorf("12 flows to %s all hashed to one backend: %v", f.vip, chosen)
				}
				tb.wantServiceStats(t, f.service, Stats{Packets: 12, Bytes: 12 * uint64(len(packet{src: ap(f.client, 1), dst: ap(f.vip, 80)}.frame(t, routerMAC, halb0MAC))), NewFlows: 12})
			}
		})
	}

	t.Run("conntrack keeps a flow's backend when the Maglev table changes", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		tb.expectForward(t, syn(40000), xdpTX, 1)

		tb.backend(t, 5, "198.51.100.15", tb.halb1)
		tb.table(t, 1, 5)
		tb.expectForward(t, ack(40000), xdpTX, 1)       // conntrack
		tb.expectForward(t, syn(40001), xdpRedirect, 5) // a new flow takes the new table
		// A SYN on a known 5-tuple is a new connection: the new table.
		tb.expectForward(t, syn(40000), xdpRedirect, 5)
		tb.expectForward(t, ack(40000), xdpRedirect, 5)

		tb.wantServiceStats(t, 1, stats(5, 3))
		tb.wantBackendStats(t, 1, stats(2, 1))
		tb.wantBackendStats(t, 5, stats(3, 2))
		tb.wantDrops(t, nil)
	})

	t.Run("conntrack counts a flow's packets from when it began, and a SYN starts both again", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		before := monotonicNow(t)
		tb.expectForward(t, syn(40000), xdpTX, 1)
		for range 3 {
			tb.expectForward(t, ack(40000), xdpTX, 1)
		}
		e, ok := tb.ctEntry(t, ack(40000))
		if !ok || e.Packets != 4 || e.FirstSeen < before || e.FirstSeen > monotonicNow(t) {
			t.Errorf("after a SYN and 3 ACKs halb_ct holds %+v (present %v), want 4 packets first seen at %d s or just after", e, ok, before)
		}
		// A reused 5-tuple's SYN is a new connection: as if it began long
		// ago, it begins now, with one packet.
		key := flowKey(t, ack(40000))
		e.FirstSeen = 5
		if err := tb.lb.objs.HalbCt.Put(&key, &e); err != nil {
			t.Fatal(err)
		}
		tb.expectForward(t, syn(40000), xdpTX, 1)
		if e, ok := tb.ctEntry(t, syn(40000)); !ok || e.Packets != 1 || e.FirstSeen < before {
			t.Errorf("after a new SYN halb_ct holds %+v (present %v), want 1 packet first seen at %d s or later", e, ok, before)
		}
	})

	t.Run("conntrack counts only backends of the packet's service", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.backend(t, 5, "198.51.100.15", tb.halb1)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		tb.expectForward(t, syn(40000), xdpTX, 1)

		// Backend 1 leaves web4, and its id now names a backend of
		// service 2: the flow conntrack remembers for it goes by
		// web4's table instead.
		tb.table(t, 1, 5)
		tb.table(t, 2, 1)
		tb.expectForward(t, ack(40000), xdpRedirect, 5)
		if got, ok := tb.conntrack(t, ack(40000)); !ok || got != 5 {
			t.Errorf("conntrack holds backend %d (present %v), want 5", got, ok)
		}
		tb.wantBackendStats(t, 5, stats(1, 1))
		tb.wantDrops(t, nil)
	})

	// A flow conntrack knows reaches its service through its backend's
	// service id; that way must close with the service.
	t.Run("conntrack leads to a service only while it is there", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.backend(t, 5, "198.51.100.15", tb.halb1)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		tb.expectForward(t, syn(40000), xdpTX, 1)
		tb.expectForward(t, ack(40000), xdpTX, 1)

		// The service goes, its backend stays: the flow's packets go
		// to the kernel.
		if err := tb.lb.deleteService(web4); err != nil {
			t.Fatal(err)
		}
		in := ack(40000).frame(t, routerMAC, halb0MAC)
		if action, out := tb.run(t, in); action != xdpPass || !bytes.Equal(out, in) {
			t.Fatalf("ack of a deleted service's flow: %v, want XDP_PASS untouched", action)
		}

		// It comes back under another id, with another table: the
		// backend's id no longer leads to it, and the flow takes the
		// new table.
		tb.service(t, web4, Service{ID: 2, Forward: ForwardDR})
		tb.table(t, 2, 5)
		tb.expectForward(t, ack(40000), xdpRedirect, 5)
		tb.wantServiceStats(t, 1, stats(2, 1))
		tb.wantServiceStats(t, 2, stats(1, 1))

		// Back to id 1: conntrack names backend 5, of id 2, which no
		// longer leads to the service; id 1's table decides.
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.expectForward(t, ack(40000), xdpTX, 1)
		tb.expectForward(t, ack(40000), xdpTX, 1)
		tb.wantServiceStats(t, 1, stats(4, 2))
		tb.wantDrops(t, nil)
	})

	t.Run("a removed backend's flows are scheduled again", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.backend(t, 5, "198.51.100.15", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		tb.expectForward(t, syn(40000), xdpTX, 1)

		if err := tb.lb.deleteBackend(1); err != nil {
			t.Fatal(err)
		}
		tb.expectDrop(t, ack(40000)) // the table still names backend 1
		tb.table(t, 1, 5)
		tb.expectForward(t, ack(40000), xdpTX, 5)

		tb.wantServiceStats(t, 1, stats(3, 2))
		tb.wantBackendStats(t, 5, stats(1, 1))
		tb.wantDrops(t, map[DropReason]uint64{DropNoBackend: 1})
	})

	t.Run("a drained backend keeps its flows and gets no new ones", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 1)
		tb.expectForward(t, syn(40000), xdpTX, 1)

		tb.table(t, 1) // weight 0: out of the table, still a backend
		tb.expectForward(t, ack(40000), xdpTX, 1)
		tb.expectDrop(t, syn(40001))

		tb.wantBackendStats(t, 1, stats(2, 1))
		tb.wantDrops(t, map[DropReason]uint64{DropNoBackend: 1})
	})

	t.Run("no table or an empty one drops as no-backend", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.expectDrop(t, syn(40000))
		tb.table(t, 1)
		tb.expectDrop(t, syn(40001))
		tb.table(t, 1, 1)
		if err := tb.lb.deleteMaglevTable(1); err != nil {
			t.Fatal(err)
		}
		tb.expectDrop(t, syn(40002))

		tb.wantServiceStats(t, 1, stats(3, 0))
		tb.wantBackendStats(t, 1, Stats{})
		tb.wantDrops(t, map[DropReason]uint64{DropNoBackend: 3})
	})

	t.Run("persistence sends all of a client's flows to one backend", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 1, "198.51.100.11", tb.halb0)
		tb.backend(t, 5, "198.51.100.15", tb.halb0)
		tb.backend(t, 6, "198.51.100.16", tb.halb0)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR, Persistence: true})
		table := tb.table(t, 1, 1, 5, 6)

		chosen := map[uint32]int{}
		for host := byte(1); host <= 8; host++ {
			client := netip.AddrFrom4([4]byte{203, 0, 113, host})
			want := table[flowHash(ap(client, 0), ap(vip4, 80), 0, true)%uint32(len(table))]
			for port := uint16(40000); port < 40003; port++ {
				tb.expectForward(t, packet{src: ap(client, port), dst: ap(vip4, 80)}, xdpTX, want)
			}
			chosen[want]++
		}
		if len(chosen) < 2 {
			t.Errorf("8 clients all hashed to one backend: %v", chosen)
		}
		tb.wantServiceStats(t, 1, stats(24, 24))
	})

	t.Run("a backend behind an interface that is not a tx port drops as no-tx-port", func(t *testing.T) {
		tb := newTestbed(t, Options{}).on(prog)
		tb.backend(t, 7, "198.51.100.17", tb.halb2)
		tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
		tb.table(t, 1, 7)
		action, _ := tb.run(t, syn(40000).frame(t, routerMAC, halb0MAC))
		if action != xdpDrop {
			t.Errorf("action %v, want XDP_DROP", action)
		}
		tb.wantBackendStats(t, 7, Stats{})
		tb.wantServiceStats(t, 1, stats(1, 0)) // the service's own: no backend took it
		tb.wantDrops(t, map[DropReason]uint64{DropNoTxPort: 1})
	})

	t.Run("a forward mode the program lacks drops as unsupported", func(t *testing.T) {
		tb := newTestbed(t, Options{})
		tb.on(prog)
		lacking := Forward(halbForwardModeFORWARD_FULLNAT + 1) // a mode of a newer halb
		err := tb.lb.putService(web4, Service{ID: 1, Forward: lacking})
		if !errors.Is(err, service.ErrUnsupported) {
			t.Errorf("putService with forward %s: %v, want ErrUnsupported", lacking, err)
		}
		// Written behind the loader's back, as a newer halb would.
		k, err := serviceKey(web4)
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.lb.objs.HalbServices.Put(&k, &halbService{Id: 1, Forward: halbForwardMode(lacking)}); err != nil {
			t.Fatal(err)
		}
		tb.expectDrop(t, syn(40000))
		tb.wantDrops(t, map[DropReason]uint64{DropUnsupported: 1})
	})
}

// TestLBWriters covers what the map writers refuse and the VIP set they
// keep beside the services.
func TestLBWriters(t *testing.T) {
	tb := newTestbed(t, Options{})
	lb := tb.lb

	for _, c := range []struct {
		key service.Key
		svc Service
	}{
		{service.Key{VIP: netip.Addr{}, Port: 80, Proto: service.TCP}, Service{ID: 1, Forward: ForwardDR}},
		{service.Key{VIP: vip4, Port: 0, Proto: service.TCP}, Service{ID: 1, Forward: ForwardDR}},
		{service.Key{VIP: vip4, Port: 80, Proto: service.Protocol(1)}, Service{ID: 1, Forward: ForwardDR}},
		{service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, Service{ID: lb.maxServices(), Forward: ForwardDR}},
		{service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, Service{ID: 1}},
	} {
		if err := lb.putService(c.key, c.svc); err == nil {
			t.Errorf("putService(%s, %+v) succeeded", c.key, c.svc)
		}
	}
	for _, c := range []struct {
		id uint32
		b  Backend
	}{
		{0, Backend{Addr: vip4, MAC: halb1MAC, SrcMAC: halb0MAC, Ifindex: tb.halb0}},
		{lb.maxBackends(), Backend{Addr: vip4, MAC: halb1MAC, SrcMAC: halb0MAC, Ifindex: tb.halb0}},
		{1, Backend{Addr: vip4, MAC: halb1MAC[:4], SrcMAC: halb0MAC, Ifindex: tb.halb0}},
		{1, Backend{Addr: vip4, MAC: halb1MAC, SrcMAC: halb0MAC}},
		{1, Backend{MAC: halb1MAC, SrcMAC: halb0MAC, Ifindex: tb.halb0}},
	} {
		if err := lb.putBackend(c.id, c.b); err == nil {
			t.Errorf("putBackend(%d, %+v) succeeded", c.id, c.b)
		}
	}
	if err := lb.setMaglevTable(1, make([]uint32, 251)); err == nil {
		t.Errorf("setMaglevTable with 251 slots succeeded; the table size is %d", lb.maglevTableSize())
	}

	vipCount := func(a netip.Addr) uint32 {
		t.Helper()
		addr, family, err := addrOf(a)
		if err != nil {
			t.Fatal(err)
		}
		var v halbVip
		err = lb.objs.HalbVips.Lookup(&halbVipKey{Addr: addr, Family: family}, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return v.Services
	}
	// An IPv4-mapped IPv6 VIP is the IPv4 VIP.
	mapped := netip.AddrFrom16(vip4.As16())
	keys := []service.Key{{VIP: vip4, Port: 80, Proto: service.TCP}, {VIP: mapped, Port: 443, Proto: service.TCP}, {VIP: vip6, Port: 80, Proto: service.TCP}}
	for i, k := range keys {
		tb.service(t, k, Service{ID: uint32(i), Forward: ForwardDR})
	}
	if n4, n6 := vipCount(vip4), vipCount(vip6); n4 != 2 || n6 != 1 {
		t.Errorf("halb_vips counts %d services on %s and %d on %s, want 2 and 1", n4, vip4, n6, vip6)
	}
	// halb_vip_last names the VIPs' last bytes, and only those.
	lastBytes := func() []int {
		t.Helper()
		var last [256]uint8
		if err := lb.objs.HalbVipLast.Get(&last); err != nil {
			t.Fatal(err)
		}
		var set []int
		for b, v := range last {
			if v != 0 {
				set = append(set, b)
			}
		}
		return set
	}
	if got, want := lastBytes(), []int{int(vip6.As16()[15]), int(vip4.As16()[15])}; !slices.Equal(got, want) {
		t.Errorf("halb_vip_last names last bytes %v, want %v", got, want)
	}
	// The counts kept in Go as services are written are what a walk of
	// the maps finds.
	kept := lb.vips
	if err := lb.readVIPs(); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(kept.services, lb.vips.services) || !maps.Equal(kept.held, lb.vips.held) || kept.last != lb.vips.last {
		t.Errorf("vip book kept %+v, a walk of the maps finds %+v", kept, lb.vips)
	}
	for i, k := range keys {
		if err := lb.deleteService(k); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if n := vipCount(vip4); n != 1 {
				t.Errorf("halb_vips counts %d services on %s after one went, want 1", n, vip4)
			}
		}
	}
	if n4, n6 := vipCount(vip4), vipCount(vip6); n4 != 0 || n6 != 0 {
		t.Errorf("halb_vips still counts %d services on %s and %d on %s", n4, vip4, n6, vip6)
	}
	if got := lastBytes(); len(got) != 0 {
		t.Errorf("halb_vip_last still names last bytes %v with no VIP left", got)
	}
}

// conntrack returns the backend halb_ct holds for p's flow.
func (tb *testbed) conntrack(t *testing.T, p packet) (uint32, bool) {
	t.Helper()
	e, ok := tb.ctEntry(t, p)
	return e.BackendId, ok
}

// ctEntry returns what halb_ct holds for p's flow.
func (tb *testbed) ctEntry(t *testing.T, p packet) (halbCtEntry, bool) {
	t.Helper()
	key := flowKey(t, p)
	var e halbCtEntry
	err := tb.lb.objs.HalbCt.Lookup(&key, &e)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return e, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return e, true
}

// monotonicNow is the clock halb_ct's first_seen reads, in seconds.
func monotonicNow(t *testing.T) uint32 {
	t.Helper()
	now, err := monotonicSeconds()
	if err != nil {
		t.Fatal(err)
	}
	return uint32(now)
}

// flowKey is the halb_ct key of p's flow.
func flowKey(t *testing.T, p packet) halbFlow {
	t.Helper()
	saddr, family, err := addrOf(p.src.Addr())
	if err != nil {
		t.Fatal(err)
	}
	daddr, _, err := addrOf(p.dst.Addr())
	if err != nil {
		t.Fatal(err)
	}
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	return halbFlow{
		Saddr: saddr, Daddr: daddr, Sport: p.src.Port(), Dport: p.dst.Port(),
		Proto: uint8(proto), Family: family,
	}
}

// wantServiceStats wants service id's counters, as Datapath.Status adds
// them up: its own (what no backend took) and each of its backends'
// (every backend whose record names the service).
func (tb *testbed) wantServiceStats(t *testing.T, id uint32, want Stats) {
	t.Helper()
	got, err := tb.lb.unservedStats(id)
	if err != nil {
		t.Fatal(err)
	}
	var rec halbBackend
	for be := uint32(1); be < tb.lb.maxBackends(); be++ {
		if err := tb.lb.objs.HalbBackends.Lookup(be, &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE == 0 || rec.Service != id {
			continue
		}
		s, err := tb.lb.backendStats(be)
		if err != nil {
			t.Fatal(err)
		}
		got = got.plus(s)
	}
	if got != want {
		t.Errorf("service %d counters %+v, want %+v", id, got, want)
	}
}

func (tb *testbed) wantBackendStats(t *testing.T, id uint32, want Stats) {
	t.Helper()
	got, err := tb.lb.backendStats(id)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("backend %d counters %+v, want %+v", id, got, want)
	}
}

// wantDrops checks every drop counter: those missing from want are 0.
func (tb *testbed) wantDrops(t *testing.T, want map[DropReason]uint64) {
	t.Helper()
	got, err := tb.lb.drops()
	wantCounters(t, "drops", got, err, want)
}

// wantCounters checks every counter of got (drops, events), read with
// err: those missing from want are 0.
func wantCounters[K interface {
	comparable
	fmt.Stringer
}](t *testing.T, what string, got map[K]uint64, err error, want map[K]uint64) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range got {
		if n != want[k] {
			t.Errorf("%s %s: %d, want %d", what, k, n, want[k])
		}
	}
}

// TestLoad checks what bpftool users see: every map and the program carry
// their names and BTF (a map whose BTF the kernel refuses is created
// without it, silently, and bpftool then dumps hex), and the options size
// the maps.
func TestLoad(t *testing.T) {
	netnstest.Require(t)
	lb, err := loadLB(Options{MaglevTableSize: 251, ConntrackEntries: 1024, MaxBackends: 100_001})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	// datapath.max_backends sizes every map indexed by backend id alike.
	for name, m := range map[string]*ebpf.Map{
		halbMapHalbBackends: lb.objs.HalbBackends, halbMapHalbBackendStats: lb.objs.HalbBackendStats, halbMapHalbNexthops: lb.objs.HalbNexthops,
	} {
		if m.MaxEntries() != 100_001 {
			t.Errorf("%s holds %d entries, want max_backends 100001", name, m.MaxEntries())
		}
	}
	if lb.maxBackends() != 100_001 {
		t.Errorf("maxBackends() = %d, want 100001", lb.maxBackends())
	}
	if err := lb.putBackend(100_000, Backend{Addr: netip.MustParseAddr("198.51.100.11"), SrcMAC: routerMAC, Ifindex: 1, Service: 1}); err != nil {
		t.Errorf("the last backend id: %v", err)
	}

	maps := reflect.ValueOf(lb.objs.halbMaps)
	for i := range maps.NumField() {
		name := maps.Type().Field(i).Tag.Get("ebpf")
		info, err := maps.Field(i).Interface().(*ebpf.Map).Info()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// The kernel keeps 15 characters of a name.
		if want := name[:min(len(name), 15)]; info.Name != want {
			t.Errorf("map %s is named %q, want %q", name, info.Name, want)
		}
		// Maps of maps and of devices hold file descriptors and
		// ifindexes, and the kernel takes no BTF for them.
		_, hasBTF := info.BTFID()
		if !hasBTF && name != halbMapHalbMaglev && name != halbMapHalbTxPorts {
			t.Errorf("map %s has no BTF", name)
		}
	}
	for name, prog := range map[string]*ebpf.Program{halbProgHalbXdpLb: lb.xdpProgram(), halbProgHalbTcLb: lb.tcProgram()} {
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := info.BTFID(); info.Name != name || !ok {
			t.Errorf("program is named %q (BTF %v), want %q with BTF", info.Name, ok, name)
		}
	}

	if got := lb.objs.HalbCt.MaxEntries(); got != 1024 {
		t.Errorf("halb_ct holds %d entries, want 1024", got)
	}
	var m uint32
	if err := lb.objs.HalbMaglevSize.Get(&m); err != nil || m != 251 || lb.maglevTableSize() != 251 {
		t.Errorf("halb_maglev_size is %d (%v) and maglevTableSize %d, want 251", m, err, lb.maglevTableSize())
	}
	if err := lb.setMaglevTable(0, make([]uint32, 251)); err != nil {
		t.Errorf("setMaglevTable with 251 slots: %v", err)
	}
}
