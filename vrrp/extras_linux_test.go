package vrrp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

// Two halb nodes on lan0 that also share lan1, as keepalived users with
// `dev` VIPs, virtual_routes and virtual_rules have them: what the
// MASTER holds on lan1, in its routing tables and rules, comes and goes
// with MASTER, and what someone else made stays.

const extrasVIP = "198.51.100.100"

// extrasConfig is node i's config: the advert's VIP on lan0, a VIP on
// lan1, a route through lan1 and a rule to table 100 (with a blackhole
// default there), and a route that the test makes first by hand.
func extrasNodeConfig(priority int, routes bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `log: {level: debug}
vrrp:
  instances:
    - name: VI_X
      interface: lan0
      vrid: 52
      version: 3
      priority: %d
      advert_interval: 100ms
      garp_master_delay: 1s
      garp_master_repeat: 1
      virtual_ips:
        - 192.0.2.100/24
        - {address: %s/24, interface: lan1}
      virtual_ips_excluded:
        - {address: "2001:db8:1::100/64", interface: lan1}
`, priority, extrasVIP)
	if routes {
		b.WriteString(`      virtual_routes:
        - {to: 203.0.113.0/24, via: 198.51.100.254, interface: lan1}
        - {to: 0.0.0.0/0, blackhole: true, table: 100}
        - {to: 198.51.100.0/25, interface: lan1, table: 200}
        - {to: "2001:db8:9::/48", via: "2001:db8:1::254", interface: lan1}
      virtual_rules:
        - {from: 198.51.100.100/32, table: 100, priority: 1000}
        - {to: "2001:db8:9::/48", table: 100}
`)
	}
	return b.String()
}

// connectSecond joins the two namespaces with a veth pair named lan1 on
// both sides, both ends up.
func (l *lan) connectSecond(t *testing.T) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan1"}, PeerName: "peer1",
		PeerNamespace: netlink.NsFd(l.ns[1].Handle())}
	if err := l.h[0].LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	peer, err := l.h[1].LinkByName("peer1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.h[1].LinkSetName(peer, "lan1"); err != nil {
		t.Fatal(err)
	}
	for i := range l.ns {
		link, err := l.h[i].LinkByName("lan1")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.h[i].LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		// The node's own address: without one, the kernel flushes the
		// routes through lan1 when the VIP, its last address, leaves.
		if err := l.h[i].AddrAdd(link, toAddr(netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/24", i+1)))); err != nil {
			t.Fatal(err)
		}
	}
}

// held is what a node holds of the extras, as its kernel lists them.
type held struct {
	vip, excluded, route, blackhole, rule bool
	route6, rule6                         bool
	foreign                               bool // the hand-made route in table 200
}

func heldBy(t testing.TB, h *netlink.Handle) held {
	t.Helper()
	var s held
	if link, err := h.LinkByName("lan1"); err == nil {
		list, _ := h.AddrList(link, netlink.FAMILY_ALL)
		for _, a := range list {
			switch a.IP.String() {
			case extrasVIP:
				s.vip = true
			case "2001:db8:1::100":
				s.excluded = true
			}
		}
	}
	for _, table := range []int{unix.RT_TABLE_MAIN, 100, 200} {
		list, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range list {
			dst := "0.0.0.0/0"
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			switch {
			case dst == "203.0.113.0/24" && r.Protocol == halbRouteProto:
				s.route = true
			case dst == "0.0.0.0/0" && table == 100 && r.Type == unix.RTN_BLACKHOLE && r.Protocol == halbRouteProto:
				s.blackhole = true
			case dst == "198.51.100.0/25" && table == 200 && r.Protocol != halbRouteProto:
				s.foreign = true
			}
		}
	}
	routes6, err := h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes6 {
		if r.Dst != nil && r.Dst.String() == "2001:db8:9::/48" && r.Protocol == halbRouteProto {
			s.route6 = true
		}
	}
	rules6, err := h.RuleList(netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules6 {
		if r.Table == 100 && r.Dst != nil && r.Dst.String() == "2001:db8:9::/48" && r.Protocol == halbRouteProto {
			s.rule6 = true
		}
	}
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == 100 && r.Priority == 1000 && r.Src != nil && r.Src.String() == extrasVIP+"/32" && r.Protocol == halbRouteProto {
			s.rule = true
		}
	}
	return s
}

var (
	allHeld    = held{vip: true, excluded: true, route: true, blackhole: true, rule: true, route6: true, rule6: true}
	noneHeld   = held{}
	vipsOnly   = held{vip: true, excluded: true}
	waitExtras = 20 * time.Second // bounds a hang only
)

// waitHeld waits until node's extras are want, and
// returns how long that took.
func waitHeld(t *testing.T, h *netlink.Handle, who string, want held) time.Duration {
	t.Helper()
	start := time.Now()
	var got held
	for time.Since(start) < waitExtras {
		if got = heldBy(t, h); got == want {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s holds %+v after %v, want %+v", who, got, waitExtras, want)
	return 0
}

// addForeignRoute makes, in the namespace behind h, the route the config
// names in table 200, as an operator would: halb must leave it alone.
func addForeignRoute(t *testing.T, h *netlink.Handle) {
	t.Helper()
	link, err := h.LinkByName("lan1")
	if err != nil {
		t.Fatal(err)
	}
	_, dst, _ := net.ParseCIDR("198.51.100.0/25")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Table: 200, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
}

// A VIP and a route on a second interface appear and leave with MASTER:
// on the node alone, then moved to the pre-empting node, then back on
// SIGTERM, which takes them all off the stopping node. A route someone
// else made stays on every node throughout.
func TestExtrasFollowMasterE2E(t *testing.T) {
	l := newLAN(t, false)
	l.connectSecond(t)
	for i := range l.ns {
		addForeignRoute(t, l.h[i])
	}
	a := newNode(t, "a", l.ns[0], extrasNodeConfig(150, true))
	b := newNode(t, "b", l.ns[1], extrasNodeConfig(100, true))
	withForeign := func(h held) held { h.foreign = true; return h }

	b.start(t)
	took := waitHeld(t, l.h[1], "b alone", withForeign(allHeld))
	t.Logf("b alone holds the VIPs, routes and rule after %v", took.Round(time.Millisecond))
	a.start(t)
	took = waitHeld(t, l.h[0], "a pre-empting", withForeign(allHeld))
	waitHeld(t, l.h[1], "b pre-empted", withForeign(noneHeld))
	t.Logf("a (150) took them over after %v", took.Round(time.Millisecond))

	a.stop(syscall.SIGTERM)
	waitHeld(t, l.h[1], "b after a's SIGTERM", withForeign(allHeld))
	if got := heldBy(t, l.h[0]); got != withForeign(noneHeld) {
		t.Errorf("a after its SIGTERM holds %+v, want only the foreign route", got)
	}
	if !strings.Contains(a.log.String(), "not added by halb") {
		t.Error("a did not report the route in table 200 that it found made by someone else")
	}
}

// A node whose lan1 is not there at boot becomes MASTER and keeps
// running (keepalived's boot problem: a route on a late interface made it
// exit); when lan1 appears, its VIPs and the routes through it follow. A
// reload that drops the routes and the rule takes them off; a shutdown
// takes off the rest.
func TestExtrasLateInterfaceE2E(t *testing.T) {
	l := newLAN(t, false)
	a := newNode(t, "a", l.ns[0], extrasNodeConfig(150, true))
	a.start(t)
	waitAddr(t, l.h[0], netip.MustParseAddr("192.0.2.100"), true, waitExtras)
	// Without lan1 only the table-100 blackhole and the rule can be in.
	waitHeld(t, l.h[0], "a without lan1", held{blackhole: true, rule: true, rule6: true})
	waitLog(t, a, "interface of virtual IPs missing")
	waitLog(t, a, "virtual routes or rules not in place yet")

	l.connectSecond(t)
	took := waitHeld(t, l.h[0], "a once lan1 is up", allHeld)
	t.Logf("lan1's VIPs and routes in place %v after it appeared", took.Round(time.Millisecond))
	if a.proc.Exited() {
		t.Fatal("halb exited over the interface that came late")
	}

	// lan1 down flushes the routes through it (the kernel's doing); up
	// again, halb puts them back.
	setLinkUp(t, l.h[0], "lan1", false)
	waitHeldRoute(t, l.h[0], false)
	setLinkUp(t, l.h[0], "lan1", true)
	took = waitHeld(t, l.h[0], "a once lan1 is up again", allHeld)
	t.Logf("the routes flushed with lan1 down are back %v after it came up", took.Round(time.Millisecond))

	if err := os.WriteFile(a.cfg, []byte(readConfigWithout(t, a.cfg)), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, a, "config reloaded")
	waitHeld(t, l.h[0], "a after a reload without routes", vipsOnly)

	a.stop(syscall.SIGTERM)
	if got := heldBy(t, l.h[0]); got != noneHeld {
		t.Errorf("after SIGTERM a holds %+v, want nothing", got)
	}
}

func setLinkUp(t *testing.T, h *netlink.Handle, name string, up bool) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	set := h.LinkSetUp
	if !up {
		set = h.LinkSetDown
	}
	if err := set(link); err != nil {
		t.Fatal(err)
	}
}

// waitHeldRoute waits until the route through lan1 is there or not.
func waitHeldRoute(t *testing.T, h *netlink.Handle, want bool) {
	t.Helper()
	if err := eventually(waitExtras, func() error {
		if heldBy(t, h).route != want {
			return fmt.Errorf("route through lan1 present = %v after %v", !want, waitExtras)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// readConfigWithout is the node's config with its routes and rules cut.
func readConfigWithout(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, _, ok := strings.Cut(string(data), "      virtual_routes:")
	if !ok {
		t.Fatal("no virtual_routes in the config")
	}
	return s
}

// extrasKeepalivedConfig is keepalived's side of the pair: the same
// virtual router, with its VIP on lan1 (`dev`) and a route through lan1.
const extrasKeepalivedConfig = `global_defs {
	router_id halb-extras
	vrrp_garp_master_delay 1
	vrrp_garp_master_repeat 1
}

vrrp_instance VI_X {
	state BACKUP
	interface lan0
	virtual_router_id 52
	version 3
	priority 100
	advert_int 0.1
	virtual_ipaddress {
		192.0.2.100/24
		198.51.100.100/24 dev lan1
	}
	virtual_routes {
		203.0.113.0/24 via 198.51.100.254 dev lan1
	}
}
`

// routeTo reports whether the main table has a route to dst, whoever
// made it.
func routeTo(t *testing.T, h *netlink.Handle, dst string) bool {
	t.Helper()
	list, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range list {
		if r.Dst != nil && r.Dst.String() == dst {
			return true
		}
	}
	return false
}

// waitKeepalivedHolds waits until keepalived's node holds its lan1 VIP
// and route, or holds neither.
func waitKeepalivedHolds(t *testing.T, h *netlink.Handle, want bool) {
	t.Helper()
	if err := eventually(waitExtras, func() error {
		if heldBy(t, h).vip != want || routeTo(t, h, "203.0.113.0/24") != want {
			return fmt.Errorf("keepalived's lan1 VIP and route present = %v after %v, want %v", !want, waitExtras, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// halb and keepalived, each with a VIP on lan1 and a route through it,
// hand both over to each other: halb pre-empts keepalived, and takes
// everything off when it stops, so that keepalived holds them again.
func TestExtrasKeepalivedInterop(t *testing.T) {
	if _, err := exec.LookPath("keepalived"); err != nil {
		netnstest.SkipOrFail(t, "keepalived not installed (apt-get install -y keepalived): %v", err)
	}
	l := newLAN(t, false)
	l.connectSecond(t)
	k := newKeepalived(t, "keepalived", l.ns[1], extrasKeepalivedConfig)
	a := newNode(t, "a", l.ns[0], extrasNodeConfig(150, true))

	k.start(t)
	waitKeepalivedHolds(t, l.h[1], true)
	a.start(t)
	took := waitHeld(t, l.h[0], "halb pre-empting keepalived", allHeld)
	waitKeepalivedHolds(t, l.h[1], false)
	t.Logf("halb (150) took the lan1 VIP and the routes from keepalived (100) after %v", took.Round(time.Millisecond))

	a.stop(syscall.SIGTERM)
	if got := heldBy(t, l.h[0]); got != noneHeld {
		t.Errorf("halb after its SIGTERM holds %+v, want nothing", got)
	}
	waitKeepalivedHolds(t, l.h[1], true)
}
