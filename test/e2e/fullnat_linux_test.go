package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// TestFullNAT runs forward: fullnat through the loader's Datapath on
// each hook, on TestNAT's network with one change: the backends have no
// route but their own link's, none to the clients and no default. Only
// the source rewrite to the balancer's address on their link (the
// kernel's source toward them, as no snat_address is set) gets them an
// answer back: 300 TCP connections to each VIP spread over the three,
// and a UDP request and its answer, IPv4 and IPv6.
func TestFullNAT(t *testing.T) {
	netnstest.Require(t)
	forHooks(t, testFullNAT)
}

func testFullNAT(t *testing.T, mode, xdpMode string, hook loader.Hook) {
	bed := newNATBed(t, hook)
	for i, ns := range bed.backends {
		dropDefaultRoutes(t, ns)
		for _, c := range []*client{bed.client, bed.client6} {
			if rs, err := ns.Netlink(t).RouteGet(c.src.AsSlice()); err == nil {
				t.Fatalf("%s still routes to the client %s: %v", natBackends[i].name, c.src, rs)
			}
		}
	}
	cfg := datapathConfig(t, mode, xdpMode)
	cfg.Interfaces = []string{"eth0", "eth1"}
	full := func(s service.Service) service.Service { s.Forward = service.FullNAT; return s }
	services := []service.Service{
		full(natService("web", webKey, natWebPort)), full(natService("web6", webKey6, natWebPort)),
		full(natService("dns", dnsKey, natDNSPort)), full(natService("dns6", dnsKey6, natDNSPort)),
	}
	dp := start(t, bed.lb, cfg)
	if err := dp.Apply(context.Background(), services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 12)
	var addrs = make([]netip.Addr, 0, 2*len(natBackends))
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

// dropDefaultRoutes removes the default routes of ns, both families.
func dropDefaultRoutes(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteList(nil, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.Equal(net.IPv4zero) || r.Dst.IP.Equal(net.IPv6zero) {
				if err := h.RouteDel(&r); err != nil {
					t.Fatalf("delete the default route %v: %v", r, err)
				}
			}
		}
	}
}
