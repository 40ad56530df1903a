package e2e

import (
	"context"
	"net"
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
	checkNATTraffic(t, bed, dp)
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
