package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// The network of TestNAT: the front LAN of TestDR (client and balancer on
// 192.0.2.0/24 and 2001:db8::/64), and a back LAN, a second bridge, with
// the balancer's eth1 and three backends whose default route is the
// balancer:
//
//	client 192.0.2.10 ::10 ── br0 ── eth0 192.0.2.2 ::2   lb
//	                                 eth1 203.0.113.1 2001:db8:b::1 ── br0' ── be1..be3
//	                                                  203.0.113.11..13, 2001:db8:b::11..13
//
// The backends run a TCP server on port 8080 and a UDP server on 5353 at
// their own addresses, and hold no VIP: the service ports are 80 and 53,
// and only the data path's rewrite gets a packet there, and only its
// rewrite of the replies gets an answer back to the client, which routes
// the VIPs through the balancer. The balancer holds no VIP and has no
// route to one.
var (
	natLB4      = netip.MustParseAddr("203.0.113.1")
	natLB6      = netip.MustParseAddr("2001:db8:b::1")
	natBackends = []struct {
		name        string
		addr, addr6 netip.Addr
	}{
		{"be1", netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("2001:db8:b::11")},
		{"be2", netip.MustParseAddr("203.0.113.12"), netip.MustParseAddr("2001:db8:b::12")},
		{"be3", netip.MustParseAddr("203.0.113.13"), netip.MustParseAddr("2001:db8:b::13")},
	}
	dnsKey  = service.Key{VIP: vip, Port: 53, Proto: service.UDP}
	dnsKey6 = service.Key{VIP: vip6, Port: 53, Proto: service.UDP}
)

const (
	natWebPort = 8080 // the backends' TCP port; the service's is 80
	natDNSPort = 5353 // the backends' UDP port; the service's is 53
)

// natBed is the network above, the servers running.
type natBed struct {
	lb               *netnstest.NS
	client, client6  *client
	backends         []*netnstest.NS
	frontPort, backP int // the switches' sides of the balancer's veths
}

func newNATBed(t *testing.T, hook loader.Hook) *natBed {
	t.Helper()
	front := newLAN(t, netnstest.New(t))
	back := newLAN(t, netnstest.New(t))
	b := &natBed{lb: netnstest.New(t)}
	clientNS := netnstest.New(t)
	b.client = &client{ns: clientNS, src: clientIP, vip: vip}
	b.client6 = &client{ns: clientNS, src: clientIP6, vip: vip6}
	front.plug(clientNS, "sw-client", clientIP, clientIP6)
	b.frontPort = front.plug(b.lb, "sw-lb", lbIP, lbIP6)
	b.backP = back.plugAs(b.lb, "sw-lb1", "eth1", natLB4, natLB6)
	if hook == loader.HookXDPNative {
		// Native XDP sends into a veth only when its peer has an XDP
		// program: both of the balancer's.
		front.xdpPass(b.frontPort)
		back.xdpPass(b.backP)
	}
	routeVia(t, clientNS, "eth0", lbIP, lbIP6, vip, vip6)
	for _, be := range natBackends {
		ns := netnstest.New(t)
		back.plug(ns, "sw-"+be.name, be.addr, be.addr6)
		routeVia(t, ns, "eth0", natLB4, natLB6)
		startServer(t, ns, be.name, be.addr, natWebPort)
		startServer(t, ns, be.name, be.addr6, natWebPort)
		serveUDP(t, ns, be.name, netip.AddrPortFrom(be.addr, natDNSPort))
		serveUDP(t, ns, be.name, netip.AddrPortFrom(be.addr6, natDNSPort))
		b.backends = append(b.backends, ns)
	}
	// Finished checksums from every sender for XDP: a veth with TX
	// checksum offload hands on partial ones, which XDP forwards as they
	// are and which its incremental update does not suit. A host behind
	// a real NIC sends finished ones. tc rewrites through the kernel's
	// checksum helpers, which know a partial checksum: the senders keep
	// their offloads (and TSO: tc sees their GSO packets whole).
	for _, ns := range append([]*netnstest.NS{clientNS}, b.backends...) {
		if hook == loader.HookTCX {
			break
		}
		if err := ns.Do(func() error { return txChecksumOff("eth0") }); err != nil {
			t.Fatal(err)
		}
	}
	// The FIB lookups the program makes answer only for interfaces that
	// forward.
	err := b.lb.Do(func() error {
		for _, p := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// routeVia routes dsts (a default route when there are none) through
// gw4 and gw6 on ifName in ns; an invalid gateway routes none of its
// family.
func routeVia(t *testing.T, ns *netnstest.NS, ifName string, gw4, gw6 netip.Addr, dsts ...netip.Addr) {
	t.Helper()
	h := ns.Netlink(t)
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	var routes []*netlink.Route
	if len(dsts) == 0 {
		routes = []*netlink.Route{{LinkIndex: l.Attrs().Index, Gw: gw4.AsSlice()}, {LinkIndex: l.Attrs().Index, Gw: gw6.AsSlice()}}
	}
	for _, d := range dsts {
		gw := gw4
		if d.Is6() {
			gw = gw6
		}
		routes = append(routes, &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice(),
			Dst: &net.IPNet{IP: d.AsSlice(), Mask: net.CIDRMask(d.BitLen(), d.BitLen())}})
	}
	for _, r := range routes {
		if r.Gw == nil {
			continue // no gateway of that family
		}
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("route %v via %s: %v", r.Dst, r.Gw, err)
		}
	}
}

// natService is the NAT service on key over the three backends at weight
// 1, on port, at their IPv4 or IPv6 addresses as key's VIP is.
func natService(name string, key service.Key, port uint16) service.Service {
	s := service.Service{Name: name, Key: key, Scheduler: "mh", Forward: service.NAT}
	for _, b := range natBackends {
		a := b.addr
		if key.VIP.Is6() {
			a = b.addr6
		}
		s.Backends = append(s.Backends, service.Backend{Addr: a, Port: port, Weight: 1})
	}
	return s
}

// query sends a UDP request from the client's port to the VIP's port and
// returns the answer.
func (c *client) query(t *testing.T, svcPort uint16, port int, msg string) string {
	t.Helper()
	var answer string
	err := c.ns.Do(func() error {
		d := net.Dialer{Timeout: opTimeout, LocalAddr: &net.UDPAddr{IP: c.src.AsSlice(), Port: port}}
		nc, err := d.Dial("udp", netip.AddrPortFrom(c.vip, svcPort).String())
		if err != nil {
			return err
		}
		defer nc.Close()
		buf := make([]byte, 2048)
		// UDP may lose the first datagram while a neighbour is
		// resolved: a few tries, each bounded.
		for try := range 3 {
			_ = nc.SetDeadline(time.Now().Add(opTimeout / 3))
			if _, err := nc.Write([]byte(msg)); err != nil {
				return err
			}
			n, err := nc.Read(buf)
			if err == nil {
				answer = string(buf[:n])
				return nil
			}
			if try == 2 {
				return err
			}
		}
		return errors.New("unreachable")
	})
	if err != nil {
		t.Fatalf("udp to %s:%d from port %d: %v", c.vip, svcPort, port, err)
	}
	return answer
}

// TestNAT runs forward: nat through the loader's Datapath, as `halb run`
// does, on each hook, with no IPVS anywhere: 300 TCP connections to each
// VIP spread over the three backends, which listen on another port than
// the service's; a UDP request and its answer, both ways translated; a
// drained backend takes no new connection and keeps the one it has.
func TestNAT(t *testing.T) {
	netnstest.Require(t)
	forHooks(t, testNAT)
}

func testNAT(t *testing.T, mode, xdpMode string, hook loader.Hook) {
	bed := newNATBed(t, hook)
	cfg := datapathConfig(t, mode, xdpMode)
	cfg.Interfaces = []string{"eth0", "eth1"}
	services := []service.Service{
		natService("web", webKey, natWebPort), natService("web6", webKey6, natWebPort),
		natService("dns", dnsKey, natDNSPort), natService("dns6", dnsKey6, natDNSPort),
	}
	ctx := context.Background()
	dp := start(t, bed.lb, cfg)
	if got := dp.Attachments(); len(got) != 2 || got[0].Hook != hook || got[1].Hook != hook {
		t.Fatalf("attachments %v, want %s on eth0 and eth1", got, hook)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	checkNATTraffic(t, bed, dp)

	// A connection that stays open through the drain of its backend.
	keep := bed.client.connect(t, 39999)
	defer keep.Close()
	keep.ping(t, "before the drain")
	for i, b := range natBackends {
		if b.name == keep.backend {
			services[0].Backends[i].Weight = 0
		}
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 11)
	counts := bed.client.spread(t, 42000, 150)
	t.Logf("150 connections with %s drained: %v", keep.backend, counts)
	if counts[keep.backend] != 0 || total(counts) != 150 || len(counts) != 2 {
		t.Errorf("%v: want all 150 connections on the two live backends, none on %s", counts, keep.backend)
	}
	keep.ping(t, "after the drain")
}

// checkNATTraffic waits for the four services of bed (web, web6, dns,
// dns6) to be live, then opens 300 TCP connections to each VIP, wants
// them spread within ±25 %, and a UDP request to each answered, and
// every backend that took a connection to have had replies translated
// back.
func checkNATTraffic(t *testing.T, bed *natBed, dp *loader.Datapath) {
	t.Helper()
	waitLive(t, dp, 12)
	// XDP drops what it would send to a next hop whose MAC the kernel
	// does not know yet, and the data path has it resolved: the
	// backends' at once; the client's, which the balancer has never
	// spoken to, when the first reply to it is dropped (the backend's
	// SYN-ACK, sent again a second later).
	var addrs []netip.Addr
	for _, b := range natBackends {
		addrs = append(addrs, b.addr, b.addr6)
	}
	waitKnown(t, bed.lb, addrs)

	for _, c := range []*client{bed.client, bed.client6} {
		counts := c.spread(t, 40000, 300)
		t.Logf("300 connections to %s: %v", c.vip, counts)
		checkSpread(t, fmt.Sprintf("300 connections to %s", c.vip), counts, 300)
	}
	for _, c := range []*client{bed.client, bed.client6} {
		if answer := c.query(t, 53, 41000, "what is halb"); !strings.HasPrefix(answer, "be") {
			t.Errorf("udp answer from %s:53: %q, want a backend's name", c.vip, answer)
		}
	}
	logStatus(t, dp)
	checkReplies(t, dp)
}

// checkReplies wants every backend that took a connection to have had
// replies translated back: the data path counts them.
func checkReplies(t *testing.T, dp *loader.Datapath) {
	t.Helper()
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		for _, b := range s.Backends {
			if b.Replies == nil {
				t.Errorf("service %s: backend %s reports no reply counters", s.Key, b.Addr)
			} else if b.Packets > 0 && b.Replies.Packets == 0 {
				t.Errorf("service %s: backend %s got %d packets and sent no reply back through the data path", s.Key, b.Addr, b.Packets)
			}
		}
	}
}
