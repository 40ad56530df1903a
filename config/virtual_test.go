package config

import (
	"net/netip"
	"reflect"
	"testing"
)

// Both forms of a virtual IP, the excluded ones, the routes and the rules
// decode into what the run time reads.
func TestVirtualDecode(t *testing.T) {
	cfg, err := Parse(with(t, "virtual_ips: [192.0.2.100/24]", `virtual_ips:
        - 192.0.2.100/24
        - {address: 198.51.100.100/24, interface: eth1}
        - {address: 192.0.2.101}
      virtual_ips_excluded:
        - {address: "2001:db8:1::100/64", interface: eth1}
        - 192.0.2.102/32
      virtual_routes:
        - {to: 203.0.113.0/24, via: 198.51.100.254, interface: eth1, src: 198.51.100.100, table: 0, metric: 10}
        - {to: 198.51.100.128/25, blackhole: true, table: 100}
      virtual_rules:
        - {from: 198.51.100.100/32, to: "", table: 100, priority: 100, iif: "", oif: "", fwmark: 0}
        - {to: "2001:db8:2::/48", table: 200, oif: eth1, fwmark: 7}`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in := cfg.VRRP.Instances[0]
	pfx := netip.MustParsePrefix
	wantVIPs := []VirtualIP{{Address: pfx("192.0.2.100/24")}, {pfx("198.51.100.100/24"), "eth1"}, {Address: pfx("192.0.2.101/32")}}
	if !reflect.DeepEqual(in.VirtualIPs, wantVIPs) {
		t.Errorf("virtual_ips = %v, want %v", in.VirtualIPs, wantVIPs)
	}
	wantExcluded := []VirtualIP{{pfx("2001:db8:1::100/64"), "eth1"}, {Address: pfx("192.0.2.102/32")}}
	if !reflect.DeepEqual(in.VirtualIPsExcluded, wantExcluded) {
		t.Errorf("virtual_ips_excluded = %v, want %v", in.VirtualIPsExcluded, wantExcluded)
	}
	if got, want := in.AdvertPrefixes(), []netip.Prefix{pfx("192.0.2.100/24"), pfx("198.51.100.100/24"), pfx("192.0.2.101/32")}; !reflect.DeepEqual(got, want) {
		t.Errorf("advert prefixes = %v, want %v (the excluded are not in the advert)", got, want)
	}
	if n := len(in.HeldVIPs()); n != 5 {
		t.Errorf("%d held VIPs, want 5", n)
	}
	wantRoutes := []VirtualRoute{
		{To: pfx("203.0.113.0/24"), Via: netip.MustParseAddr("198.51.100.254"), Interface: "eth1", Src: netip.MustParseAddr("198.51.100.100"), Metric: 10},
		{To: pfx("198.51.100.128/25"), Table: 100, Blackhole: true},
	}
	if !reflect.DeepEqual(in.VirtualRoutes, wantRoutes) {
		t.Errorf("virtual_routes = %+v, want %+v", in.VirtualRoutes, wantRoutes)
	}
	wantRules := []VirtualRule{
		{From: pfx("198.51.100.100/32"), Table: 100, Priority: 100},
		{To: pfx("2001:db8:2::/48"), Table: 200, OIF: "eth1", FWMark: 7},
	}
	if !reflect.DeepEqual(in.VirtualRules, wantRules) {
		t.Errorf("virtual_rules = %+v, want %+v", in.VirtualRules, wantRules)
	}
	if in.IPv6() || in.Version != 2 {
		t.Errorf("an IPv4 advert with an excluded IPv6 VIP: IPv6 %v, version %d; want IPv4, version 2", in.IPv6(), in.Version)
	}
	if !wantRules[1].IPv6(false) || wantRules[0].IPv6(true) || !(VirtualRule{Table: 1}).IPv6(true) {
		t.Error("a rule's family is that of its from, else its to, else the instance's")
	}
	if s := wantVIPs[1].String(); s != "198.51.100.100/24 on eth1" {
		t.Errorf("String = %q", s)
	}
}

// Each bad entry is refused with its field path and what to write.
func TestVirtualProblems(t *testing.T) {
	const vips = "virtual_ips: [192.0.2.100/24]"
	routes := func(r string) []string { return []string{vips, vips + "\n      virtual_routes: [" + r + "]"} }
	rules := func(r string) []string { return []string{vips, vips + "\n      virtual_rules: [" + r + "]"} }
	const inst = "vrrp.instances[0]"
	runProblemCases(t, []problemCase{
		{"vip on another interface", []string{vips, "virtual_ips: [192.0.2.100/24, {address: 198.51.100.1/24, interface: eth1}]"}, "", ""},
		{"bad vip text", []string{vips, "virtual_ips: [192.0.2.100/24, 192.0.2.300/24]"},
			inst + ".virtual_ips[1]", `"192.0.2.300/24" is not ADDRESS/LENGTH (like 192.0.2.100/24)`},
		{"bad vip address in a mapping", []string{vips, "virtual_ips: [192.0.2.100/24, {address: nope, interface: eth1}]"},
			inst + ".virtual_ips[1].address", `"nope" is not an IP address or ADDRESS/LENGTH`},
		{"vip mapping without address", []string{vips, "virtual_ips: [192.0.2.100/24, {interface: eth1}]"},
			inst + ".virtual_ips[1]", "an address is required"},
		{"vip a number", []string{vips, "virtual_ips: [192.0.2.100/24, 5]"},
			inst + ".virtual_ips[1]", "5 is not an IP address or ADDRESS/LENGTH, nor {address: 198.51.100.100/24, interface: eth1}"},
		{"vip unknown key", []string{vips, "virtual_ips: [192.0.2.100/24, {address: 192.0.2.9, dev: eth1}]"},
			inst + ".virtual_ips[1].dev", "dev"},
		{"vip bad interface", []string{vips, "virtual_ips: [192.0.2.100/24, {address: 192.0.2.9, interface: eth/1}]"},
			inst + ".virtual_ips[1].interface", `"eth/1" is not a valid interface name`},
		{"vip interface too long", []string{vips, "virtual_ips: [192.0.2.100/24, {address: 192.0.2.9, interface: abcdefghijklmnopq}]"},
			inst + ".virtual_ips[1].interface", "longer than the kernel's 15-character limit"},
		{"advert of two families", []string{vips, `virtual_ips: [192.0.2.100/24, {address: "2001:db8::1/64", interface: eth1}]`},
			inst + ".virtual_ips[1]", "or list it under virtual_ips_excluded"},
		{"excluded of the other family", []string{vips, vips + `
      virtual_ips_excluded: [{address: "2001:db8::1/64", interface: eth1}]`}, "", ""},
		{"excluded listed twice", []string{vips, vips + "\n      virtual_ips_excluded: [192.0.2.100/32]"},
			inst + ".virtual_ips_excluded[0]", "192.0.2.100 is listed twice"},
		{"excluded multicast", []string{vips, vips + "\n      virtual_ips_excluded: [224.0.0.9]"},
			inst + ".virtual_ips_excluded[0]", "is a multicast address"},
		{"excluded bad interface", []string{vips, vips + "\n      virtual_ips_excluded: [{address: 192.0.2.9, interface: 'a b'}]"},
			inst + ".virtual_ips_excluded[0].interface", "is not a valid interface name"},
		{"excluded is unicast_src", []string{vips, vips + "\n      virtual_ips_excluded: [192.0.2.1]"},
			inst + ".virtual_ips_excluded[0]", "192.0.2.1 is also vrrp.instances[0].unicast_src"},

		{"route", routes("{to: 203.0.113.0/24, via: 192.0.2.254}"), "", ""},
		{"route without destination", routes("{via: 192.0.2.254}"),
			inst + ".virtual_routes[0].to", "a destination is required"},
		{"route with host bits", routes("{to: 203.0.113.7/24, via: 192.0.2.254}"),
			inst + ".virtual_routes[0].to", "203.0.113.7/24 has host bits set: write the network, 203.0.113.0/24"},
		{"route without gateway or interface", routes("{to: 203.0.113.0/24}"),
			inst + ".virtual_routes[0]", "a route needs via: GATEWAY, interface: NAME or both (or blackhole: true)"},
		{"blackhole with a gateway", routes("{to: 203.0.113.0/24, via: 192.0.2.254, blackhole: true}"),
			inst + ".virtual_routes[0].blackhole", "remove via and interface"},
		{"route gateway of the other family", routes(`{to: 203.0.113.0/24, via: "2001:db8::1"}`),
			inst + ".virtual_routes[0].via", "2001:db8::1 is IPv6 but the route to 203.0.113.0/24 is IPv4"},
		{"route source of the other family", routes(`{to: "2001:db8:5::/48", interface: eth1, src: 192.0.2.100}`),
			inst + ".virtual_routes[0].src", "192.0.2.100 is IPv4 but the route to 2001:db8:5::/48 is IPv6"},
		{"route bad interface", routes("{to: 203.0.113.0/24, interface: eth:1}"),
			inst + ".virtual_routes[0].interface", `"eth:1" is not a valid interface name`},
		{"route table out of range", routes("{to: 203.0.113.0/24, interface: eth1, table: 4294967296}"),
			inst + ".virtual_routes[0].table", "out of range: use 0..4294967295"},
		{"route negative metric", routes("{to: 203.0.113.0/24, interface: eth1, metric: -1}"),
			inst + ".virtual_routes[0].metric", "out of range"},
		{"route listed twice", routes("{to: 203.0.113.0/24, interface: eth1}, {to: 203.0.113.0/24, via: 192.0.2.254}"),
			inst + ".virtual_routes[1]", "already virtual_routes[0]"},
		{"route unknown key", routes("{to: 203.0.113.0/24, gw: 192.0.2.254}"),
			inst + ".virtual_routes[0].gw", "gw"},

		{"rule", rules("{from: 192.0.2.100/32, table: 100}"), "", ""},
		{"rule without table", rules("{from: 192.0.2.100/32}"),
			inst + ".virtual_rules[0].table", "a rule needs the routing table it looks up"},
		{"rule of two families", rules(`{from: 192.0.2.100/32, to: "2001:db8::/32", table: 100}`),
			inst + ".virtual_rules[0].to", "a rule matches one family; write two rules"},
		{"rule with host bits", rules("{from: 192.0.2.100/24, table: 100}"),
			inst + ".virtual_rules[0].from", "has host bits set: write the network, 192.0.2.0/24"},
		{"rule bad iif", rules("{iif: 'a/b', table: 100}"),
			inst + ".virtual_rules[0].iif", "is not a valid interface name"},
		{"rule bad oif", rules("{oif: abcdefghijklmnopq, table: 100}"),
			inst + ".virtual_rules[0].oif", "15-character limit"},
		{"rule fwmark out of range", rules("{fwmark: -2, table: 100}"),
			inst + ".virtual_rules[0].fwmark", "out of range: use 0..4294967295"},
		{"rule priority out of range", rules("{priority: 4294967296, table: 100}"),
			inst + ".virtual_rules[0].priority", "out of range"},
		{"rule listed twice", rules("{from: 192.0.2.100/32, table: 100}, {from: 192.0.2.100/32, table: 100}"),
			inst + ".virtual_rules[1]", "is the same rule as virtual_rules[0]"},
	})
}
