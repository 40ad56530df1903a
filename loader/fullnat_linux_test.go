package loader

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/halb-lb/halb/service"
)

// The testbed for forward: fullnat is natNet's network with services of
// their own: each backend's source is the balancer's address toward it
// (the record's Src, as the loader writes snat_address there).
var (
	fnatWeb4 = service.Key{VIP: vip4, Port: 90, Proto: service.TCP}
	fnatDNS4 = service.Key{VIP: vip4, Port: 54, Proto: service.UDP}
	fnatWeb6 = service.Key{VIP: vip6, Port: 90, Proto: service.TCP}
	fnatDNS6 = service.Key{VIP: vip6, Port: 54, Proto: service.UDP}

	// The NAT backends' hosts, on ports of their own.
	fnatBe1 = ap(onLink4, 9080)
	fnatBe2 = ap(routed4, 9053)
	fnatBe3 = ap(routed6, 9080)
	fnatBe4 = ap(onLink6, 9053)
)

// fnatService is one full NAT service of the testbed, its one backend
// and the balancer's address toward it.
type fnatService struct {
	key     service.Key
	backend netip.AddrPort
	snat    netip.Addr
	ifindex int
}

var fnatServices = []fnatService{
	{fnatWeb4, fnatBe1, tunSrc4, 0},  // on halb0's link
	{fnatDNS4, fnatBe2, tunSrc4b, 1}, // behind halb1's gateway
	{fnatWeb6, fnatBe3, tunSrc6b, 1},
	{fnatDNS6, fnatBe4, tunSrc6, 0},
}

// fnatNet is natNet's network with fnatServices, backend and service
// ids 11 to 14, and their reply entries as the Datapath writes them.
func (tb *testbed) fnatNet(t *testing.T) {
	t.Helper()
	tb.natNet(t) // the routes, and NAT services on other ports
	for i, s := range fnatServices {
		id, svc := uint32(11+i), uint32(11+i)
		ifindex := tb.halb0
		if s.ifindex == 1 {
			ifindex = tb.halb1
		}
		tb.natBackend(t, id, s.backend, s.snat, ifindex)
		tb.service(t, s.key, Service{ID: svc, Forward: ForwardFullNAT})
		tb.table(t, svc, id)
		r := natReply{Backend: s.backend, Proto: s.key.Proto, VIP: ap(s.key.VIP, s.key.Port), Service: svc, BackendID: id, FullNAT: true}
		if _, err := tb.lb.putNATReply(r); err != nil {
			t.Fatal(err)
		}
	}
}

// fnatPool is the program's choice of source ports, as halb_nat.h's
// snat_port makes it: the port a flow's hash names in the pool, or the
// next free one of HALB_SNAT_PROBES, per backend and balancer address.
// The test's model of it, so that the tables can name the ports.
type fnatPool struct {
	first, n uint32
	held     map[string]map[uint16]string // backend -> port -> flow
}

func newFnatPool(first, last uint16) *fnatPool {
	return &fnatPool{first: uint32(first), n: uint32(last-first) + 1, held: map[string]map[uint16]string{}}
}

// port is flow client->vip's port toward backend; 0: none free.
func (p *fnatPool) port(client, vip netip.AddrPort, proto uint8, backend netip.AddrPort) uint16 {
	h := flowHash(client, vip, proto, false)
	flow := client.String() + ">" + vip.String()
	key := backend.String()
	if p.held[key] == nil {
		p.held[key] = map[uint16]string{}
	}
	for i := range uint32(8) {
		port := uint16(p.first + (h+i)%p.n)
		switch p.held[key][port] {
		case flow:
			return port
		case "":
			p.held[key][port] = flow
			return port
		}
	}
	return 0
}

// TestFullNAT is the specification of forward: fullnat in halb_xdp_lb
// and halb_tc_lb: each frame in and the frame that comes out, whole, with
// every checksum verified. A client's packet leaves with its backend's
// address and port as destination and the balancer's address and a port
// of the pool as source; the backend's reply to that address and port
// goes back from the VIP to the client; ICMP errors both ways are
// translated with what they quote; what is no mapped reply stays as it
// came.
func TestFullNAT(t *testing.T) { forPrograms(t, testFullNAT) }

func testFullNAT(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.fnatNet(t)
	pool := newFnatPool(DefaultSNATPortFirst, DefaultSNATPortLast)
	be1MAC, be4MAC := onLink4MAC, onLink6MAC
	udp := layers.IPProtocolUDP
	tcp, udpN := uint8(6), uint8(17)

	c1, c2, c3, c4 := ap(client4, 40000), ap(client4, 40002), ap(client6, 40000), ap(client6, 40001)
	v1, v2, v3, v4 := ap(vip4, 90), ap(vip4, 54), ap(vip6, 90), ap(vip6, 54)
	p1 := ap(tunSrc4, pool.port(c1, v1, tcp, fnatBe1))
	p2 := ap(tunSrc4b, pool.port(c2, v2, udpN, fnatBe2))
	p3 := ap(tunSrc6b, pool.port(c3, v3, tcp, fnatBe3))
	p4 := ap(tunSrc6, pool.port(c4, v4, udpN, fnatBe4))
	unmapped := ap(tunSrc4, p1.Port()^1) // in the pool, held by no flow

	type outcome struct {
		action xdpAction
		out    []byte // nil: the frame as it came
		drop   DropReason
		events []Event
	}
	cases := []struct {
		name string
		in   []byte
		want outcome
	}{
		// Client to backend: both ends rewritten.
		{"ipv4 tcp to a backend on the ingress link",
			packet{src: c1, dst: v1}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpTX, out: packet{src: p1, dst: fnatBe1}.frame(t, halb0MAC, be1MAC)}},
		{"the flow's next packet keeps its port",
			packet{src: c1, dst: v1, ack: true}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpTX, out: packet{src: p1, dst: fnatBe1, ack: true}.frame(t, halb0MAC, be1MAC)}},
		{"ipv4 udp to a routed backend behind another interface",
			packet{src: c2, dst: v2, proto: udp}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpRedirect, out: packet{src: p2, dst: fnatBe2, proto: udp}.frame(t, halb1MAC, gw4MAC)}},
		{"ipv4 udp without a checksum keeps none",
			zeroUDPChecksum(packet{src: c2, dst: v2, proto: udp}.frame(t, routerMAC, halb0MAC)),
			outcome{action: xdpRedirect, out: zeroUDPChecksum(packet{src: p2, dst: fnatBe2, proto: udp}.frame(t, halb1MAC, gw4MAC))}},
		{"ipv6 tcp to a routed backend",
			packet{src: c3, dst: v3}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpRedirect, out: packet{src: p3, dst: fnatBe3}.frame(t, halb1MAC, gw6MAC)}},
		{"ipv6 udp to a backend on the ingress link",
			packet{src: c4, dst: v4, proto: udp}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpTX, out: packet{src: p4, dst: fnatBe4, proto: udp}.frame(t, halb0MAC, be4MAC)}},

		// Backend to the balancer's address and port: back from the
		// VIP to the client.
		{"ipv4 tcp reply",
			packet{src: fnatBe1, dst: p1, ack: true}.frame(t, be1MAC, halb0MAC),
			outcome{action: xdpRedirect, out: packet{src: v1, dst: c1, ack: true}.frame(t, halb1MAC, gw4MAC)}},
		{"ipv4 udp reply",
			packet{src: fnatBe2, dst: p2, proto: udp}.frame(t, gw4MAC, halb1MAC),
			outcome{action: xdpTX, out: packet{src: v2, dst: c2, proto: udp}.frame(t, halb1MAC, gw4MAC)}},
		{"ipv6 tcp reply",
			packet{src: fnatBe3, dst: p3, ack: true}.frame(t, gw6MAC, halb1MAC),
			outcome{action: xdpTX, out: packet{src: v3, dst: c3, ack: true}.frame(t, halb1MAC, gw6MAC)}},
		{"ipv6 udp reply",
			packet{src: fnatBe4, dst: p4, proto: udp}.frame(t, be4MAC, halb0MAC),
			outcome{action: xdpRedirect, out: packet{src: v4, dst: c4, proto: udp}.frame(t, halb1MAC, gw6MAC)}},

		// ICMP errors, with the packets they quote. A router's address
		// stays; a client's or a backend's is translated with the
		// quote.
		{"a router's fragmentation needed about a reply goes to the backend",
			icmpError(t, true, router4, vip4, packet{src: v1, dst: c1, ack: true}, 0, routerMAC, halb0MAC),
			outcome{action: xdpTX, out: icmpError(t, true, router4, onLink4, packet{src: fnatBe1, dst: p1, ack: true}, 0, halb0MAC, be1MAC),
				events: []Event{EventICMPTooBig, EventNATICMP}}},
		{"a client's port unreachable about a udp reply comes from the balancer",
			icmpError(t, false, client4, vip4, packet{src: v2, dst: c2, proto: udp}, 0, routerMAC, halb0MAC),
			outcome{action: xdpRedirect, out: icmpError(t, false, tunSrc4b, routed4, packet{src: fnatBe2, dst: p2, proto: udp}, 0, halb1MAC, gw4MAC),
				events: []Event{EventNATICMP}}},
		{"a backend's port unreachable goes back from the VIP",
			icmpError(t, false, routed4, tunSrc4b, packet{src: p2, dst: fnatBe2, proto: udp}, 0, gw4MAC, halb1MAC),
			outcome{action: xdpTX, out: icmpError(t, false, vip4, client4, packet{src: c2, dst: v2, proto: udp}, 0, halb1MAC, gw4MAC),
				events: []Event{EventNATICMP}}},
		{"a router's ipv6 packet too big about a client's packet",
			icmpError(t, true, router6, tunSrc6b, packet{src: p3, dst: fnatBe3, ack: true}, 0, gw6MAC, halb1MAC),
			outcome{action: xdpTX, out: icmpError(t, true, router6, client6, packet{src: c3, dst: v3, ack: true}, 0, halb1MAC, gw6MAC),
				events: []Event{EventNATICMP}}},
		{"an error quoting 8 bytes of tcp rewrites the ports only",
			icmpError(t, true, router4, vip4, packet{src: v1, dst: c1, ack: true}, 28, routerMAC, halb0MAC),
			outcome{action: xdpTX, out: icmpError(t, true, router4, onLink4, packet{src: fnatBe1, dst: p1, ack: true}, 28, halb0MAC, be1MAC),
				events: []Event{EventICMPTooBig, EventNATICMP}}},

		// What stays as it is.
		{"a backend's answer to the balancer's own health check",
			packet{src: fnatBe1, dst: ap(tunSrc4, 45000), ack: true}.frame(t, be1MAC, halb0MAC),
			outcome{action: xdpPass}},
		{"a backend's packet to a pool port no flow holds",
			packet{src: fnatBe1, dst: unmapped, ack: true}.frame(t, be1MAC, halb0MAC),
			outcome{action: xdpPass}},
		{"a client's error about a flow the balancer never mapped",
			icmpError(t, false, client4, vip4, packet{src: v2, dst: ap(client4, 49999), proto: udp}, 0, routerMAC, halb0MAC),
			outcome{action: xdpPass}},
		{"a client's packet to an address that is no VIP",
			packet{src: c1, dst: ap(other4, 90)}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpPass}},
		{"a backend as a client of its own service (hairpin)",
			packet{src: ap(onLink4, 41000), dst: v1}.frame(t, be1MAC, halb0MAC),
			outcome{action: xdpPass, events: []Event{EventNATHairpin}}},

		// A backend's source address and port forged on an interface
		// that does not reach that backend, to a mapped address and
		// port: not translated, to the kernel as it came, counted. The
		// first flow's reply went back above (halb_reply_flows holds
		// it, for halb1).
		{"a forged reply of a flow that replied, in on the client side",
			packet{src: fnatBe2, dst: p2, proto: udp}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpPass, drop: DropNATReplyWrongIf}},
		{"a reply of a backend on halb0's link, in on halb1",
			packet{src: fnatBe1, dst: p1, ack: true}.frame(t, gw4MAC, halb1MAC),
			outcome{action: xdpPass, drop: DropNATReplyWrongIf}},
		{"a forged ipv6 reply, in on the client side",
			packet{src: fnatBe3, dst: p3, ack: true}.frame(t, routerMAC, halb0MAC),
			outcome{action: xdpPass, drop: DropNATReplyWrongIf}},
		{"an ipv6 reply of a backend on halb0's link, in on halb1",
			packet{src: fnatBe4, dst: p4, proto: udp}.frame(t, gw6MAC, halb1MAC),
			outcome{action: xdpPass, drop: DropNATReplyWrongIf}},
	}

	wantDrops := map[DropReason]uint64{}
	wantEvents := map[Event]uint64{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			action, out := tb.arrive(t, c.in)
			if action != tb.expect(c.want.action) {
				t.Errorf("action %v, want %v", action, tb.expect(c.want.action))
			}
			want := c.want.out
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Errorf("output frame differs\ngot  %x\nwant %x", out, want)
			}
			if c.want.out != nil {
				verifyChecksums(t, out)
				verifyQuote(t, out)
			}
		})
		if c.want.action == xdpDrop || c.want.drop != 0 {
			wantDrops[c.want.drop]++
		}
		for _, e := range c.want.events {
			wantEvents[e]++
		}
	}
	t.Run("counters", func(t *testing.T) {
		tb.wantDrops(t, wantDrops)
		tb.wantEvents(t, wantEvents)
		for i, want := range []uint64{1, 2, 2, 1} { // replies, ICMP errors among them
			id := uint32(11 + i)
			if got, err := tb.lb.replyStats(id); err != nil || got.Packets != want {
				t.Errorf("backend %d: %d replies translated (%v), want %d", id, got.Packets, err, want)
			}
		}
	})
	t.Run("flows", func(t *testing.T) {
		var (
			k    halbFnatKey
			v    halbFnatFlow
			seen = map[netip.AddrPort]netip.AddrPort{}
		)
		it := tb.lb.objs.HalbFnat.Iterate()
		for it.Next(&k, &v) {
			snat := netip.AddrPortFrom(netip.AddrFrom16(k.Snat.Bytes).Unmap(), k.SnatPort)
			seen[snat] = netip.AddrPortFrom(netip.AddrFrom16(v.Client.Bytes).Unmap(), v.ClientPort)
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		want := map[netip.AddrPort]netip.AddrPort{p1: c1, p2: c2, p3: c3, p4: c4}
		if len(seen) != len(want) {
			t.Errorf("%s holds %v, want %v", halbMapHalbFnat, seen, want)
		}
		for snat, client := range want {
			if seen[snat] != client {
				t.Errorf("%s: %s maps to %s, want %s", halbMapHalbFnat, snat, seen[snat], client)
			}
		}
	})
}

// TestFullNATPortPool checks that a backend's pool runs out: with two
// ports, two flows take them, a third is dropped and counted
// (DropNoSport), and the first two keep theirs.
func TestFullNATPortPool(t *testing.T) { forPrograms(t, testFullNATPortPool) }

func testFullNATPortPool(t *testing.T, prog string) {
	tb := newTestbed(t, Options{SNATPortFirst: 50000, SNATPortLast: 50001}).on(prog)
	tb.fnatNet(t)
	v1 := ap(vip4, 90)
	// Two clients whose hashes name the two ports, so that each takes
	// its own without a probe.
	var flows [2]netip.AddrPort
	for port := uint16(41000); !flows[0].IsValid() || !flows[1].IsValid(); port++ {
		c := ap(client4, port)
		flows[flowHash(c, v1, 6, false)%2] = c
	}
	for i, c := range flows {
		p := ap(tunSrc4, 50000+uint16(i))
		action, out := tb.run(t, packet{src: c, dst: v1}.frame(t, routerMAC, halb0MAC))
		if want := (packet{src: p, dst: fnatBe1}).frame(t, halb0MAC, onLink4MAC); action != tb.expect(xdpTX) || !bytes.Equal(out, want) {
			t.Errorf("%s: action %v, frame\n%x\nwant\n%x", c, action, out, want)
		}
	}
	third := packet{src: ap(client4, 42999), dst: v1}.frame(t, routerMAC, halb0MAC)
	if action, out := tb.run(t, third); action != tb.expect(xdpDrop) || !bytes.Equal(out, third) {
		t.Errorf("a third flow: action %v, want a drop of the frame as it came", action)
	}
	tb.wantDrops(t, map[DropReason]uint64{DropNoSport: 1})
	for i, c := range flows {
		p := ap(tunSrc4, 50000+uint16(i))
		action, out := tb.run(t, packet{src: c, dst: v1, ack: true}.frame(t, routerMAC, halb0MAC))
		if want := (packet{src: p, dst: fnatBe1, ack: true}).frame(t, halb0MAC, onLink4MAC); action != tb.expect(xdpTX) || !bytes.Equal(out, want) {
			t.Errorf("%s keeps its port: action %v, frame\n%x\nwant\n%x", c, action, out, want)
		}
	}
}

// TestDatapathFullNAT is forward: fullnat through Apply: a backend's
// source is the service's snat_address when it has one, else the
// kernel's toward it; each backend's halb_nat_replies entry is marked
// full NAT and its address's byte is in halb_fnat_last while it is; a
// service that turns to forward: nat, and then leaves, clears them.
func TestDatapathFullNAT(t *testing.T) {
	dp := startNATDatapath(t)
	ctx := context.Background()
	snat := netip.MustParseAddr("198.51.100.1")
	full := service.Service{Name: "full", Key: web, Scheduler: "mh", Forward: service.FullNAT, SNAT: snat,
		Backends: []service.Backend{{Addr: be11, Port: 8080, Weight: 1}, {Addr: be12, Port: 8080, Weight: 1}}}
	alt := web
	alt.Port = 81
	plain := service.Service{Name: "plain", Key: alt, Scheduler: "mh", Forward: service.FullNAT,
		Backends: []service.Backend{{Addr: be13, Port: 9090, Weight: 1}}}
	if err := dp.Apply(ctx, []service.Service{full, plain}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		svc service.Service
		src netip.Addr
	}{{full, snat}, {plain, netip.MustParseAddr("192.0.2.1")}} {
		st := waitLive(t, dp, x.svc.Key, len(x.svc.Backends))
		for _, be := range x.svc.Backends {
			if got := backendOf(st, be.Addr); got.TunnelSrc != x.src || got.Interface != "halb0" {
				t.Errorf("full NAT backend %s: %+v, want the source %s on halb0", be.Addr, got, x.src)
			}
		}
	}
	wantFull := func(want bool) {
		t.Helper()
		var (
			k halbBackendKey
			v halbNatReply
			n int
		)
		it := dp.lb.objs.HalbNatReplies.Iterate()
		for it.Next(&k, &v) {
			if k.Port != 0 && k.Port != 9090 {
				n++
				if isFull(v) != want {
					t.Errorf("halb_nat_replies entry of %s:%d: full NAT %v, want %v", addrFrom(k.Addr, k.Family), k.Port, isFull(v), want)
				}
			}
		}
		if err := it.Err(); err != nil || n != 2 {
			t.Errorf("halb_nat_replies: %d entries of the first service (%v), want 2", n, err)
		}
	}
	wantBytes := func(want ...netip.Addr) {
		t.Helper()
		var got, exp [256]uint8
		for _, a := range want {
			exp[a.As4()[3]] = 1
		}
		if err := dp.lb.objs.HalbFnatLast.Get(&got); err != nil || got != exp {
			t.Errorf("halb_fnat_last names %v (%v), want the last bytes of %v", nonZero(got), err, want)
		}
	}
	wantFull(true)
	wantBytes(be11, be12, be13)

	full.Forward, full.SNAT = service.NAT, netip.Addr{}
	if err := dp.Apply(ctx, []service.Service{full, plain}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 2)
	wantFull(false)
	wantBytes(be13)

	if err := dp.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	wantBytes()
}

// nonZero lists the indexes of b that are not 0.
func nonZero(b [256]uint8) []int {
	var out []int
	for i, v := range b {
		if v != 0 {
			out = append(out, i)
		}
	}
	return out
}

// TestFullNATPortReuse: a new flow whose port a live flow holds takes
// the next one (the probe); one whose port a flow holds that has been
// idle past HALB_SNAT_IDLE_NS (2 minutes) takes it over, and the idle
// flow's halb_ct entry goes, so that its next packet is scheduled anew
// rather than sent with a port that is now another flow's.
func TestFullNATPortReuse(t *testing.T) { forPrograms(t, testFullNATPortReuse) }

func testFullNATPortReuse(t *testing.T, prog string) {
	tb := newTestbed(t, Options{SNATPortFirst: 50000, SNATPortLast: 50003}).on(prog)
	tb.fnatNet(t)
	v1 := ap(vip4, 90)
	portOf := func(c netip.AddrPort, probe uint32) uint16 {
		return 50000 + uint16((flowHash(c, v1, 6, false)+probe)%4)
	}
	// clientAt is a client other than those in not whose hash names p.
	clientAt := func(p uint16, not ...netip.AddrPort) netip.AddrPort {
		for port := uint16(41000); ; port++ {
			c := ap(client4, port)
			if portOf(c, 0) == p && !slices.Contains(not, c) {
				return c
			}
		}
	}
	send := func(c netip.AddrPort, want uint16) {
		t.Helper()
		action, out := tb.run(t, packet{src: c, dst: v1}.frame(t, routerMAC, halb0MAC))
		if w := (packet{src: ap(tunSrc4, want), dst: fnatBe1}).frame(t, halb0MAC, onLink4MAC); action != tb.expect(xdpTX) || !bytes.Equal(out, w) {
			t.Errorf("%s: action %v, frame\n%x\nwant one from port %d\n%x", c, action, out, want, w)
		}
	}

	old := ap(client4, 40999)
	p := portOf(old, 0)
	send(old, p)
	// The old flow has been idle for long: its entry's last reply, at
	// boot.
	key := halbFnatKey{Backend: mustAddr(t, fnatBe1.Addr()), Snat: mustAddr(t, tunSrc4), BackendPort: fnatBe1.Port(), SnatPort: p, Proto: 6, Family: halbFamilyFAMILY_IPV4}
	var f halbFnatFlow
	if err := tb.lb.objs.HalbFnat.Lookup(&key, &f); err != nil {
		t.Fatal(err)
	}
	f.Seen = 1
	if err := tb.lb.objs.HalbFnat.Put(&key, &f); err != nil {
		t.Fatal(err)
	}
	taker := clientAt(p, old)
	send(taker, p)
	if err := tb.lb.objs.HalbFnat.Lookup(&key, &f); err != nil || netip.AddrPortFrom(addrFrom(f.Client, halbFamilyFAMILY_IPV4), f.ClientPort) != taker {
		t.Errorf("port %d maps to %s:%d (%v), want %s", p, addrFrom(f.Client, halbFamilyFAMILY_IPV4), f.ClientPort, err, taker)
	}
	if _, ok := tb.conntrack(t, packet{src: old, dst: v1}); ok {
		t.Errorf("the idle flow %s is still in halb_ct with the port %s took", old, taker)
	}
	// Now the port is live: the next flow whose hash names it probes.
	send(clientAt(p, old, taker), portOf(clientAt(p, old, taker), 1))
}

// mustAddr is a's map form.
func mustAddr(t *testing.T, a netip.Addr) halbAddr {
	t.Helper()
	out, _, err := addrOf(a)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
