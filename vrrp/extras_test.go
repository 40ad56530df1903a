package vrrp

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
)

var (
	vipOther  = netip.MustParsePrefix("198.51.100.100/24")
	exclOther = netip.MustParsePrefix("2001:db8:1::100/64")
	exclOwn   = netip.MustParsePrefix("192.0.2.50/32")
)

// extrasConfig is baseConfig with a VIP and an excluded IPv6 VIP on lan1,
// an excluded VIP on lan0, a route and a rule.
func extrasConfig() config.Instance {
	cfg := baseConfig()
	cfg.VirtualIPs = append(cfg.VirtualIPs, config.VirtualIP{Address: vipOther, Interface: "lan1"})
	cfg.VirtualIPsExcluded = []config.VirtualIP{{Address: exclOther, Interface: "lan1"}, {Address: exclOwn}}
	cfg.VirtualRoutes = []config.VirtualRoute{{To: netip.MustParsePrefix("203.0.113.0/24"), Via: netip.MustParseAddr("198.51.100.254"), Interface: "lan1"}}
	cfg.VirtualRules = []config.VirtualRule{{From: netip.MustParsePrefix("198.51.100.100/32"), Table: 100}}
	return cfg
}

// frameCounts counts the announcements on the interface with index
// ifindex, by the address they claim.
func frameCounts(frames []sentFrame, ifindex int) map[netip.Addr]int {
	n := map[netip.Addr]int{}
	for _, f := range frames {
		if f.ifindex != ifindex {
			continue
		}
		if cl, ok := arpClaim(f.frame); ok {
			n[cl.ip]++
		} else if cl, ok := naClaim(f.frame); ok {
			n[cl.ip]++
		}
	}
	return n
}

// The grouping the instance holds its VIPs by: its own interface's
// (plain, or naming it), then each other interface's in file order.
func TestVIPsByInterface(t *testing.T) {
	cfg := extrasConfig()
	cfg.VirtualIPs = append(cfg.VirtualIPs, config.VirtualIP{Address: netip.MustParsePrefix("192.0.2.101/24"), Interface: "lan0"})
	own := ownVIPs(cfg)
	if want := []netip.Prefix{vipA, netip.MustParsePrefix("192.0.2.101/24"), exclOwn}; !equalPrefixes(own, want) {
		t.Errorf("own VIPs = %v, want %v", own, want)
	}
	others := otherIfcs(cfg)
	if len(others) != 1 || others[0].name != "lan1" || !equalPrefixes(others[0].vips, []netip.Prefix{vipOther, exclOther}) {
		t.Errorf("other interfaces = %+v, want lan1 with %s and %s", others, vipOther, exclOther)
	}
}

func equalPrefixes(a, b []netip.Prefix) bool { return slices.Equal(a, b) }

// A VIP and an excluded VIP on a second interface, the routes and rules
// come with MASTER and go with it; the second interface's VIPs are
// announced from it; the advert carries only virtual_ips.
func TestExtrasFollowMaster(t *testing.T) {
	cfg := extrasConfig()
	f := upLAN(cfg)
	lan1 := f.addIface("lan1", true, "198.51.100.1/24", "fe80::1/64")
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)

	for _, c := range []struct {
		addr   netip.Addr
		ifname string
	}{{vipA.Addr(), "lan0"}, {exclOwn.Addr(), "lan0"}, {vipOther.Addr(), "lan1"}, {exclOther.Addr(), "lan1"}} {
		if !d.holdsVIP(c.addr, c.ifname) {
			t.Errorf("MASTER: %s not on %s", c.addr, c.ifname)
		}
	}
	if on, _ := f.has("lan0", vipOther.Addr()); on {
		t.Errorf("%s is on lan0 too; it belongs on lan1 only", vipOther.Addr())
	}
	if held, _ := f.routes(); !held {
		t.Error("MASTER: routes and rules not held")
	}
	got := frameCounts(f.sentFrames(), lan1.Index)
	if got[vipOther.Addr()] == 0 || got[exclOther.Addr()] == 0 {
		t.Errorf("announcements on lan1 = %v, want %s and %s", got, vipOther.Addr(), exclOther.Addr())
	}
	if got[vipA.Addr()] != 0 {
		t.Errorf("%s announced on lan1; it is lan0's", vipA.Addr())
	}
	if got, want := d.Status().VirtualIPs, cfg.AdvertPrefixes(); !equalPrefixes(got, want) {
		t.Errorf("status VIPs = %v, want the advert's %v", got, want)
	}

	d.receive(now, advertFrom(t, cfg, peerA, 200))
	if d.m.State() != Backup {
		t.Fatalf("state %s after a higher priority's advert, want BACKUP", d.m.State())
	}
	for _, c := range []struct {
		addr   netip.Addr
		ifname string
	}{{vipA.Addr(), "lan0"}, {exclOwn.Addr(), "lan0"}, {vipOther.Addr(), "lan1"}, {exclOther.Addr(), "lan1"}} {
		if on, _ := f.has(c.ifname, c.addr); on {
			t.Errorf("BACKUP: %s still on %s", c.addr, c.ifname)
		}
	}
	if held, _ := f.routes(); held {
		t.Error("BACKUP: routes and rules still held")
	}
	if on, _ := f.has("lan1", netip.MustParseAddr("198.51.100.1")); !on {
		t.Error("lan1's own address was removed with the VIPs")
	}
}

// A Master whose second interface is missing stays Master (no fault, no
// exit), and holds that interface's VIPs and the pending routes once the
// link reports them; a shutdown then takes everything away.
func TestExtrasWaitForTheirInterface(t *testing.T) {
	cfg := extrasConfig()
	f := upLAN(cfg)
	f.setRouteErr(errors.New("route to 203.0.113.0/24: interface lan1: Link not found"))
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	if held, calls := f.routes(); held || calls == 0 {
		t.Fatalf("routes held %v after %d tries; want tried and pending", held, calls)
	}
	_, before := f.routes()
	d.extrasChanged(now, change{name: "wan9"})
	if _, calls := f.routes(); calls != before+1 {
		t.Errorf("a link change tried the pending routes %d times, want once", calls-before)
	}
	if n := strings.Count(d.log.String(), "interface of virtual IPs missing"); n != 1 {
		t.Errorf("the missing interface was logged %d times, want once", n)
	}

	lan1 := f.addIface("lan1", true, "198.51.100.1/24")
	f.setRouteErr(nil)
	d.extrasChanged(now, change{name: "lan1", index: lan1.Index})
	if d.m.State() != Master {
		t.Fatalf("state %s, want MASTER throughout", d.m.State())
	}
	if !d.holdsVIP(vipOther.Addr(), "lan1") || !d.holdsVIP(exclOther.Addr(), "lan1") {
		t.Error("lan1's VIPs not added when lan1 appeared")
	}
	if held, _ := f.routes(); !held {
		t.Error("the pending routes not added when lan1 appeared")
	}
	d.tick(now)
	if got := frameCounts(f.sentFrames(), lan1.Index); got[vipOther.Addr()] == 0 {
		t.Errorf("announcements on lan1 = %v, want %s announced when it appeared", got, vipOther.Addr())
	}
	_, settled := f.routes()
	d.extrasChanged(now, change{index: lan1.Index, addr: true})
	if _, calls := f.routes(); calls != settled {
		t.Error("routes in place were asked for again on an address change")
	}
	d.extrasChanged(now, change{name: "lan1", index: lan1.Index})
	if _, calls := f.routes(); calls != settled+1 {
		t.Error("a link change (which may have flushed the routes through it) did not have them looked at again")
	}

	// Someone deletes the VIP on lan1 while Master: it is put back.
	f.delAddr("lan1", vipOther.Addr())
	d.extrasChanged(now, change{index: lan1.Index, addr: true})
	if !d.holdsVIP(vipOther.Addr(), "lan1") {
		t.Error("the VIP deleted from lan1 while MASTER was not put back")
	}

	d.shutdown(now)
	if on, _ := f.has("lan1", vipOther.Addr()); on {
		t.Error("shutdown left the VIP on lan1")
	}
	if held, _ := f.routes(); held {
		t.Error("shutdown left the routes")
	}
}

// A VIP on the second interface that someone else put there is served as
// it is and never removed; the host's own addresses stay too.
func TestExtrasLeaveForeignVIP(t *testing.T) {
	cfg := extrasConfig()
	f := upLAN(cfg)
	f.addIface("lan1", true, "198.51.100.1/24", vipOther.String())
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	if !strings.Contains(d.log.String(), "not added by halb") {
		t.Error("the foreign VIP on lan1 was not reported")
	}
	d.receive(now, advertFrom(t, cfg, peerA, 200))
	if on, halb := f.has("lan1", vipOther.Addr()); !on || halb {
		t.Errorf("foreign VIP on lan1: on %v, halb's %v; want left as it was", on, halb)
	}
	if on, _ := f.has("lan1", exclOther.Addr()); on {
		t.Error("halb's own excluded VIP stayed on lan1")
	}
}
