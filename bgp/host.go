package bgp

import (
	"fmt"
	"net/netip"

	"github.com/halb-lb/halb/config"
)

// RouterID is the BGP identifier cfg runs with on a host with the local
// prefixes: bgp.router_id, else the source_address of the first IPv4
// peer, else the lowest global IPv4 address of the host. Invalid when
// there is none (HostProblems says so).
func RouterID(cfg *config.BGP, local []netip.Prefix) netip.Addr {
	if cfg.RouterID.IsValid() {
		return cfg.RouterID
	}
	for _, p := range cfg.Peers {
		if p.SourceAddress.Is4() {
			return p.SourceAddress
		}
	}
	var best netip.Addr
	for _, p := range local {
		a := p.Addr()
		if a.Is4() && a.IsGlobalUnicast() && (!best.IsValid() || a.Less(best)) {
			best = a
		}
	}
	return best
}

// HostProblems is what is wrong with cfg on a host whose interfaces hold
// the local prefixes (LocalPrefixes): no router ID to be had, a peer that
// is this host, BFD towards a peer on no directly connected network. (A
// source_address the host does not have yet is not one: like a VRRP
// unicast_src it may come later, and until then the session's last error
// says why it does not start.) `halb check` shows them as
// warnings about the host it runs on; New refuses to start with them.
func HostProblems(cfg *config.BGP, local []netip.Prefix) []config.Problem {
	var problems []config.Problem
	add := func(path, format string, args ...any) {
		problems = append(problems, config.Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if !RouterID(cfg, local).IsValid() {
		add("bgp.router_id", "this host has no IPv4 address to take as the BGP router ID: set bgp.router_id to a unique IPv4 address (any 32-bit ID written as one, like 192.0.2.1)")
	}
	mine := map[netip.Addr]bool{}
	for _, p := range local {
		mine[p.Addr().WithZone("")] = true
	}
	for i, p := range cfg.Peers {
		path := fmt.Sprintf("bgp.peers[%d]", i)
		if mine[p.Address.WithZone("")] {
			add(path+".address", "%s is an address of this host: a session to it would be to itself; name the router's address", p.Address)
		}
		if p.BFD != nil && !connected(p.Address, local) {
			add(path+".bfd", "%s is on no network directly connected to this host, and BFD here is single-hop only (RFC 5881): remove bfd, or peer with a directly connected router", p.Address)
		}
	}
	return problems
}

// connected reports whether a lies in one of the local prefixes that is a
// network (a /32 or /128 host address is none).
func connected(a netip.Addr, local []netip.Prefix) bool {
	for _, p := range local {
		if p.Bits() < p.Addr().BitLen() && p.Contains(a.WithZone("")) {
			return true
		}
	}
	return false
}
