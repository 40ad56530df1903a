package vrrp

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/halb-lb/halb/config"
)

// RFC 5798 §6.4.3: a Master that does not own the virtual router's
// addresses (priority 255 is the owner) MUST NOT accept packets addressed
// to them unless Accept_Mode is True; it still answers ARP and Neighbor
// Discovery for them. The kernel would otherwise take every packet for an
// address on the interface, so halb keeps a filter: AcceptRules says what
// it holds (this file, pure), AcceptTable puts it in nf_tables
// (accept_linux.go).
//
// The rules are a function of the configuration alone, not of the state:
// a Backup does not hold the VIPs, so its copy of the rules matches
// nothing. That way a failover never waits for a firewall change.
//
// Which instances are filtered is config.Instance.NoAccept's to say, so
// that `halb check` tells the same story. VRRPv2 (RFC 3768) has no
// Accept_Mode: its instances are never filtered, whatever `accept` says,
// as keepalived does outside vrrp_strict.

// IP protocol numbers the rules match on.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// AcceptRule is one rule of the Accept_Mode filter. Rules are evaluated in
// order and the first that matches decides; a packet no rule matches is
// accepted.
type AcceptRule struct {
	Dst netip.Addr // the VIP the packet is addressed to
	// Proto, when not 0, is the IP protocol the packet must carry.
	Proto uint8
	// Port, when not 0, is the TCP or UDP destination port.
	Port uint16
	// TypeMin..TypeMax, with Proto ICMP or ICMPv6, is the range of ICMP
	// types that match.
	TypeMin, TypeMax uint8
	Drop             bool   // drop the packet; else accept it
	Comment          string // why the rule is there, shown by `nft list`
}

// String renders the rule as nft(8) would list it.
func (r AcceptRule) String() string {
	var b strings.Builder
	if r.Dst.Is4() {
		fmt.Fprintf(&b, "ip daddr %s", r.Dst)
	} else {
		fmt.Fprintf(&b, "ip6 daddr %s", r.Dst)
	}
	switch r.Proto {
	case 0:
	case protoTCP, protoUDP:
		name := map[uint8]string{protoTCP: "tcp", protoUDP: "udp"}[r.Proto]
		if r.Port != 0 {
			fmt.Fprintf(&b, " %s dport %d", name, r.Port)
		} else {
			fmt.Fprintf(&b, " meta l4proto %s", name)
		}
	case protoICMP, protoICMPv6:
		name := map[uint8]string{protoICMP: "icmp", protoICMPv6: "icmpv6"}[r.Proto]
		if r.TypeMin == r.TypeMax {
			fmt.Fprintf(&b, " %s type %d", name, r.TypeMin)
		} else {
			fmt.Fprintf(&b, " %s type %d-%d", name, r.TypeMin, r.TypeMax)
		}
	default:
		fmt.Fprintf(&b, " meta l4proto %d", r.Proto)
	}
	if r.Drop {
		b.WriteString(" counter drop")
	} else {
		b.WriteString(" accept")
	}
	fmt.Fprintf(&b, " comment %q", r.Comment)
	return b.String()
}

// ICMP types a filtered VIP still accepts.
var (
	// Errors about traffic the node sent from the VIP, halb's services
	// among it (IPVS NAT answers from the VIP): dropping them would break
	// path MTU discovery for those services without a word. The kernel
	// acts on an ICMP error only when it matches a socket or connection.
	// Destination unreachable (3, fragmentation needed among it), time
	// exceeded (11), parameter problem (12).
	icmpErrors = [][2]uint8{{3, 3}, {11, 12}}
	// ICMPv6 types below 128 are the errors (RFC 4443 §2.1); 135-136 are
	// Neighbor Solicitation and Advertisement, which RFC 5798 §6.4.3 says
	// the Master must answer and which NUD sends unicast to the VIP.
	icmpv6Allowed = [][2]uint8{{1, 4}, {135, 136}}
)

// AcceptRules returns the filter that enforces Accept_Mode for c: for each
// VIP (excluded or not, on any interface) of an instance that is NoAccept, accept halb's own services on it (IPVS
// takes them after the filter; the eBPF data path takes them before it),
// ICMP errors and Neighbor Discovery, and drop the rest. It is empty when
// no instance is filtered.
func AcceptRules(c *config.Config) []AcceptRule {
	var rules []AcceptRule
	seen := map[netip.Addr]bool{}
	for _, in := range c.VRRP.Instances {
		if !in.NoAccept() {
			continue
		}
		for _, p := range in.HeldVIPs() { // the excluded too: the Master holds them
			vip := p.Address.Addr()
			if seen[vip] {
				continue
			}
			seen[vip] = true
			for _, s := range c.Services {
				for _, pair := range s.Pairs() { // a service group's listen pairs too
					if pair.Addr() != vip {
						continue
					}
					proto := uint8(protoTCP)
					if s.Protocol == "udp" {
						proto = protoUDP
					}
					rules = append(rules, AcceptRule{Dst: vip, Proto: proto, Port: pair.Port(),
						Comment: fmt.Sprintf("%s: service %s", in.Name, s.Name)})
				}
			}
			proto, allowed, what := uint8(protoICMP), icmpErrors, "icmp errors"
			if vip.Is6() {
				proto, allowed, what = protoICMPv6, icmpv6Allowed, "icmpv6 errors and neighbor discovery"
			}
			for _, t := range allowed {
				rules = append(rules, AcceptRule{Dst: vip, Proto: proto, TypeMin: t[0], TypeMax: t[1],
					Comment: fmt.Sprintf("%s: %s", in.Name, what)})
			}
			rules = append(rules, AcceptRule{Dst: vip, Drop: true,
				Comment: fmt.Sprintf("%s: accept false (RFC 5798 §6.4.3)", in.Name)})
		}
	}
	return rules
}
