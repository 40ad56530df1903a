package vrrp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/halb-lb/halb/config"
)

func TestAcceptRules(t *testing.T) {
	inst := func(name string, version, priority int, accept bool, vips ...string) config.Instance {
		in := config.Instance{Name: name, Version: version, Priority: priority, Accept: accept}
		for _, v := range vips {
			in.VirtualIPs = append(in.VirtualIPs, config.VirtualIP{Address: netip.MustParsePrefix(v)})
		}
		return in
	}
	web := config.Service{Name: "web", VIP: netip.MustParseAddr("192.0.2.100"), Port: 80, Protocol: "tcp"}
	dns := config.Service{Name: "dns", VIP: netip.MustParseAddr("192.0.2.100"), Port: 53, Protocol: "udp"}
	web6 := config.Service{Name: "web6", VIP: netip.MustParseAddr("2001:db8::100"), Port: 443, Protocol: "tcp"}
	other := config.Service{Name: "other", VIP: netip.MustParseAddr("198.51.100.7"), Port: 80, Protocol: "tcp"}

	for _, tc := range []struct {
		name      string
		instances []config.Instance
		services  []config.Service
		want      []string
	}{
		{
			name:      "v3 accept false: services, icmp errors, then drop",
			instances: []config.Instance{inst("VI_1", 3, 150, false, "192.0.2.100/24")},
			services:  []config.Service{web, dns, other},
			want: []string{
				`ip daddr 192.0.2.100 tcp dport 80 accept comment "VI_1: service web"`,
				`ip daddr 192.0.2.100 udp dport 53 accept comment "VI_1: service dns"`,
				`ip daddr 192.0.2.100 icmp type 3 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 icmp type 11-12 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
			},
		},
		{
			name:      "every VIP of the instance, no services",
			instances: []config.Instance{inst("VI_1", 3, 100, false, "192.0.2.100/24", "192.0.2.101/32")},
			want: []string{
				`ip daddr 192.0.2.100 icmp type 3 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 icmp type 11-12 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
				`ip daddr 192.0.2.101 icmp type 3 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.101 icmp type 11-12 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.101 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
			},
		},
		{
			name:      "IPv6: neighbor discovery stays open",
			instances: []config.Instance{inst("VI_6", 3, 150, false, "fe80::51/64", "2001:db8::100/64")},
			services:  []config.Service{web6},
			want: []string{
				`ip6 daddr fe80::51 icmpv6 type 1-4 accept comment "VI_6: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr fe80::51 icmpv6 type 135-136 accept comment "VI_6: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr fe80::51 counter drop comment "VI_6: accept false (RFC 5798 §6.4.3)"`,
				`ip6 daddr 2001:db8::100 tcp dport 443 accept comment "VI_6: service web6"`,
				`ip6 daddr 2001:db8::100 icmpv6 type 1-4 accept comment "VI_6: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr 2001:db8::100 icmpv6 type 135-136 accept comment "VI_6: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr 2001:db8::100 counter drop comment "VI_6: accept false (RFC 5798 §6.4.3)"`,
			},
		},
		{
			name: "an excluded VIP, of the other family, is filtered too",
			instances: []config.Instance{func() config.Instance {
				in := inst("VI_1", 3, 150, false, "192.0.2.100/24")
				in.VirtualIPsExcluded = []config.VirtualIP{{Address: netip.MustParsePrefix("2001:db8::100/64"), Interface: "eth1"}}
				return in
			}()},
			services: []config.Service{web6},
			want: []string{
				`ip daddr 192.0.2.100 icmp type 3 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 icmp type 11-12 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
				`ip6 daddr 2001:db8::100 tcp dport 443 accept comment "VI_1: service web6"`,
				`ip6 daddr 2001:db8::100 icmpv6 type 1-4 accept comment "VI_1: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr 2001:db8::100 icmpv6 type 135-136 accept comment "VI_1: icmpv6 errors and neighbor discovery"`,
				`ip6 daddr 2001:db8::100 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
			},
		},
		{
			name:      "a service group on the VIP: each of its pairs there",
			instances: []config.Instance{inst("VI_1", 3, 150, false, "192.0.2.100/24")},
			services: []config.Service{{Name: "group", Protocol: "tcp", Listen: []netip.AddrPort{
				netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("198.51.100.7:80"), netip.MustParseAddrPort("192.0.2.100:443")}}},
			want: []string{
				`ip daddr 192.0.2.100 tcp dport 80 accept comment "VI_1: service group"`,
				`ip daddr 192.0.2.100 tcp dport 443 accept comment "VI_1: service group"`,
				`ip daddr 192.0.2.100 icmp type 3 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 icmp type 11-12 accept comment "VI_1: icmp errors"`,
				`ip daddr 192.0.2.100 counter drop comment "VI_1: accept false (RFC 5798 §6.4.3)"`,
			},
		},
		{
			name:      "accept true: nothing",
			instances: []config.Instance{inst("VI_1", 3, 150, true, "192.0.2.100/24")},
			services:  []config.Service{web},
		},
		{
			name:      "the address owner (priority 255) accepts",
			instances: []config.Instance{inst("VI_1", 3, 255, false, "192.0.2.100/24")},
			services:  []config.Service{web},
		},
		{
			name:      "v2 has no Accept_Mode",
			instances: []config.Instance{inst("VI_1", 2, 150, false, "192.0.2.100/24")},
			services:  []config.Service{web},
		},
		{
			name: "only the filtered instance's VIPs",
			instances: []config.Instance{
				inst("VI_A", 3, 150, true, "198.51.100.7/24"),
				inst("VI_B", 3, 150, false, "192.0.2.100/24"),
			},
			services: []config.Service{other, web},
			want: []string{
				`ip daddr 192.0.2.100 tcp dport 80 accept comment "VI_B: service web"`,
				`ip daddr 192.0.2.100 icmp type 3 accept comment "VI_B: icmp errors"`,
				`ip daddr 192.0.2.100 icmp type 11-12 accept comment "VI_B: icmp errors"`,
				`ip daddr 192.0.2.100 counter drop comment "VI_B: accept false (RFC 5798 §6.4.3)"`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &config.Config{VRRP: config.VRRP{Instances: tc.instances}, Services: tc.services}
			var got []string
			for _, r := range AcceptRules(c) {
				got = append(got, r.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n%s\nwant:\n%s", join(got), join(tc.want))
			}
		})
	}
}

// The rules are a pure function of the configuration: the same input gives
// equal rules, so a reload can tell whether they changed.
func TestAcceptRulesStable(t *testing.T) {
	c := &config.Config{VRRP: config.VRRP{Instances: []config.Instance{{
		Name: "VI_1", Version: 3, Priority: 100,
		VirtualIPs: config.PlainVIPs(netip.MustParsePrefix("192.0.2.100/24")),
	}}}}
	a, b := AcceptRules(c), AcceptRules(c)
	if len(a) == 0 || !slices.Equal(a, b) {
		t.Errorf("two calls differ or are empty:\n%v\n%v", a, b)
	}
	c.VRRP.Instances[0].Accept = true
	if got := AcceptRules(c); len(got) != 0 {
		t.Errorf("accept: true still filters: %v", got)
	}
}

func join(lines []string) string {
	var s string
	for _, l := range lines {
		s += "  " + l + "\n"
	}
	return s
}
