package health

import (
	"net/netip"
	"slices"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// Backends is the rule that turns a configured service and the health of
// its backends into the weights a data path programs. It is the only place
// this rule lives:
//
//   - A healthy backend keeps its configured weight; an unhealthy one gets
//     weight 0, which drains it: no new flows, and the flows it has keep
//     their backend. A backend configured with weight 0 stays at 0. With
//     health_check none every backend counts as healthy, and so does one
//     that states does not mention (not checked yet: see the package
//     comment on the state at startup).
//   - A backend is live when it is healthy and its weight is above 0. When
//     fewer backends than quorum are live (quorum below 1 counts as 1), the
//     service has lost quorum: every backend gets weight 0 and, when
//     sorry_backend is set, it becomes the one backend with weight 1 (the
//     listed backend itself when it is also one of them). Without a sorry
//     backend the service is left with no backend to take new flows, and
//     its new traffic is dropped.
//
// Backends are returned in configured order, the sorry backend last when
// it is not one of them. Quorum counts backends where keepalived's quorum
// counts the weights of live servers, and keepalived keeps the remaining
// live servers when quorum is lost without a sorry server; halb's contract
// (spec halb.example.yaml, "fewer healthy backends than this:
// sorry_backend, else drop") says otherwise, and is what this follows.
func Backends(s config.Service, states map[Key]State) []service.Backend {
	lost := QuorumLost(s, states)
	out := make([]service.Backend, 0, len(s.Backends)+1)
	for _, b := range s.Backends {
		sb := service.Backend{Addr: b.Address, Port: uint16(b.Port), Weight: weight(s, b, states)}
		if lost {
			sb.Weight = 0
		}
		out = append(out, sb)
	}
	if !lost || !s.SorryBackend.IsValid() {
		return out
	}
	for i := range out {
		if out[i].AddrPort() == s.SorryBackend {
			out[i].Weight = 1
			return out
		}
	}
	return append(out, service.Backend{Addr: s.SorryBackend.Addr(), Port: s.SorryBackend.Port(), Weight: 1})
}

// QuorumLost reports whether fewer of s's backends are live than its
// quorum asks, by the rule of Backends; the daemon logs when it changes.
func QuorumLost(s config.Service, states map[Key]State) bool {
	return Live(s, states) < max(s.Quorum, 1)
}

// Live is how many of s's backends are live by the rule of Backends
// (healthy, weight above 0): the figure quorum is compared with.
func Live(s config.Service, states map[Key]State) int {
	live := 0
	for _, b := range s.Backends {
		if weight(s, b, states) > 0 {
			live++
		}
	}
	return live
}

// weight is b's weight by its health alone: configured, or 0 when it is
// unhealthy.
func weight(s config.Service, b config.Backend, states map[Key]State) uint32 {
	k := Key{Service: s.Name, Backend: netip.AddrPortFrom(b.Address, uint16(b.Port))}
	if b.Weight <= 0 || (s.HealthCheck.Type != TypeNone && states[k] == Unhealthy) {
		return 0
	}
	return uint32(b.Weight)
}

// Services is service.FromConfig with every service's backends weighted
// by Backends: what the daemon hands to the data path. Every pair of a
// service group gets the same weights, from the one check per backend.
func Services(cfg []config.Service, states map[Key]State) []service.Service {
	out := service.FromConfig(cfg)
	i := 0
	for _, c := range cfg {
		backends := Backends(c, states)
		for j := range c.Pairs() {
			out[i].Backends = backends
			if j > 0 {
				out[i].Backends = slices.Clone(backends) // each data-path service owns its slice
			}
			i++
		}
	}
	return out
}
