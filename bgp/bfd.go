package bgp

import (
	"context"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
)

// bfdSettle is how long after a session is established halb turns its
// BFD on. FRR's bgpd makes its BFD session again once the session is up
// (it has learnt the interface), and the new session's first packets say
// Down: a BFD session already up on halb's side takes that as the path
// failing (RFC 5880 §6.8.6) and GoBGP resets the BGP session, which comes
// back up and is reset again. Started after bgpd's change, halb's BFD
// session meets the router's final one. Until then the hold timer alone
// guards the session.
const bfdSettle = time.Second

// scheduleBFD turns the BFD session of peer on (bfdSettle after it is
// established) or off (at once, when it is not), so that each new
// session starts its BFD afresh. It is called from GoBGP's watch and
// does its work on a timer's goroutine: no call into GoBGP from the
// watch itself.
func (s *Speaker) scheduleBFD(addr netip.Addr, established bool) {
	s.op.Lock()
	gen := s.gen
	wants := false
	for _, p := range s.cfg.Peers {
		if p.Address == addr && p.BFD != nil {
			wants = true
		}
	}
	s.op.Unlock()
	if !wants {
		return
	}
	delay := time.Duration(0)
	if established {
		delay = bfdSettle
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.bfdTimers[addr]; t != nil {
		t.Stop()
	}
	s.bfdTimers[addr] = time.AfterFunc(delay, func() { s.setBFD(gen, addr, established) })
}

// setBFD updates peer addr's BFD on the server of generation gen, if it
// still runs and the session is still in the state the timer was set
// for. Updating BFD alone leaves the BGP session up.
func (s *Speaker) setBFD(gen int, addr netip.Addr, on bool) {
	s.op.Lock()
	defer s.op.Unlock()
	if s.srv == nil || s.gen != gen {
		return
	}
	s.mu.Lock()
	t := s.track[addr]
	current := t != nil && stateName(t.state) == StateEstablished
	s.mu.Unlock()
	if current != on {
		return // the session moved on meanwhile: its own timer follows
	}
	for i := range s.cfg.Peers {
		p := &s.cfg.Peers[i]
		if p.Address != addr || p.BFD == nil {
			continue
		}
		if _, err := s.srv.UpdatePeer(context.Background(), &api.UpdatePeerRequest{Peer: apiPeer(&s.cfg, p, on)}); err != nil {
			s.log.Warn("cannot change bfd of bgp peer", "peer", addr, "bfd", on, "err", err)
			return
		}
		s.log.Debug("bgp peer bfd changed", "peer", addr, "bfd", on)
	}
}
