// Package bgp is halb's BGP speaker: it announces the VIPs this node
// serves as host routes (/32, /128, next hop this node's address on each
// session) to the routers of the bgp: section, so that routers spread
// flows over many halb nodes with ECMP. It embeds GoBGP v4 as a library
// (github.com/osrg/gobgp/v4/pkg/server), with its logs bridged to halb's
// slog logger.
//
// It must never install a route: zebra is never enabled, so nothing
// reaches the kernel, and a global import policy rejects every route a
// peer sends (a router that sends a full table costs the memory of its
// Adj-RIB-In, where GoBGP keeps every route before any policy runs, some
// 1.7 KB a route, and nothing more: TestFRRFullTableCostsLittle). It exports only the paths halb announces
// (route type local), it never opens GoBGP's gRPC port, and it listens
// for BGP only when bgp.listen_port asks. It knows nothing of the data
// path, VRRP or health: the daemon says what to announce and when.
//
// A peer that is unreachable, refuses or drops the session is a state
// (Peers: its FSM state and last error), retried every connectRetry,
// never an error that stops the daemon.
//
// Each session carries one address family, the peer address's: an IPv4
// VIP is announced to the IPv4 peers, an IPv6 one to the IPv6 peers.
//
// BFD (a peer's bfd:) opens UDP port 3784 on every address once a peer
// has it (GoBGP's BFD is single-hop, asynchronous mode): it clashes with
// another BFD daemon on the same host (FRR's bfdd, BIRD). It starts a
// second after each session is established (bfd.go says why).
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/halb-lb/halb/config"
)

// ErrNotHostRoute is returned by Announce for a prefix that is not one
// address: halb announces a VIP, never the network it lies in.
var ErrNotHostRoute = errors.New("bgp: only host routes (/32, /128) are announced")

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("bgp: speaker closed")

// Speaker is one BGP speaker. Its methods are safe for concurrent use;
// what is announced before Run (or between restarts) is announced as
// soon as the sessions can carry it.
type Speaker struct {
	log *slog.Logger

	// op serialises what changes the GoBGP server: starting and
	// stopping it, peers, paths. Taken before mu, never inside it:
	// GoBGP's callbacks take mu alone, so op may be held across a call
	// into GoBGP.
	op       sync.Mutex
	cfg      config.BGP
	routerID netip.Addr
	srv      *server.BgpServer // nil when not running
	stopSrv  context.CancelFunc
	gen      int                    // counts the servers started, so that a late timer knows its own
	routes   map[netip.Prefix]Route // what the daemon wants announced

	// mu guards what GoBGP's callbacks write: the sessions' states, and
	// the timers that turn each peer's BFD on and off.
	mu        sync.Mutex
	track     map[netip.Addr]*peerTrack
	bfdTimers map[netip.Addr]*time.Timer

	closeOnce sync.Once
	closed    chan struct{} // closed by Close
	runDone   chan struct{} // closed when Run returns
	running   bool          // Run was called (guarded by op)
	live      bool          // Run has started the speaker and not yet stopped it (guarded by op)
}

// Route is one announced host route and why it is announced.
type Route struct {
	Prefix netip.Prefix
	Attrs  Attrs
	Reason string    // the daemon's words: "serving, 2 of 2 backends healthy"
	Since  time.Time // when it was first announced with these attributes
}

// New makes a speaker for cfg, which Validate accepted. It checks what
// only this host can say (RouterID, HostProblems) and starts nothing:
// Run does.
func New(cfg config.BGP, log *slog.Logger) (*Speaker, error) {
	local, err := LocalPrefixes()
	if err != nil {
		return nil, err
	}
	id, err := checkHost(&cfg, local)
	if err != nil {
		return nil, err
	}
	return &Speaker{
		log:       log.With("component", "bgp"),
		cfg:       cloneBGP(cfg),
		routerID:  id,
		routes:    map[netip.Prefix]Route{},
		track:     map[netip.Addr]*peerTrack{},
		bfdTimers: map[netip.Addr]*time.Timer{},
		closed:    make(chan struct{}),
		runDone:   make(chan struct{}),
	}, nil
}

// checkHost is the router ID of cfg on a host with the local prefixes,
// or a *config.Error listing every host problem (its File left for the
// caller, who knows the file): the bgp section is bad for this host, and
// `halb run` exits 2 on it as on any bad configuration.
func checkHost(cfg *config.BGP, local []netip.Prefix) (netip.Addr, error) {
	if problems := HostProblems(cfg, local); len(problems) > 0 {
		return netip.Addr{}, &config.Error{Problems: problems}
	}
	return RouterID(cfg, local), nil
}

// Run starts the speaker and keeps it until ctx is done or Close is
// called; it returns once GoBGP has stopped (every session closed with a
// Cease, the listener and the BFD socket closed). It fails only when the
// speaker cannot start at all (bgp.listen_port in use): peers that cannot
// be reached are retried, not errors.
func (s *Speaker) Run(ctx context.Context) error {
	s.op.Lock()
	if s.running {
		s.op.Unlock()
		return errors.New("bgp: Run called twice")
	}
	s.running = true
	defer close(s.runDone)
	select {
	case <-s.closed:
		s.op.Unlock()
		return ErrClosed
	default:
	}
	err := s.start()
	s.live = err == nil
	s.op.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.closed:
	}
	s.op.Lock()
	s.live = false
	s.stop()
	s.op.Unlock()
	return nil
}

// Close stops the speaker and waits for Run to return. The routes are
// withdrawn by the Cease that ends each session (halb does not keep
// graceful restart's stale routes alive on a stop it chose); a drain that
// must leave traffic time to move calls WithdrawAll and waits first.
func (s *Speaker) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	s.op.Lock()
	ran := s.running
	s.op.Unlock()
	if ran {
		<-s.runDone
	}
}

// start makes and starts the GoBGP server for the current config, with
// its policies, its peers and the routes wanted; the caller holds op.
func (s *Speaker) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	srv := server.NewBgpServer(server.LoggerOption(slog.New(newLogBridge(s.log.Handler(), s.peerError)), nil))
	go srv.Serve()
	fail := func(err error) error {
		cancel()
		srv.Stop()
		return err
	}
	listen := int32(-1)
	if s.cfg.ListenPort != 0 {
		listen = int32(s.cfg.ListenPort)
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:        uint32(s.cfg.ASN),
		RouterId:   s.routerID.String(),
		ListenPort: listen,
	}}); err != nil {
		return fail(fmt.Errorf("start bgp (asn %d, router id %s, listen port %d): %w", s.cfg.ASN, s.routerID, s.cfg.ListenPort, err))
	}
	if err := setPolicies(ctx, srv); err != nil {
		return fail(err)
	}
	if err := srv.WatchEvent(ctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.peerEvent}, server.WatchPeer()); err != nil {
		return fail(fmt.Errorf("watch bgp peers: %w", err))
	}
	s.srv, s.stopSrv = srv, cancel
	s.gen++
	for i := range s.cfg.Peers {
		s.addPeer(&s.cfg.Peers[i])
	}
	for _, r := range s.routes {
		s.addPath(r)
	}
	s.log.Info("bgp speaker started", "asn", uint32(s.cfg.ASN), "router_id", s.routerID, "listen_port", s.cfg.ListenPort, "peers", len(s.cfg.Peers))
	return nil
}

// stop ends the GoBGP server, if one runs; the caller holds op.
func (s *Speaker) stop() {
	if s.srv == nil {
		return
	}
	s.srv.Stop() // Cease to every peer, then waits for its loop
	s.stopSrv()  // ends the watch
	s.srv, s.stopSrv = nil, nil
	s.mu.Lock()
	for _, t := range s.track {
		t.state, t.since = gobgp.BGP_FSM_IDLE, time.Time{}
	}
	for addr, t := range s.bfdTimers {
		t.Stop()
		delete(s.bfdTimers, addr)
	}
	s.mu.Unlock()
	s.log.Info("bgp speaker stopped")
}

// setPolicies makes GoBGP import nothing a peer sends and export only
// what halb originates: one policy, accept local routes, and reject by
// default both ways. (GoBGP passes halb's own routes through the global
// import policy too, so a bare reject-all would drop them.)
func setPolicies(ctx context.Context, srv *server.BgpServer) error {
	const local = "halb-local-only"
	if err := srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: local,
		Statements: []*api.Statement{{
			Name:       local,
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}},
	}}); err != nil {
		return fmt.Errorf("add the bgp policy (local routes only): %w", err)
	}
	for _, dir := range []api.PolicyDirection{api.PolicyDirection_POLICY_DIRECTION_IMPORT, api.PolicyDirection_POLICY_DIRECTION_EXPORT} {
		if err := srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name:          "global",
			Direction:     dir,
			Policies:      []*api.Policy{{Name: local}},
			DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
		}}); err != nil {
			return fmt.Errorf("assign the bgp policy (local routes only) to %s: %w", dir, err)
		}
	}
	return nil
}

// Announce announces prefix, a host route, with attrs; reason says why,
// for `halb status`. Announcing what is already announced with the same
// attributes changes nothing; with others, the routers get the new ones.
func (s *Speaker) Announce(prefix netip.Prefix, attrs Attrs, reason string) error {
	if !prefix.IsValid() || prefix.Bits() != prefix.Addr().BitLen() || prefix.Addr().Is4In6() {
		return fmt.Errorf("announce %s: %w", prefix, ErrNotHostRoute)
	}
	prefix = prefix.Masked()
	s.op.Lock()
	defer s.op.Unlock()
	old, ok := s.routes[prefix]
	r := Route{Prefix: prefix, Attrs: attrs.clone(), Reason: reason, Since: time.Now()}
	if ok && old.Attrs.equal(attrs) {
		old.Reason = reason
		s.routes[prefix] = old
		return nil
	}
	s.routes[prefix] = r
	if s.srv != nil {
		return s.addPath(r)
	}
	return nil
}

// Withdraw stops announcing prefix; withdrawing what is not announced
// changes nothing.
func (s *Speaker) Withdraw(prefix netip.Prefix) error {
	prefix = prefix.Masked()
	s.op.Lock()
	defer s.op.Unlock()
	r, ok := s.routes[prefix]
	if !ok {
		return nil
	}
	delete(s.routes, prefix)
	if s.srv != nil {
		return s.deletePath(r)
	}
	return nil
}

// WithdrawAll withdraws every route: the first step of a drain. The
// sessions stay up, so that the routers hear the withdrawals at once.
func (s *Speaker) WithdrawAll() error {
	s.op.Lock()
	defer s.op.Unlock()
	var errs []error
	for p, r := range s.routes {
		delete(s.routes, p)
		if s.srv != nil {
			errs = append(errs, s.deletePath(r))
		}
	}
	return errors.Join(errs...)
}

// Announced lists what is announced, by prefix.
func (s *Speaker) Announced() []Route {
	s.op.Lock()
	defer s.op.Unlock()
	out := slices.Collect(maps.Values(s.routes))
	for i := range out {
		out[i].Attrs = out[i].Attrs.clone()
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return out
}

// Reconfigure applies a new bgp section: a peer added, removed or changed
// is added, removed or reset alone, and the sessions to the others stay
// up. A new asn, router ID (written, or derived from the host's
// addresses) or listen_port restarts the speaker, which
// drops every session (BGP cannot change them on a live session); if it
// cannot start again (listen_port in use), the error says why and the
// next Reconfigure tries again. The announced routes stay.
func (s *Speaker) Reconfigure(cfg config.BGP) error {
	local, err := LocalPrefixes()
	if err != nil {
		return err
	}
	id, err := checkHost(&cfg, local)
	if err != nil {
		return err
	}
	cfg = cloneBGP(cfg)
	s.op.Lock()
	defer s.op.Unlock()
	old := s.cfg
	s.cfg = cfg
	restart := old.ASN != cfg.ASN || s.routerID != id || old.ListenPort != cfg.ListenPort
	s.routerID = id
	s.forgetRemoved(old, cfg)
	if !s.live {
		return nil // Run starts with cfg
	}
	if restart || s.srv == nil { // s.srv is nil when the last restart failed
		s.log.Info("bgp global settings changed: restarting the speaker, every session drops",
			"asn", uint32(cfg.ASN), "router_id", id, "listen_port", cfg.ListenPort)
		s.stop()
		return s.start()
	}
	s.applyPeers(old.Peers, cfg.Peers)
	return nil
}

// applyPeers removes, adds and resets only the peers that differ between
// before and after; the caller holds op and the server runs.
func (s *Speaker) applyPeers(before, after []config.BGPPeer) {
	was := map[netip.Addr]config.BGPPeer{}
	for _, p := range before {
		was[p.Address] = p
	}
	for i := range after {
		p := &after[i]
		old, ok := was[p.Address]
		delete(was, p.Address)
		switch {
		case !ok:
			s.addPeer(p)
		case !samePeer(&old, p):
			s.log.Info("bgp peer changed: resetting its session", "peer", p.Address)
			s.deletePeer(p.Address)
			s.addPeer(p)
		}
	}
	for addr := range was {
		s.deletePeer(addr)
	}
}

// forgetRemoved drops the states of the peers cfg no longer has.
func (s *Speaker) forgetRemoved(old, cfg config.BGP) {
	keep := map[netip.Addr]bool{}
	for _, p := range cfg.Peers {
		keep[p.Address] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range old.Peers {
		if !keep[p.Address] {
			delete(s.track, p.Address)
		}
	}
}

// addPeer adds one peer to the running server. A peer GoBGP refuses (a
// TCP MD5 key the kernel does not take) is logged and shown in its
// state: the other peers go on.
func (s *Speaker) addPeer(p *config.BGPPeer) {
	s.mu.Lock()
	if s.track[p.Address] == nil {
		s.track[p.Address] = &peerTrack{}
	}
	s.mu.Unlock()
	if err := s.srv.AddPeer(context.Background(), &api.AddPeerRequest{Peer: apiPeer(&s.cfg, p, false)}); err != nil {
		s.log.Error("cannot add bgp peer", "peer", p.Address, "err", err)
		s.peerError(p.Address.String(), "add peer: "+err.Error())
		return
	}
	s.log.Info("bgp peer added", "peer", p.Address, "peer_asn", uint32(p.ASN), "port", p.Port, "bfd", p.BFD != nil)
}

func (s *Speaker) deletePeer(addr netip.Addr) {
	if err := s.srv.DeletePeer(context.Background(), &api.DeletePeerRequest{Address: addr.String()}); err != nil {
		s.log.Warn("cannot remove bgp peer", "peer", addr, "err", err)
		return
	}
	s.log.Info("bgp peer removed", "peer", addr)
}

// connectRetry is how long halb waits between attempts to open a session
// to a peer that does not answer or refuses, and before it tries again
// after a session dropped (GoBGP's defaults, 120s and 30s, would keep a
// node that comes back from traffic for minutes).
const connectRetry = 5 * time.Second

// gracefulRestartTime is the restart time advertised with graceful
// restart (RFC 4724 §3): how long a peer keeps halb's routes while its
// session is down.
const gracefulRestartTime = 120

// apiPeer is GoBGP's form of peer p, with its BFD session when bfd is
// true and p has one.
func apiPeer(b *config.BGP, p *config.BGPPeer, bfd bool) *api.Peer {
	fam := familyOf(p.Address)
	afi := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}}
	peer := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         uint32(p.ASN),
			AuthPassword:    p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:           uint64(connectRetry / time.Second),
			IdleHoldTimeAfterReset: uint64(connectRetry / time.Second),
			HoldTime:               uint64(p.HoldTime / time.Second),
			KeepaliveInterval:      uint64(p.KeepaliveInterval / time.Second),
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		AfiSafis:  []*api.AfiSafi{afi},
	}
	if p.SourceAddress.IsValid() {
		peer.Transport.LocalAddress = p.SourceAddress.String()
	}
	if p.EBGPMultihop > 0 && !b.IBGP(p) {
		peer.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.EBGPMultihop)}
	}
	if p.GracefulRestart {
		peer.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: gracefulRestartTime}
		afi.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	if p.BFD != nil && bfd {
		peer.Bfd = &api.BfdPeerConfig{
			Enabled:                  true,
			DesiredMinimumTxInterval: uint32(p.BFD.MinTx / time.Microsecond),
			RequiredMinimumReceive:   uint32(p.BFD.MinRx / time.Microsecond),
			DetectionMultiplier:      uint32(p.BFD.Multiplier),
		}
	}
	return peer
}

func familyOf(a netip.Addr) *api.Family {
	if a.Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

func samePeer(a, b *config.BGPPeer) bool {
	x, y := *a, *b
	x.BFD, y.BFD = nil, nil
	if (a.BFD == nil) != (b.BFD == nil) || a.BFD != nil && *a.BFD != *b.BFD {
		return false
	}
	return x == y
}

// cloneBGP copies cfg so that the caller's later changes do not reach it.
func cloneBGP(cfg config.BGP) config.BGP {
	cfg.Peers = slices.Clone(cfg.Peers)
	for i := range cfg.Peers {
		if b := cfg.Peers[i].BFD; b != nil {
			c := *b
			cfg.Peers[i].BFD = &c
		}
	}
	return cfg
}
