package bgp

import (
	"context"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// Session states, as `halb status` prints them (RFC 4271 §8.2.2).
const (
	StateIdle        = "idle"
	StateConnect     = "connect"
	StateActive      = "active" // listening and retrying: the peer did not answer or refused
	StateOpenSent    = "opensent"
	StateOpenConfirm = "openconfirm"
	StateEstablished = "established"
)

// PeerStatus is one session as `halb status` and the metrics show it.
type PeerStatus struct {
	Address netip.Addr
	ASN     uint32
	State   string    // one of the State* constants
	Since   time.Time // when the session was established; zero when it is not
	// Sent is how many prefixes are advertised to the peer, Received how
	// many it sent (all of them rejected by the import policy).
	Sent, Received uint64
	// UpdatesSent and UpdatesReceived count UPDATE messages since the
	// peer was added.
	UpdatesSent, UpdatesReceived uint64
	// LastError is the last reason the session went down or could not
	// be opened ("" when none was seen).
	LastError string
}

// Uptime is how long the session has been established, at now.
func (p PeerStatus) Uptime(now time.Time) time.Duration {
	if p.Since.IsZero() {
		return 0
	}
	return now.Sub(p.Since)
}

// peerTrack is what the watch tells of one peer.
type peerTrack struct {
	state     gobgp.FSMState
	since     time.Time
	lastError string
}

// peerEvent records a session's change of state, from GoBGP's watch.
func (s *Speaker) peerEvent(ev *apiutil.WatchEventMessage_PeerEvent, at time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	addr := st.NeighborAddress
	reason := st.DisconnectMessage
	if reason == "" && st.DisconnectReason != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
		reason = st.DisconnectReason.String()
	}
	s.mu.Lock()
	t := s.track[addr]
	if t == nil {
		s.mu.Unlock()
		return // a peer removed meanwhile
	}
	was := t.state
	t.state = st.SessionState
	switch {
	case st.SessionState == gobgp.BGP_FSM_ESTABLISHED:
		t.since = at
	case was == gobgp.BGP_FSM_ESTABLISHED:
		t.since = time.Time{}
		if reason != "" {
			t.lastError = reason
		}
	}
	s.mu.Unlock()
	if up, down := st.SessionState == gobgp.BGP_FSM_ESTABLISHED, was == gobgp.BGP_FSM_ESTABLISHED; up != down {
		s.scheduleBFD(addr, up)
	}
	if st.SessionState == gobgp.BGP_FSM_ESTABLISHED || was == gobgp.BGP_FSM_ESTABLISHED {
		s.log.Info("bgp session state changed", "peer", addr, "state", stateName(st.SessionState), "was", stateName(was), "reason", reason)
	} else {
		s.log.Debug("bgp session state changed", "peer", addr, "state", stateName(st.SessionState), "was", stateName(was), "reason", reason)
	}
}

// peerError records why a session to peer could not be opened, from the
// log lines GoBGP writes about it.
func (s *Speaker) peerError(peer, msg string) {
	addr, err := netip.ParseAddr(peer)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.track[addr]; t != nil {
		t.lastError = msg
	}
}

// Peers lists the configured peers with their sessions' states, in the
// order of the bgp section.
func (s *Speaker) Peers() []PeerStatus {
	s.op.Lock()
	srv := s.srv
	peers := s.cfg.Peers
	s.op.Unlock()
	live := map[netip.Addr]*api.Peer{}
	if srv != nil {
		_ = srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			if a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress()); err == nil {
				live[a] = p
			}
		})
	}
	out := make([]PeerStatus, len(peers))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range peers {
		st := PeerStatus{Address: p.Address, ASN: uint32(p.ASN), State: StateIdle}
		if t := s.track[p.Address]; t != nil {
			st.State, st.Since, st.LastError = stateName(t.state), t.since, t.lastError
		}
		if lp := live[p.Address]; lp != nil {
			counts(&st, lp)
		}
		out[i] = st
	}
	return out
}

// counts fills in the prefix and message counts of a listed peer.
func counts(st *PeerStatus, p *api.Peer) {
	for _, af := range p.GetAfiSafis() {
		st.Sent += af.GetState().GetAdvertised()
		st.Received += af.GetState().GetReceived()
	}
	m := p.GetState().GetMessages()
	st.UpdatesSent = m.GetSent().GetUpdate()
	st.UpdatesReceived = m.GetReceived().GetUpdate()
}

func stateName(s gobgp.FSMState) string {
	switch s {
	case gobgp.BGP_FSM_CONNECT:
		return StateConnect
	case gobgp.BGP_FSM_ACTIVE:
		return StateActive
	case gobgp.BGP_FSM_OPENSENT:
		return StateOpenSent
	case gobgp.BGP_FSM_OPENCONFIRM:
		return StateOpenConfirm
	case gobgp.BGP_FSM_ESTABLISHED:
		return StateEstablished
	}
	return StateIdle
}
