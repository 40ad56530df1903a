package loader

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// The testbed for forward: nat is tunNet's network (tun_linux_test.go),
// with a route to client6 through halb1's gateway; client4 is behind it
// already, on a route with an MTU of 500. Backends listen on ports other
// than their services'.
var (
	natWeb4 = service.Key{VIP: vip4, Port: 80, Proto: service.TCP}
	natDNS4 = service.Key{VIP: vip4, Port: 53, Proto: service.UDP}
	natWeb6 = service.Key{VIP: vip6, Port: 80, Proto: service.TCP}
	natDNS6 = service.Key{VIP: vip6, Port: 53, Proto: service.UDP}
	natNoNb = service.Key{VIP: vip4, Port: 81, Proto: service.TCP}

	natBe1 = ap(onLink4, 8080)  // web4, on halb0's link
	natBe2 = ap(routed4, 5353)  // dns4, behind halb1's gateway
	natBe3 = ap(routed6, 8080)  // web6, behind halb1's gateway
	natBe4 = ap(onLink6, 5353)  // dns6, on halb0's link
	natBe5 = ap(noNeigh4, 8081) // no neighbour entry

	farClient = netip.MustParseAddr("198.51.100.200") // behind noNeigh4
)

// natNet is tunNet with the NAT services above, each with its one
// backend and its reply entry, as the Datapath writes them.
func (tb *testbed) natNet(t *testing.T) {
	t.Helper()
	tb.tunNet(t)
	h := tb.ns.Netlink(t)
	_, dst, _ := net.ParseCIDR("2001:db8:ff::/64")
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: gw6.AsSlice()}); err != nil {
		t.Fatalf("route to client6: %v", err)
	}
	// Clients behind a gateway whose MAC the neighbour table lacks.
	_, dst, _ = net.ParseCIDR("198.51.100.128/25")
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: noNeigh4.AsSlice()}); err != nil {
		t.Fatalf("route to the clients behind %s: %v", noNeigh4, err)
	}
	// The replies of the backends behind halb1 come in on halb1,
	// addressed to its MAC.
	if err := tb.lb.setLocalMACs(tb.halb1, []LocalMAC{{MAC: halb1MAC, Via: tb.halb1}}); err != nil {
		t.Fatal(err)
	}
	for i, s := range []struct {
		key     service.Key
		backend netip.AddrPort
		src     netip.Addr
		ifindex int
	}{
		{natWeb4, natBe1, tunSrc4, tb.halb0},
		{natDNS4, natBe2, tunSrc4b, tb.halb1},
		{natWeb6, natBe3, tunSrc6b, tb.halb1},
		{natDNS6, natBe4, tunSrc6, tb.halb0},
		{natNoNb, natBe5, tunSrc4, tb.halb0},
	} {
		id := uint32(i + 1)
		tb.natBackend(t, id, s.backend, s.src, s.ifindex)
		tb.service(t, s.key, Service{ID: id, Forward: ForwardNAT})
		tb.table(t, id, id)
		r := natReply{Backend: s.backend, Proto: s.key.Proto, VIP: ap(s.key.VIP, s.key.Port), Service: id, BackendID: id}
		if _, err := tb.lb.putNATReply(r); err != nil {
			t.Fatal(err)
		}
	}
}

// arrive runs frame on the interface whose MAC it is addressed to:
// halb1 for halb1MAC, else halb0. A backend's reply comes in on the
// interface that reaches the backend, a client's packet on halb0.
func (tb *testbed) arrive(t *testing.T, frame []byte) (xdpAction, []byte) {
	t.Helper()
	if bytes.Equal(frame[:6], halb1MAC) {
		return tb.runOn(t, tb.halb1, frame)
	}
	return tb.run(t, frame)
}

// natBackend adds NAT backend id at addr, from the balancer's src, whose
// next hop is behind ifindex: the program finds the MACs itself.
func (tb *testbed) natBackend(t *testing.T, id uint32, addr netip.AddrPort, src netip.Addr, ifindex int) {
	t.Helper()
	tb.tunBackend(t, id, addr.Addr(), src, ifindex)
	b := tb.backends[id]
	b.Port = addr.Port()
	if err := tb.lb.putBackend(id, b); err != nil {
		t.Fatal(err)
	}
	tb.backends[id] = b
}

// icmpError is an ICMP error of kind from src to dst about sent, whose
// first quote bytes of its IP packet it quotes (0: all), in a frame from
// srcMAC to dstMAC: "fragmentation needed" with an MTU of 1400 or "port
// unreachable" for IPv4 (RFC 792, RFC 1191 §4), "packet too big" or
// "port unreachable" for IPv6 (RFC 4443 §3.2, §3.1).
func icmpError(t testing.TB, tooBig bool, src, dst netip.Addr, sent packet, quote int, srcMAC, dstMAC net.HardwareAddr) []byte {
	t.Helper()
	quoted := sent.frame(t, srcMAC, dstMAC)[14:]
	if quote > 0 {
		quoted = quoted[:quote]
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	if dst.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		code := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)
		var mtu uint16
		if tooBig {
			code, mtu = layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded), 1400
		}
		return serialize(t, eth, ip, &layers.ICMPv4{TypeCode: code, Seq: mtu}, gopacket.Payload(quoted))
	}
	eth.EthernetType = layers.EthernetTypeIPv6
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable)}
	word := []byte{0, 0, 0, 0}
	if tooBig {
		icmp.TypeCode, word = layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0), []byte{0, 0, 0x05, 0x78}
	}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth, ip, icmp, gopacket.Payload(append(word, quoted...)))
}

// zeroUDPChecksum is frame, an untagged IPv4 UDP frame, sent without a
// UDP checksum (RFC 768 allows it).
func zeroUDPChecksum(frame []byte) []byte {
	out := bytes.Clone(frame)
	ihl := int(out[14]&0x0f) * 4
	binary.BigEndian.PutUint16(out[14+ihl+6:], 0)
	return out
}

// TestNAT is the specification of forward: nat in halb_xdp_lb and
// halb_tc_lb: each frame in and the frame that comes out, whole, with
// every checksum verified: clients' packets to their backends' addresses
// and ports, the backends' replies back to the VIPs' and the services'
// ports, ICMP errors both ways with the packets they quote, and the
// packets that must stay as they are.
func TestNAT(t *testing.T) { forPrograms(t, testNAT) }

func testNAT(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.natNet(t)
	be1MAC := onLink4MAC
	be4MAC := onLink6MAC
	udp := layers.IPProtocolUDP
	tagged := packet{src: ap(client4, 40003), dst: ap(vip4, 80), vlans: []uint16{100}}
	bigReply := packet{src: natBe1, dst: ap(client4, 40004), ack: true, data: bytes.Repeat([]byte{'x'}, 600)}
	dns := packet{src: ap(client4, 40002), dst: ap(vip4, 53), proto: udp}

	type outcome struct {
		action xdpAction
		out    []byte // the frame that leaves; nil: the frame as it came
		drop   DropReason
		events []Event
	}
	cases := []struct {
		name    string
		in      []byte
		xdp, tc outcome // tc: when it differs
		tcSame  bool
		reply   uint32 // the backend whose reply this is
		backend uint32 // the backend this goes to
	}{
		// Client to backend: the destination becomes the backend's
		// address and port, the MACs the next hop's.
		{name: "ipv4 tcp to a backend on the ingress link, port rewritten",
			in:  packet{src: ap(client4, 40000), dst: ap(vip4, 80)}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpTX, out: packet{src: ap(client4, 40000), dst: natBe1}.frame(t, halb0MAC, be1MAC)}, tcSame: true, backend: 1},
		{name: "ipv4 udp to a routed backend behind another interface",
			in:  dns.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: packet{src: ap(client4, 40002), dst: natBe2, proto: udp}.frame(t, halb1MAC, gw4MAC)}, tcSame: true, backend: 2},
		{name: "ipv4 udp without a checksum keeps none",
			in:  zeroUDPChecksum(dns.frame(t, routerMAC, halb0MAC)),
			xdp: outcome{action: xdpRedirect, out: zeroUDPChecksum(packet{src: ap(client4, 40002), dst: natBe2, proto: udp}.frame(t, halb1MAC, gw4MAC))}, tcSame: true, backend: 2},
		{name: "ipv6 tcp to a routed backend",
			in:  packet{src: ap(client6, 40000), dst: ap(vip6, 80)}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: packet{src: ap(client6, 40000), dst: natBe3}.frame(t, halb1MAC, gw6MAC)}, tcSame: true, backend: 3},
		{name: "ipv6 udp to a backend on the ingress link",
			in:  packet{src: ap(client6, 40001), dst: ap(vip6, 53), proto: udp}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpTX, out: packet{src: ap(client6, 40001), dst: natBe4, proto: udp}.frame(t, halb0MAC, be4MAC)}, tcSame: true, backend: 4},
		// The FIB's next hop is untagged. tc sees a tag in the frame
		// only when the kernel did not take it into the skb's metadata.
		{name: "802.1Q tagged ipv4 goes out untagged",
			in:  tagged.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpTX, out: packet{src: ap(client4, 40003), dst: natBe1}.frame(t, halb0MAC, be1MAC)}, backend: 1,
			tc: outcome{action: xdpDrop, drop: DropEncap}},
		{name: "a backend without a neighbour entry",
			in:  packet{src: ap(client4, 40000), dst: ap(vip4, 81)}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpDrop, drop: DropNoNeigh}, backend: 5,
			tc: outcome{action: xdpRedirect, out: packet{src: ap(client4, 40000), dst: natBe5}.frame(t, routerMAC, halb0MAC), events: []Event{EventNeighResolve}}},

		// Backend to client: the source becomes the VIP's and the
		// service's port, whichever interface the reply goes out of.
		{name: "ipv4 tcp reply back from the VIP", reply: 1,
			in:  packet{src: natBe1, dst: ap(client4, 40000), ack: true}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: packet{src: ap(vip4, 80), dst: ap(client4, 40000), ack: true}.frame(t, halb1MAC, gw4MAC)}, tcSame: true},
		// A reply that goes back out of the interface it came in on
		// (halb1) is sent with XDP_TX.
		{name: "ipv4 udp reply", reply: 2,
			in:  packet{src: natBe2, dst: ap(client4, 40002), proto: udp}.frame(t, gw4MAC, halb1MAC),
			xdp: outcome{action: xdpTX, out: packet{src: ap(vip4, 53), dst: ap(client4, 40002), proto: udp}.frame(t, halb1MAC, gw4MAC)}, tcSame: true},
		{name: "ipv4 udp reply without a checksum keeps none", reply: 2,
			in:  zeroUDPChecksum(packet{src: natBe2, dst: ap(client4, 40002), proto: udp}.frame(t, gw4MAC, halb1MAC)),
			xdp: outcome{action: xdpTX, out: zeroUDPChecksum(packet{src: ap(vip4, 53), dst: ap(client4, 40002), proto: udp}.frame(t, halb1MAC, gw4MAC))}, tcSame: true},
		{name: "ipv6 tcp reply", reply: 3,
			in:  packet{src: natBe3, dst: ap(client6, 40000), ack: true}.frame(t, gw6MAC, halb1MAC),
			xdp: outcome{action: xdpTX, out: packet{src: ap(vip6, 80), dst: ap(client6, 40000), ack: true}.frame(t, halb1MAC, gw6MAC)}, tcSame: true},
		{name: "ipv6 udp reply", reply: 4,
			in:  packet{src: natBe4, dst: ap(client6, 40001), proto: udp}.frame(t, be4MAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: packet{src: ap(vip6, 53), dst: ap(client6, 40001), proto: udp}.frame(t, halb1MAC, gw6MAC)}, tcSame: true},
		// XDP leaves the next hop for the loader to have resolved
		// (TestNATNeighWanted); tc hands the reply to the kernel's
		// neighbour layer, the MACs left for it to fill.
		{name: "a reply to a client whose next hop has no neighbour entry", reply: 1,
			in:  packet{src: natBe1, dst: ap(farClient, 40000), ack: true}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpDrop, drop: DropReplyNoNeigh},
			tc:  outcome{action: xdpRedirect, out: packet{src: ap(vip4, 80), dst: ap(farClient, 40000), ack: true}.frame(t, be1MAC, halb0MAC), events: []Event{EventNeighResolve}}},
		{name: "a reply too big for the route to its client",
			in:  bigReply.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpDrop, drop: DropReplyTooBig}, tcSame: true},

		// ICMP errors about NAT flows, with the packets they quote.
		{name: "fragmentation needed about a reply goes to the backend", backend: 1,
			in: icmpError(t, true, router4, vip4, packet{src: ap(vip4, 80), dst: ap(client4, 40000), ack: true}, 0, routerMAC, halb0MAC),
			xdp: outcome{action: xdpTX, out: icmpError(t, true, router4, onLink4, packet{src: natBe1, dst: ap(client4, 40000), ack: true}, 0, halb0MAC, be1MAC),
				events: []Event{EventICMPTooBig, EventNATICMP}}, tcSame: true},
		{name: "an error quoting 8 bytes of tcp rewrites the ports only", backend: 1,
			in: icmpError(t, true, router4, vip4, packet{src: ap(vip4, 80), dst: ap(client4, 40000), ack: true}, 28, routerMAC, halb0MAC),
			xdp: outcome{action: xdpTX, out: icmpError(t, true, router4, onLink4, packet{src: natBe1, dst: ap(client4, 40000), ack: true}, 28, halb0MAC, be1MAC),
				events: []Event{EventICMPTooBig, EventNATICMP}}, tcSame: true},
		{name: "ipv6 packet too big about a reply goes to the backend", backend: 3,
			in: icmpError(t, true, router6, vip6, packet{src: ap(vip6, 80), dst: ap(client6, 40000), ack: true}, 0, routerMAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: icmpError(t, true, router6, routed6, packet{src: natBe3, dst: ap(client6, 40000), ack: true}, 0, halb1MAC, gw6MAC),
				events: []Event{EventICMPTooBig, EventNATICMP}}, tcSame: true},
		{name: "a client's port unreachable about a udp reply goes to the backend", backend: 2,
			in: icmpError(t, false, client4, vip4, packet{src: ap(vip4, 53), dst: ap(client4, 40002), proto: udp}, 0, routerMAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: icmpError(t, false, client4, routed4, packet{src: natBe2, dst: ap(client4, 40002), proto: udp}, 0, halb1MAC, gw4MAC),
				events: []Event{EventNATICMP}}, tcSame: true},
		{name: "a backend's port unreachable goes back from the VIP", reply: 2,
			in: icmpError(t, false, routed4, client4, packet{src: ap(client4, 40002), dst: natBe2, proto: udp}, 0, gw4MAC, halb1MAC),
			xdp: outcome{action: xdpTX, out: icmpError(t, false, vip4, client4, packet{src: ap(client4, 40002), dst: ap(vip4, 53), proto: udp}, 0, halb1MAC, gw4MAC),
				events: []Event{EventNATICMP}}, tcSame: true},
		{name: "ipv6 port unreachable from a backend", reply: 4,
			in: icmpError(t, false, onLink6, client6, packet{src: ap(client6, 40001), dst: natBe4, proto: udp}, 0, be4MAC, halb0MAC),
			xdp: outcome{action: xdpRedirect, out: icmpError(t, false, vip6, client6, packet{src: ap(client6, 40001), dst: ap(vip6, 53), proto: udp}, 0, halb1MAC, gw6MAC),
				events: []Event{EventNATICMP}}, tcSame: true},
		// A router between the backend and the balancer keeps its own
		// address; only the packet it quotes is translated.
		{name: "a router's packet too big about a client's packet to a backend", reply: 3,
			in: icmpError(t, true, router6, client6, packet{src: ap(client6, 40000), dst: natBe3, ack: true}, 0, gw6MAC, halb1MAC),
			xdp: outcome{action: xdpTX, out: icmpError(t, true, router6, client6, packet{src: ap(client6, 40000), dst: ap(vip6, 80), ack: true}, 0, halb1MAC, gw6MAC),
				events: []Event{EventNATICMP}}, tcSame: true},

		// What stays as it is.
		{name: "a backend's answer to the balancer's own health check",
			in:  packet{src: natBe1, dst: ap(tunSrc4, 45000), ack: true}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpPass}, tcSame: true},
		{name: "ipv6 health check answer",
			in:  packet{src: natBe4, dst: ap(tunSrc6, 45000), proto: udp}.frame(t, be4MAC, halb0MAC),
			xdp: outcome{action: xdpPass}, tcSame: true},
		{name: "a backend's packet from a port no service uses",
			in:  packet{src: ap(onLink4, 22), dst: ap(client4, 40000), ack: true}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpPass}, tcSame: true},
		{name: "udp from a backend's port of a tcp service",
			in:  packet{src: ap(onLink4, 8080), dst: ap(client4, 40000), proto: udp}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpPass}, tcSame: true},
		{name: "a client's packet to an address that is no VIP",
			in:  packet{src: ap(client4, 40000), dst: ap(other4, 80)}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpPass}, tcSame: true},
		{name: "a backend as a client of its own service (hairpin)",
			in:  packet{src: ap(onLink4, 41000), dst: ap(vip4, 80)}.frame(t, be1MAC, halb0MAC),
			xdp: outcome{action: xdpPass, events: []Event{EventNATHairpin}}, tcSame: true},
		{name: "a reply in a frame for another host",
			in:  packet{src: natBe1, dst: ap(client4, 40000), ack: true}.frame(t, be1MAC, otherVMAC),
			xdp: outcome{action: xdpPass, events: []Event{EventOtherHost}}, tcSame: true},

		// A backend's source address and port forged on an interface
		// that does not reach that backend: translated, it would leave
		// from the VIP toward any address the sender chose. It goes to
		// the kernel as it came, counted. The first is a flow whose
		// reply went back above (halb_reply_flows holds it, for halb1).
		{name: "a forged reply of a flow that replied, in on the client side",
			in:  packet{src: natBe2, dst: ap(client4, 40002), proto: udp}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
		{name: "a forged reply toward another address, in on the client side",
			in:  packet{src: natBe2, dst: ap(other4, 7), proto: udp}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
		{name: "a reply of a backend on halb0's link, in on halb1",
			in:  packet{src: natBe1, dst: ap(client4, 40000), ack: true}.frame(t, gw4MAC, halb1MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
		{name: "a forged ipv6 reply, in on the client side",
			in:  packet{src: natBe3, dst: ap(client6, 40000), ack: true}.frame(t, routerMAC, halb0MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
		{name: "an ipv6 reply of a backend on halb0's link, in on halb1",
			in:  packet{src: natBe4, dst: ap(client6, 40001), proto: udp}.frame(t, gw6MAC, halb1MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
		{name: "a forged port unreachable from a backend, in on the client side",
			in:  icmpError(t, false, routed4, client4, packet{src: ap(client4, 40002), dst: natBe2, proto: udp}, 0, routerMAC, halb0MAC),
			xdp: outcome{action: xdpPass, drop: DropNATReplyWrongIf}, tcSame: true},
	}

	wantDrops := map[DropReason]uint64{}
	wantEvents := map[Event]uint64{}
	wantBackends := map[uint32]Stats{}
	wantReplies := map[uint32]Stats{}
	for _, c := range cases {
		o := c.xdp
		if tb.tc && !c.tcSame {
			o = c.tc
		}
		t.Run(c.name, func(t *testing.T) {
			action, out := tb.arrive(t, c.in)
			if action != tb.expect(o.action) {
				t.Errorf("action %v, want %v", action, tb.expect(o.action))
			}
			want := o.out
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\ngot  %x\nwant %x", out, want)
			}
			if o.out != nil {
				verifyChecksums(t, out)
				verifyQuote(t, out)
			}
		})
		if o.action == xdpDrop || o.drop != 0 {
			wantDrops[o.drop]++
		}
		for _, e := range o.events {
			wantEvents[e]++
		}
		if o.action == xdpDrop || o.action == xdpPass {
			continue
		}
		if c.reply != 0 {
			s := wantReplies[c.reply]
			s.Packets, s.Bytes = s.Packets+1, s.Bytes+uint64(len(c.in))
			wantReplies[c.reply] = s
			continue
		}
		s := wantBackends[c.backend]
		s.Packets, s.Bytes = s.Packets+1, s.Bytes+uint64(len(c.in))
		wantBackends[c.backend] = s
	}
	t.Run("next hops wanted", func(t *testing.T) {
		var (
			k    halbReplyHopKey
			v    uint64
			seen []string
		)
		it := tb.lb.objs.HalbNeighWanted.Iterate()
		for it.Next(&k, &v) {
			seen = append(seen, fmt.Sprintf("%s on %d", netip.AddrFrom16(k.Client.Bytes).Unmap(), k.Ifindex))
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		want := []string{fmt.Sprintf("%s on %d", noNeigh4, tb.halb0)}
		if tb.tc {
			want = nil // the kernel's neighbour layer resolves it
		}
		if !slices.Equal(seen, want) {
			t.Errorf("%s holds %v, want %v", halbMapHalbNeighWanted, seen, want)
		}
	})
	t.Run("counters", func(t *testing.T) {
		tb.wantDrops(t, wantDrops)
		tb.wantEvents(t, wantEvents)
		for id := range tb.backends {
			got, err := tb.lb.backendStats(id)
			if err != nil {
				t.Fatal(err)
			}
			got.NewFlows = 0 // counted by TestXDPScheduling
			if got != wantBackends[id] {
				t.Errorf("backend %d counters %+v, want %+v", id, got, wantBackends[id])
			}
			if got, err := tb.lb.replyStats(id); err != nil || got != wantReplies[id] {
				t.Errorf("backend %d reply counters %+v (%v), want %+v", id, got, err, wantReplies[id])
			}
		}
	})
}

// verifyQuote checks the checksums of the packet an ICMP error quotes
// whole: its IPv4 header's, and its TCP or UDP checksum when the quote
// holds the whole segment.
func verifyQuote(t testing.TB, frame []byte) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var quote []byte
	if l, ok := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		quote = l.Payload
	} else if l, ok := pkt.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok && len(l.Payload) > 4 {
		quote = l.Payload[4:]
	}
	if len(quote) == 0 {
		return
	}
	eth := append(bytes.Clone(frame[:12]), 0x08, 0x00)
	if quote[0]>>4 == 6 {
		eth[12], eth[13] = 0x86, 0xdd
	}
	inner := gopacket.NewPacket(append(eth, quote...), layers.LayerTypeEthernet, gopacket.Default)
	if inner.TransportLayer() == nil {
		return // cut short: no checksum to verify
	}
	if ip4, ok := inner.NetworkLayer().(*layers.IPv4); ok && int(ip4.Length) > len(quote) {
		return // the segment is cut short
	}
	verifyChecksums(t, append(eth, quote...))
}

// TestNATReplies checks the book the LB keeps of halb_nat_replies: an
// address's own entry (the hairpin check) and its byte in halb_nat_last
// live while any entry of the address does, and go with the last one;
// so does a full NAT entry's byte in halb_fnat_last.
func TestNATReplies(t *testing.T) {
	tb := newTestbed(t, Options{})
	lb := tb.lb
	web := natReply{Backend: ap(onLink4, 8080), Proto: service.TCP, VIP: ap(vip4, 80), Service: 1, BackendID: 1}
	dns := natReply{Backend: ap(onLink4, 5353), Proto: service.UDP, VIP: ap(vip4, 53), Service: 2, BackendID: 2}
	addrKey := func(a netip.Addr) halbBackendKey {
		_, ak, err := natKeys(ap(a, 0), 0)
		if err != nil {
			t.Fatal(err)
		}
		return ak
	}
	state := func() (entries int, addrHeld bool, lastByte uint8) {
		t.Helper()
		var (
			k halbBackendKey
			v halbNatReply
		)
		it := lb.objs.HalbNatReplies.Iterate()
		for it.Next(&k, &v) {
			if k.Port != 0 {
				entries++
			} else if k == addrKey(onLink4) {
				addrHeld = true
			}
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		var last [256]uint8
		if err := lb.objs.HalbNatLast.Get(&last); err != nil {
			t.Fatal(err)
		}
		return entries, addrHeld, last[onLink4.As4()[3]]
	}
	check := func(wantEntries int, wantHeld bool) {
		t.Helper()
		n, held, last := state()
		if n != wantEntries || held != wantHeld || (last != 0) != wantHeld {
			t.Errorf("%d entries, address held %v, filter byte %d; want %d, %v", n, held, last, wantEntries, wantHeld)
		}
		if got := len(lb.natReplyKeys()); got != wantEntries {
			t.Errorf("book holds %d entries, want %d", got, wantEntries)
		}
	}
	for _, r := range []natReply{web, dns, web} { // the second web writes nothing new
		if _, err := lb.putNATReply(r); err != nil {
			t.Fatal(err)
		}
	}
	check(2, true)
	if err := lb.deleteNATReply(web.Backend, web.Proto); err != nil {
		t.Fatal(err)
	}
	check(1, true)
	if err := lb.deleteNATReply(dns.Backend, dns.Proto); err != nil {
		t.Fatal(err)
	}
	check(0, false)
	if err := lb.deleteNATReply(dns.Backend, dns.Proto); err != nil {
		t.Errorf("deleting an entry that is gone: %v", err)
	}
	if _, err := lb.putNATReply(natReply{Backend: ap(onLink4, 1), Proto: service.TCP, VIP: ap(vip6, 80)}); err == nil {
		t.Error("an IPv4 backend with an IPv6 VIP was written")
	}

	// A full NAT entry's byte in halb_fnat_last: there while the entry
	// is, through a change that keeps it full NAT (its service moved to
	// another port, a new backend id), and gone with it.
	fullByte := func(want uint8) {
		t.Helper()
		var last [256]uint8
		if err := lb.objs.HalbFnatLast.Get(&last); err != nil {
			t.Fatal(err)
		}
		if got := last[onLink4.As4()[3]]; got != want {
			t.Errorf("halb_fnat_last byte of %s: %d, want %d", onLink4, got, want)
		}
	}
	full := natReply{Backend: ap(onLink4, 8443), Proto: service.TCP, VIP: ap(vip4, 443), Service: 3, BackendID: 3, FullNAT: true}
	for _, r := range []natReply{full, {Backend: full.Backend, Proto: full.Proto, VIP: ap(vip4, 444), Service: 4, BackendID: 4, FullNAT: true}} {
		if _, err := lb.putNATReply(r); err != nil {
			t.Fatal(err)
		}
		fullByte(1)
	}
	if err := lb.deleteNATReply(full.Backend, full.Proto); err != nil {
		t.Fatal(err)
	}
	fullByte(0)
	check(0, false)
}

// startNATDatapath starts a Datapath in XDP mode on newDPBench's
// balancer, forwarding on halb0, as NAT's FIB lookups need.
func startNATDatapath(t *testing.T) *Datapath {
	t.Helper()
	b := newDPBench(t)
	err := b.lb.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/halb0/forwarding", []byte("1"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.start(t, b.cfg, config.ModeXDP)
}

// TestDatapathNAT is forward: nat through Apply: NAT backends are
// written as routed ones (the balancer's source toward them, no MAC),
// with their own ports, and halb_nat_replies holds each one's way back,
// derived from the services alone; a backend address, port and protocol
// in two NAT services is an error, and a service that leaves takes its
// entries with it.
func TestDatapathNAT(t *testing.T) {
	dp := startNATDatapath(t)
	ctx := context.Background()
	nat := service.Service{Name: "nat", Key: web, Scheduler: "mh", Forward: service.NAT,
		Backends: []service.Backend{{Addr: be11, Port: 8080, Weight: 1}, {Addr: be12, Port: 8080, Weight: 1}}}
	alt := web
	alt.Port = 81
	shared := service.Service{Name: "shared", Key: alt, Scheduler: "mh", Forward: service.NAT,
		Backends: []service.Backend{{Addr: be11, Port: 8080, Weight: 1}, {Addr: be13, Port: 9090, Weight: 1}}}

	err := dp.Apply(ctx, []service.Service{nat, shared})
	if err == nil || !strings.Contains(err.Error(), "192.0.2.11:8080/tcp is a backend of the NAT service nat") {
		t.Errorf("Apply with a backend in two NAT services: %v, want an error that names it", err)
	}
	s := waitLive(t, dp, web, 2)
	src := netip.MustParseAddr("192.0.2.1")
	for _, a := range []netip.Addr{be11, be12} {
		got := backendOf(s, a)
		if got.Addr.Port() != 8080 || got.TunnelSrc != src || got.MAC != nil || got.Interface != "halb0" {
			t.Errorf("nat backend %s: %+v, want port 8080 on halb0 from %s without a MAC", a, got, src)
		}
	}
	want := map[natReplyKey]natReply{}
	for _, x := range []struct {
		svc     service.Service
		backend netip.AddrPort
	}{
		{nat, ap(be11, 8080)}, {nat, ap(be12, 8080)}, {shared, ap(be13, 9090)},
	} {
		st := waitLive(t, dp, x.svc.Key, len(x.svc.Backends))
		want[natReplyKey{x.backend, service.TCP}] = natReply{Backend: x.backend, Proto: service.TCP,
			VIP: ap(x.svc.Key.VIP, x.svc.Key.Port), Service: st.ID, BackendID: backendOf(st, x.backend.Addr()).ID}
	}
	if got := natEntries(t, dp.lb); !maps.Equal(got, want) {
		t.Errorf("halb_nat_replies holds %v, want %v", got, want)
	}
	wantReportedReplies(t, dp, want)

	// The services leave: so do their entries and the filter's bytes.
	if err := dp.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := natEntries(t, dp.lb); len(got) != 0 {
		t.Errorf("halb_nat_replies holds %v after the NAT services left", got)
	}
	var last [256]uint8
	if err := dp.lb.objs.HalbNatLast.Get(&last); err != nil || last != ([256]uint8{}) {
		t.Errorf("halb_nat_last after the NAT services left: %v (%v), want all zeros", last, err)
	}
}

// TestDatapathNATBackendMoves: a reload that moves a backend address and
// port from one NAT service to another (an operator's move, one Apply)
// is no error, and leaves its halb_nat_replies entry naming the service
// it moved to (its VIP, port, id and the backend's new id), whichever of
// the two comes first in key order.
func TestDatapathNATBackendMoves(t *testing.T) {
	dp := startNATDatapath(t)
	ctx := context.Background()
	low, high := web, web
	high.Port = 81
	moved := service.Backend{Addr: be11, Port: 8080, Weight: 1}
	stay := func(port uint16) service.Backend { return service.Backend{Addr: be12, Port: port, Weight: 1} }
	nat := func(name string, key service.Key, bes ...service.Backend) service.Service {
		return service.Service{Name: name, Key: key, Scheduler: "mh", Forward: service.NAT, Backends: bes}
	}
	for _, step := range []struct {
		what     string
		services []service.Service
		owner    service.Key
	}{
		{"in the first", []service.Service{nat("low", low, moved, stay(9000)), nat("high", high, stay(9001))}, low},
		{"moved to the second", []service.Service{nat("low", low, stay(9000)), nat("high", high, moved, stay(9001))}, high},
		{"moved back", []service.Service{nat("low", low, moved, stay(9000)), nat("high", high, stay(9001))}, low},
	} {
		if err := dp.Apply(ctx, step.services); err != nil {
			t.Fatalf("%s: Apply: %v", step.what, err)
		}
		st := waitLive(t, dp, step.owner, 2)
		want := natReply{Backend: ap(be11, 8080), Proto: service.TCP, VIP: ap(step.owner.VIP, step.owner.Port),
			Service: st.ID, BackendID: backendOf(st, be11).ID}
		got, ok := natEntries(t, dp.lb)[natReplyKey{ap(be11, 8080), service.TCP}]
		if !ok || got != want {
			t.Errorf("%s: halb_nat_replies entry of %s: %+v (%v), want %+v", step.what, ap(be11, 8080), got, ok, want)
		}
	}
}

// wantReportedReplies writes reply counters for each NAT backend of want
// (as the program counts a translated reply, on two CPUs) and wants
// Report, what `halb status` shows, to name each backend's own: its
// packets and bytes summed, by its id, under the service it belongs to;
// and Counters, what /metrics shows, its packets by backend.
func wantReportedReplies(t *testing.T, dp *Datapath, want map[natReplyKey]natReply) {
	t.Helper()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range want {
		perCPU := make([]halbStats, cpus)
		perCPU[0] = halbStats{Packets: uint64(r.BackendID), Bytes: 100 * uint64(r.BackendID)}
		perCPU[cpus-1].Packets += 1000
		if err := dp.lb.objs.HalbReplyStats.Put(r.BackendID, perCPU); err != nil {
			t.Fatal(err)
		}
	}
	reports, err := dp.Report()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, rep := range reports {
		for _, b := range rep.Backends {
			r, ok := want[natReplyKey{b.Addr, rep.Key.Proto}]
			if !ok || ap(rep.Key.VIP, rep.Key.Port) != r.VIP {
				continue
			}
			seen++
			wantStats := service.Stats{Packets: uint64(r.BackendID) + 1000, Bytes: 100 * uint64(r.BackendID)}
			if b.Replies == nil || *b.Replies != wantStats {
				t.Errorf("service %s: backend %s reports replies %+v, want %+v", rep.Name, b.Addr, b.Replies, wantStats)
			}
		}
	}
	if seen != len(want) {
		t.Errorf("Report names %d of the %d NAT backends: %+v", seen, len(want), reports)
	}
	counters, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	wantValues := map[string]uint64{}
	for k, r := range want {
		wantValues[k.Backend.String()+"/"+k.Proto.String()] = uint64(r.BackendID) + 1000
	}
	i := slices.IndexFunc(counters, func(c service.Counter) bool { return c.Name == "nat_replies" })
	if i < 0 || !maps.Equal(counters[i].Values, wantValues) {
		t.Errorf("counters %+v, want nat_replies %v", counters, wantValues)
	}
}

// natEntries reads halb_nat_replies back, the address-only entries left
// out.
func natEntries(t *testing.T, lb *kernelLB) map[natReplyKey]natReply {
	t.Helper()
	out := map[natReplyKey]natReply{}
	var (
		k halbBackendKey
		v halbNatReply
	)
	it := lb.objs.HalbNatReplies.Iterate()
	for it.Next(&k, &v) {
		if k.Port == 0 {
			continue
		}
		backend := ap(addrFrom(k.Addr, k.Family), k.Port)
		out[natReplyKey{backend, service.Protocol(k.Proto)}] = natReply{Backend: backend, Proto: service.Protocol(k.Proto),
			VIP: ap(addrFrom(v.Vip, k.Family), v.Port), Service: v.Service, BackendID: v.BackendId}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestResolveWanted: a next hop the program left in halb_neigh_wanted is
// asked of the kernel, which then has a neighbour entry for it, and leaves
// the map, while an Apply has a NAT service; an Apply with none (a DR
// service alone) leaves the map unread again.
func TestResolveWanted(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	h := b.lb.Netlink(t)
	apply := func(f service.Forward) {
		t.Helper()
		s := svc(web, backend(be11, 1))
		s.Forward = f
		if err := dp.Apply(context.Background(), []service.Service{s}); err != nil {
			t.Fatal(err)
		}
	}
	apply(service.DR)
	halb0, err := h.LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}
	hop := netip.MustParseAddr("192.0.2.77")
	// As the program writes it: the IPv4 address in its mapped form.
	k := halbReplyHopKey{Client: halbAddr{Bytes: hop.As16()}, Ifindex: uint32(halb0.Attrs().Index)}
	if err := dp.lb.objs.HalbNeighWanted.Put(&k, uint64(1)); err != nil {
		t.Fatal(err)
	}
	// No NAT service served: the map is not read, so an idle data path
	// without NAT does nothing every wantedInterval.
	unread := func() {
		t.Helper()
		time.Sleep(3 * wantedInterval)
		var v uint64
		if err := dp.lb.objs.HalbNeighWanted.Lookup(&k, &v); err != nil {
			t.Fatalf("%s read without a nat service: %v", halbMapHalbNeighWanted, err)
		}
	}
	unread()
	for _, f := range []service.Forward{service.DR, service.TUN, service.NAT, service.FullNAT} {
		if got, want := translates(service.Service{Forward: f}), f == service.NAT || f == service.FullNAT; got != want {
			t.Errorf("translates(%s) = %v, want %v", f, got, want)
		}
	}
	apply(service.NAT)
	deadline := time.Now().Add(10 * wantedInterval)
	for {
		list, err := h.NeighList(halb0.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		asked := slices.ContainsFunc(list, func(n netlink.Neigh) bool { return n.IP.Equal(hop.AsSlice()) })
		var v uint64
		gone := dp.lb.objs.HalbNeighWanted.Lookup(&k, &v) != nil
		if asked && gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: neighbour entry for %s %v, %s entry gone %v", 10*wantedInterval, hop, asked, halbMapHalbNeighWanted, gone)
		}
		time.Sleep(wantedInterval / 4)
	}

	// The NAT service turns to DR: the map is left alone again (after a
	// tick that may have begun before the Apply).
	apply(service.DR)
	time.Sleep(wantedInterval)
	if err := dp.lb.objs.HalbNeighWanted.Put(&k, uint64(1)); err != nil {
		t.Fatal(err)
	}
	unread()
}

// TestNATReplyFlows: a NAT reply that found its way back the long way
// (halb_nat_replies, then the next hop toward its client) leaves both in
// halb_reply_flows, keyed by the reply as it came, and the next reply of
// its flow goes out as that one entry says; once the loader
// changes the backend's entry in halb_nat_replies (through the map
// writer, which moves the next-hop generation), the next reply takes the
// new translation, not the one kept.
func TestNATReplyFlows(t *testing.T) { forPrograms(t, testNATReplyFlows) }

func testNATReplyFlows(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.natNet(t)
	reply := packet{src: natBe1, dst: ap(client4, 40000), ack: true}.frame(t, onLink4MAC, halb0MAC)
	send := func(vipPort uint16) {
		t.Helper()
		action, out := tb.run(t, reply)
		want := packet{src: ap(vip4, vipPort), dst: ap(client4, 40000), ack: true}.frame(t, halb1MAC, gw4MAC)
		if action != xdpRedirect || !bytes.Equal(out[:len(want)], want) {
			t.Fatalf("action %v, frame\n%x\nwant\n%x", action, out[:len(want)], want)
		}
	}
	entries := func() map[halbFlow]halbReplyFlow {
		t.Helper()
		var (
			k halbFlow
			v halbReplyFlow
		)
		got := map[halbFlow]halbReplyFlow{}
		it := tb.lb.objs.HalbReplyFlows.Iterate()
		for it.Next(&k, &v) {
			got[k] = v
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return got
	}

	send(80)
	key := halbFlow{Saddr: mustAddr(t, natBe1.Addr()), Daddr: mustAddr(t, client4), Sport: natBe1.Port(), Dport: 40000, Proto: 6, Family: halbFamilyFAMILY_IPV4}
	got := entries()
	e, ok := got[key]
	if len(got) != 1 || !ok {
		t.Fatalf("halb_reply_flows holds %+v, want one entry for %+v", got, key)
	}
	if e.Back.Rev.Vip != mustAddr(t, vip4) || e.Back.Rev.Port != 80 || e.Back.Rev.BackendId != 1 ||
		e.Nh.Ifindex != uint32(tb.halb1) || e.Ifindex != uint32(tb.halb0) {
		t.Errorf("entry %+v: want the way back to %s:80 from backend 1, out of %d, for replies in on %d", e, vip4, tb.halb1, tb.halb0)
	}
	// The second reply: the same frame, from the entry, which stays.
	send(80)
	if got := entries(); len(got) != 1 || got[key] != e {
		t.Errorf("after a second reply halb_reply_flows holds %+v, want %+v alone", got, e)
	}
	// The same reply in on halb1, which does not reach backend 1 (a
	// forged source): the entry, valid for halb0 alone, does not
	// translate it, nor does the long way; the kernel gets it as it came.
	forged := packet{src: natBe1, dst: ap(client4, 40000), ack: true}.frame(t, gw4MAC, halb1MAC)
	if action, out := tb.runOn(t, tb.halb1, forged); action != xdpPass || !bytes.Equal(out[:len(forged)], forged) {
		t.Errorf("a reply in on halb1: action %v, frame\n%x\nwant XDP_PASS and\n%x", action, out[:len(forged)], forged)
	}
	tb.wantDrops(t, map[DropReason]uint64{DropNATReplyWrongIf: 1})
	if got := entries(); len(got) != 1 || got[key] != e {
		t.Errorf("after a forged reply halb_reply_flows holds %+v, want %+v alone", got, e)
	}
	// It is the entry that the next reply goes by: one that says port 81
	// sends it from 81.
	e.Back.Rev.Port = 81
	if err := tb.lb.objs.HalbReplyFlows.Put(&key, &e); err != nil {
		t.Fatal(err)
	}
	send(81)

	w := newMapWriter(tb.lb)
	if err := w.putNATReply(natReply{Backend: natBe1, Proto: service.TCP, VIP: ap(vip4, 8080), Service: 1, BackendID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := w.moveNexthopGen(); err != nil {
		t.Fatal(err)
	}
	send(8080)
	if e := entries()[key]; e.Back.Rev.Port != 8080 {
		t.Errorf("after the change the entry goes back to port %d, want 8080", e.Back.Rev.Port)
	}
}
