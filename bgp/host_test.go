package bgp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
)

func TestRouterID(t *testing.T) {
	local := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.1/8"),
		netip.MustParsePrefix("198.51.100.7/24"),
		netip.MustParsePrefix("192.0.2.9/24"),
		netip.MustParsePrefix("2001:db8::1/64"),
	}
	peer := config.BGPPeer{Address: netip.MustParseAddr("192.0.2.254")}
	cases := []struct {
		name  string
		cfg   config.BGP
		local []netip.Prefix
		want  string
	}{
		{"written", config.BGP{RouterID: netip.MustParseAddr("203.0.113.1")}, local, "203.0.113.1"},
		{"a peer's source", config.BGP{Peers: []config.BGPPeer{
			{SourceAddress: netip.MustParseAddr("2001:db8::1")},
			{SourceAddress: netip.MustParseAddr("192.0.2.77")},
		}}, local, "192.0.2.77"},
		{"the lowest global IPv4 address", config.BGP{Peers: []config.BGPPeer{peer}}, local, "192.0.2.9"},
		{"none", config.BGP{}, []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("127.0.0.1/8")}, "invalid IP"},
	}
	for _, c := range cases {
		if got := RouterID(&c.cfg, c.local).String(); got != c.want {
			t.Errorf("%s: RouterID = %s, want %s", c.name, got, c.want)
		}
	}
}

func TestHostProblems(t *testing.T) {
	local := []netip.Prefix{
		netip.MustParsePrefix("192.0.2.1/24"),
		netip.MustParsePrefix("203.0.113.5/32"),
		netip.MustParsePrefix("2001:db8::1/64"),
	}
	bfd := &config.BFD{MinRx: 1, MinTx: 1, Multiplier: 3}
	cases := []struct {
		name  string
		cfg   config.BGP
		local []netip.Prefix
		want  string // "path: text", "" for none
	}{
		{"fine", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("192.0.2.254"), BFD: bfd}}}, local, ""},
		{"fine over IPv6", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("2001:db8::fe"), BFD: bfd}}}, local, ""},
		{"no IPv4 for a router id", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("2001:db8::fe")}}},
			local[2:], "bgp.router_id: this host has no IPv4 address"},
		{"peer is this host", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("192.0.2.1")}}}, local,
			"bgp.peers[0].address: 192.0.2.1 is an address of this host"},
		{"bfd to a far peer", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("198.51.100.1"), BFD: bfd}}}, local,
			"bgp.peers[0].bfd: 198.51.100.1 is on no network directly connected"},
		{"bfd to a host route's address", config.BGP{Peers: []config.BGPPeer{{Address: netip.MustParseAddr("203.0.113.6"), BFD: bfd}}}, local,
			"bgp.peers[0].bfd:"},
	}
	for _, c := range cases {
		var got []string
		for _, p := range HostProblems(&c.cfg, c.local) {
			got = append(got, p.String())
		}
		switch {
		case c.want == "" && len(got) > 0:
			t.Errorf("%s: HostProblems = %q, want none", c.name, got)
		case c.want != "" && (len(got) != 1 || !strings.HasPrefix(got[0], c.want)):
			t.Errorf("%s: HostProblems = %q, want one starting %q", c.name, got, c.want)
		}
	}
	if _, err := checkHost(&cases[2].cfg, cases[2].local); err == nil || !strings.Contains(err.Error(), "bgp.router_id") {
		t.Errorf("checkHost with no router id = %v, want an error naming bgp.router_id", err)
	}
}
