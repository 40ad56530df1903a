package vrrp

import (
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
)

// Instance runs one configured virtual router: it feeds the state machine
// with adverts, timers and what the link says about its interface, and
// carries out the machine's actions on the link. It touches the system
// only through its link (link.go): the logic here is pure, and the tests
// run it over a fake link without root.
//
// It never needs a restart: a missing interface or address holds it in
// Fault, and the link event that brings them clears the fault.
type Instance struct {
	cfg   config.Instance
	log   *slog.Logger
	m     *Machine
	rules receiveRules
	link  link
	// runScript runs a track or notify script (runProgram on Linux).
	runScript runProgramFunc

	// Owned by the Run goroutine.
	ifc  iface // the interface as last seen; Index 0 while it is missing
	conn advertConn
	// vipIfc holds the VIPs and sends the announcements: the VMAC with
	// use_vmac, else the interface itself. vmacConn is the VMAC's socket
	// (setupVMAC): unless vmac_xmit_base it sends the adverts, so that
	// they carry the virtual MAC (RFC 5798 §7.3); in multicast mode it
	// receives them.
	vipIfc   iface
	vmacConn advertConn
	src      netip.Addr // the advert source: unicast_src, else the interface's own
	lladdr   netip.Addr // IPv6: the interface's link-local address
	garp     garpSchedule

	// What a Master holds beside the VIPs on vipIfc (extras.go).
	vips          []netip.Prefix // the VIPs on the instance's own interface
	others        []otherIfc     // the VIPs on other interfaces
	routesPending bool           // routes or rules the kernel did not take yet
	routesWarned  bool

	// ctx and loops: the Run that owns the goroutines the instance
	// starts (readers of its sockets, track scripts, the notifier); Run
	// waits for every one of them before it returns.
	ctx     context.Context
	loops   sync.WaitGroup
	adverts chan packetIn // from the readers to the Run loop

	notify *notifier // nil without notify scripts

	// conflicts answers other hosts' claims on the VIPs while Master
	// (conflict.go); nil otherwise.
	conflicts conflictWatcher

	// conflictDue carries from the watch the claims whose answer is due:
	// the Run loop decides on them (answerDue).
	conflictDue chan conflictReport

	group     *Group // nil outside a sync group
	groupCmds chan groupCmd

	// operator carries `halb vrrp release|resume` to the Run loop
	// (release.go).
	operator chan operatorCmd
	// stopped is closed when Run returns, for the callers of the
	// operator's commands (ask): ctx is Run's own, set as it starts, and
	// not for other goroutines to read.
	stopped chan struct{}

	scripts       []scriptState // one per track script
	scriptResults chan scriptResult

	// host reads the track files and /proc (track_linux.go); files and
	// procs follow each track file and process, trackReadings brings
	// the poller's readings, procErr is the last failure to read /proc.
	host          trackHost
	files         []fileState
	procs         []procState
	trackReadings chan trackReading
	procErr       string

	mu     sync.Mutex
	status Status

	// onTransition, when set, is told of each change of state, on the
	// Run goroutine: it must not block.
	onTransition func(State)
}

// Status is a snapshot of an instance for `halb status` and metrics.
type Status struct {
	Name        string
	VRID        int
	Interface   string
	State       State
	Priority    uint8
	Since       time.Time
	Reason      string
	Faults      []string
	Sent        uint64
	Received    uint64
	Transitions uint64
	Drops       map[string]uint64
	// Conflicts counts, by VIP, the ARP / NA claims on a VIP this node
	// held as Master from a MAC not its own.
	Conflicts  map[string]uint64
	VirtualIPs []netip.Prefix

	// Tracking is each tracker's state as the last look saw it, in
	// configuration order: interfaces, scripts, files, processes.
	Tracking []string
	// Released: `halb vrrp release` holds the instance in Backup until
	// `halb vrrp resume`.
	Released bool

	// Excluded are the VIPs held as Master that the advert does not
	// carry (virtual_ips_excluded).
	Excluded []netip.Prefix
}

// newInstance prepares an instance over l; Run starts it. log carries
// the instance's name and VRID.
func newInstance(cfg config.Instance, log *slog.Logger, l link, runScript runProgramFunc) *Instance {
	in := &Instance{
		cfg:       cfg,
		log:       log,
		link:      l,
		runScript: runScript,
		m: NewMachine(Params{
			Version:        cfg.Version,
			Priority:       uint8(cfg.Priority),
			AdvertInterval: cfg.AdvertInterval,
			Preempt:        cfg.Preempt,
			PreemptDelay:   cfg.PreemptDelay,
			Primary:        cfg.UnicastSrc,
		}),
		rules: receiveRules{
			version:  cfg.Version,
			vrid:     uint8(cfg.VRID),
			interval: cfg.AdvertInterval,
			peers:    cfg.UnicastPeers,
		},
		src:           cfg.UnicastSrc,
		vips:          ownVIPs(cfg),
		others:        otherIfcs(cfg),
		ctx:           context.Background(),
		adverts:       make(chan packetIn, 64),
		conflictDue:   make(chan conflictReport, 16),
		scriptResults: make(chan scriptResult, 16),
		trackReadings: make(chan trackReading, 1),
		operator:      make(chan operatorCmd),
		stopped:       make(chan struct{}),
		files:         make([]fileState, len(cfg.TrackFiles)),
		procs:         make([]procState, len(cfg.TrackProcesses)),
	}
	if cfg.AuthPass != "" {
		in.rules.authType = AuthSimple
		copy(in.rules.authData[:], cfg.AuthPass)
	}
	in.notify = newNotifier(cfg, in.log, runScript)
	in.scripts = make([]scriptState, len(cfg.TrackScripts))
	for i := range in.scripts {
		in.scripts[i].ok = true
	}
	in.status = Status{Name: cfg.Name, VRID: cfg.VRID, Interface: cfg.Interface, State: Initialize,
		Priority: uint8(cfg.Priority), Since: time.Now(), Drops: map[string]uint64{}, Conflicts: map[string]uint64{}, VirtualIPs: cfg.AdvertPrefixes(),
		Excluded: excludedPrefixes(cfg)}
	return in
}

// JoinGroup makes the instance a member of a sync group; call it before
// Run.
func (in *Instance) JoinGroup(g *Group) {
	in.group = g
	in.groupCmds = make(chan groupCmd, 16)
	g.join(in.cfg.Name, in.groupCmds)
}

// OnTransition has f told of each change of state, on the instance's Run
// goroutine, after Status shows it; f must not block. Call it before Run.
// (The daemon's BGP announcements follow MASTER with it.)
func (in *Instance) OnTransition(f func(State)) { in.onTransition = f }

// Status returns a snapshot.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.status
	s.Drops = make(map[string]uint64, len(in.status.Drops))
	for k, v := range in.status.Drops {
		s.Drops[k] = v
	}
	s.Conflicts = make(map[string]uint64, len(in.status.Conflicts))
	for k, v := range in.status.Conflicts {
		s.Conflicts[k] = v
	}
	s.Faults = slices.Clone(in.status.Faults)
	s.Tracking = slices.Clone(in.status.Tracking)
	return s
}

// Run runs the instance until ctx ends; then it gives up the VIPs and, if
// it was Master, tells the backups with a priority-0 advert. It returns
// once every goroutine it started has ended.
func (in *Instance) Run(ctx context.Context) error {
	defer close(in.stopped)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in.ctx = ctx
	changes := make(chan change, 64)
	if err := in.link.watch(ctx, changes); err != nil {
		return err
	}
	defer in.stopLoops(cancel)
	if in.notify != nil {
		in.loops.Go(in.notify.loop)
	}
	in.startScripts()
	in.startTrackers()
	if in.group != nil {
		in.group.enter() // shutdown exits
	}

	in.begin(time.Now())

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		in.arm(timer)
		select {
		case <-ctx.Done():
			in.shutdown(time.Now())
			return nil
		case c := <-changes:
			if in.concerns(c) {
				in.evaluate(time.Now())
			}
			in.extrasChanged(time.Now(), c)
		case p := <-in.adverts:
			in.receive(time.Now(), p)
		case r := <-in.scriptResults:
			in.scriptResult(time.Now(), r)
		case r := <-in.trackReadings:
			in.trackReading(time.Now(), r)
		case cmd := <-in.groupCmds:
			in.groupCmd(time.Now(), cmd)
		case cmd := <-in.operator:
			cmd.reply <- in.operatorCmd(time.Now(), cmd)
		case r := <-in.conflictDue:
			in.answerDue(time.Now(), r)
		case now := <-timer.C:
			in.tick(now)
		}
	}
}

// begin is the start of Run: a first look at the link, the VIPs a killed
// halb left taken off, the machine started.
func (in *Instance) begin(now time.Time) {
	in.evaluate(now)
	in.removeLeftovers()
	in.apply(now, in.m.Start(now))
}

// stopLoops ends what Run started and waits for it: the sockets close
// (their readers end), the context ends (the scripts, the link's watch
// and the notifier's loop end).
func (in *Instance) stopLoops(cancel context.CancelFunc) {
	cancel()
	in.closeConns()
	in.stopConflicts()
	if in.notify != nil {
		in.notify.close()
	}
	in.link.close()
	in.loops.Wait()
}

// removeLeftovers takes off the VIPs left behind by a halb that was
// killed: this node is not Master until the protocol says so. Only halb's
// own go; a VIP someone else put there stays, whatever the state.
func (in *Instance) removeLeftovers() {
	in.releaseExtras()
	if in.vipIfc.Index == 0 {
		return
	}
	if err := in.link.removeVIPs(in.vipIfc); err != nil {
		in.log.Warn("cannot remove leftover virtual IPs", "err", err)
	}
	for _, p := range in.foreignVIPs() {
		in.log.Warn("virtual IP is on the interface and halb did not add it; it stays whatever the state",
			"vip", p.String(), "interface", in.vipIfc.Name)
	}
}

// foreignVIPs lists the VIPs on the VIP interface that halb did not put
// there.
func (in *Instance) foreignVIPs() []netip.Prefix {
	have, err := in.link.addrs(in.vipIfc.Index)
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, e := range have {
		if in.isVIP(e.prefix.Addr()) && !e.halb {
			out = append(out, e.prefix)
		}
	}
	return out
}

// shutdown is the end of Run: priority 0 if Master, the VIPs given up,
// the sockets closed, the VMAC removed, the notifier's STOP call made
// (and the sync group's, when this is its last member to stop).
func (in *Instance) shutdown(now time.Time) {
	in.apply(now, in.m.Shutdown(now))
	in.closeConns()
	if in.cfg.UseVMAC && in.ifc.Index != 0 {
		// Without its base interface the VMAC is gone too: the
		// kernel deletes a macvlan with its parent.
		if err := in.link.removeVMAC(in.ifc); err != nil {
			in.log.Warn("cannot remove the VMAC interface", "err", err)
		}
	}
	// The group's STOP call (the last member's exit) runs beside the
	// instance's own, so that both fit in the stop's bounds.
	var group sync.WaitGroup
	if in.group != nil {
		group.Go(in.group.exit)
	}
	if in.notify != nil {
		in.notify.close()
	}
	group.Wait()
}

// tick runs the machine's timers and the announcements that are due.
func (in *Instance) tick(now time.Time) {
	in.apply(now, in.m.Tick(now))
	in.announceDue(now)
}

// groupCmd carries out what the sync group asks of the instance.
func (in *Instance) groupCmd(now time.Time, cmd groupCmd) {
	if cmd.hold {
		in.apply(now, in.m.Hold(now, cmd.why))
	}
	if cmd.release {
		in.m.Release()
	}
	if cmd.follow != Initialize {
		in.apply(now, in.m.Follow(now, cmd.follow, cmd.why))
	}
}

// arm sets the timer to the earliest of the machine's deadline and the
// next announcement.
func (in *Instance) arm(t *time.Timer) {
	next := in.m.Deadline()
	if g := in.garp.next; !g.IsZero() && (next.IsZero() || g.Before(next)) {
		next = g
	}
	d := time.Hour
	if !next.IsZero() {
		d = max(time.Until(next), 0)
	}
	t.Reset(d)
}

// readLoop reads adverts from c until c is closed or ctx ends, and hands
// each to the Run loop. Errors other than the close come back off after
// a growing pause (readBackoff), so that a socket that fails at once
// cannot spin.
func readLoop(ctx context.Context, c advertConn, out chan<- packetIn, log *slog.Logger) {
	buf := make([]byte, 1500)
	var fails int
	for {
		p, err := c.receive(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			fails++
			wait := readBackoff(fails)
			if fails == 1 || wait == maxReadBackoff {
				log.Debug("advert socket read failed", "err", err, "failures", fails, "retry", wait)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		fails = 0
		select {
		case out <- p:
		case <-ctx.Done():
			return
		}
	}
}

// maxReadBackoff bounds the pause after repeated read errors: a socket
// that recovers is read again within it.
const maxReadBackoff = time.Second

// readBackoff is the pause after the n-th read error in a row: 10 ms,
// doubling, at most maxReadBackoff.
func readBackoff(n int) time.Duration {
	d := 10 * time.Millisecond
	for i := 1; i < n && d < maxReadBackoff; i++ {
		d *= 2
	}
	return min(d, maxReadBackoff)
}

// startReading reads c's adverts on a goroutine Run waits for.
func (in *Instance) startReading(c advertConn) {
	ctx := in.ctx
	in.loops.Go(func() { readLoop(ctx, c, in.adverts, in.log) })
}

// receive checks one advert and gives it to the machine.
func (in *Instance) receive(now time.Time, p packetIn) {
	if p.src == in.src {
		return // our own, looped back by a unicast peer list or a bridge
	}
	a, err := in.rules.accept(p.payload, p.src, p.dst, p.ttl)
	if err != nil {
		reason := dropReason(err)
		in.mu.Lock()
		in.status.Drops[reason]++
		in.mu.Unlock()
		if !errors.Is(err, ErrOtherVRID) {
			in.log.Debug("advert dropped", "from", p.src, "reason", reason, "err", err)
		}
		return
	}
	in.mu.Lock()
	in.status.Received++
	in.mu.Unlock()
	in.apply(now, in.m.Receive(now, Received{Priority: a.Priority, Interval: a.Interval, Src: p.src}))
}

// Reasons an advert that parsed is still dropped (RFC 5798 §7.1, RFC 3768
// §7.1). Parse's own errors (ErrChecksum, ErrLength, ...) are the others.
var (
	// ErrTTL: the TTL or hop limit of a multicast advert is not 255, so
	// it crossed a router (RFC 5798 §5.1.1.3, §5.1.2.3).
	ErrTTL = errors.New("vrrp: TTL/hop limit is not 255")
	// ErrOtherVRID: the advert is for another virtual router on the link.
	ErrOtherVRID = errors.New("vrrp: advert for another VRID")
	// ErrWrongVersion: a VRRP version other than the instance's.
	ErrWrongVersion = errors.New("vrrp: advert of the other VRRP version")
	// ErrAuth: VRRPv2 authentication type or password mismatch (RFC 2338
	// §5.3.6).
	ErrAuth = errors.New("vrrp: authentication mismatch")
	// ErrIntervalMismatch: a VRRPv2 advert interval other than ours
	// (RFC 3768 §7.1).
	ErrIntervalMismatch = errors.New("vrrp: advert interval differs from ours")
	// ErrNotPeer: in unicast mode, an advert from an address that is not
	// one of unicast_peers.
	ErrNotPeer = errors.New("vrrp: advert from an address that is not a unicast peer")
)

// receiveRules are what an instance checks of each advert it receives.
type receiveRules struct {
	version  int
	vrid     uint8
	interval time.Duration // v2 only
	authType uint8
	authData [8]byte
	peers    []netip.Addr // unicast mode; empty = multicast
}

// accept parses and checks one received advert; the error says why it was
// dropped.
func (r *receiveRules) accept(payload []byte, src, dst netip.Addr, ttl int) (*Advert, error) {
	// Unicast adverts are exempt, as in keepalived ("MUST verify that the
	// IPv4 TTL/IPv6 HL is 255 (but not if unicast)"): unicast mode exists
	// to cross routers, the source is checked against unicast_peers
	// instead, and keepalived sends IPv6 unicast adverts with the default
	// hop limit (64), setting only the multicast one to 255.
	if len(r.peers) == 0 && ttl != 255 {
		return nil, ErrTTL
	}
	a, err := Parse(payload, src, dst)
	if err != nil {
		return nil, err
	}
	if a.VRID != r.vrid {
		return nil, ErrOtherVRID
	}
	if a.Version != r.version {
		return nil, ErrWrongVersion
	}
	if len(r.peers) > 0 && !slices.Contains(r.peers, src) {
		return nil, ErrNotPeer
	}
	if a.Version == 2 {
		if a.AuthType != r.authType || subtle.ConstantTimeCompare(a.AuthData[:], r.authData[:]) != 1 {
			return nil, ErrAuth
		}
		if a.Interval != r.interval {
			return nil, ErrIntervalMismatch
		}
	}
	return a, nil
}

// dropReason names an error for counters and logs.
func dropReason(err error) string {
	for _, r := range dropReasons {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// dropReasons name, in Status.Drops, why an advert was dropped.
var dropReasons = []struct {
	err  error
	name string
}{
	{ErrTTL, "ttl"}, {ErrOtherVRID, "other_vrid"}, {ErrWrongVersion, "version"}, {ErrAuth, "auth"},
	{ErrIntervalMismatch, "interval"}, {ErrNotPeer, "not_peer"}, {ErrTruncated, "truncated"},
	{ErrVersion, "version"}, {ErrType, "type"}, {ErrFamily, "family"}, {ErrLength, "length"},
	{ErrChecksum, "checksum"}, {ErrInterval, "interval"},
}

// DropReasons are every reason Status.Drops can hold, sorted, so that a
// scrape has a zero for each before the first drop.
func DropReasons() []string {
	names := []string{"other"}
	for _, r := range dropReasons {
		names = append(names, r.name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// apply carries out the machine's actions in order.
func (in *Instance) apply(now time.Time, acts []Action) {
	for _, a := range acts {
		switch a.Kind {
		case SendAdvert:
			in.sendAdvert(a.Priority)
		case TakeOver:
			in.takeOver(now)
		case GiveUp:
			in.giveUp()
		case Reannounce:
			in.announce(in.cfg.GARPMasterRepeat)
		case Transition:
			in.transition(now, a)
		}
	}
	in.mu.Lock()
	in.status.Priority = in.m.Priority()
	in.status.Released = in.m.Released()
	in.mu.Unlock()
}

// transition logs and publishes a change of state, and tells the notify
// script and the sync group.
func (in *Instance) transition(now time.Time, a Action) {
	in.log.Info("transition", "from", a.From.String(), "to", a.To.String(), "reason", a.Reason)
	in.mu.Lock()
	in.status.State, in.status.Since, in.status.Reason = a.To, now, a.Reason
	in.status.Transitions++
	in.mu.Unlock()
	if in.notify != nil {
		in.notify.notify(a.To, in.m.Priority())
	}
	if in.group != nil {
		in.group.report(in.cfg.Name, a.From, a.To)
	}
	if in.onTransition != nil {
		in.onTransition(a.To)
	}
}

func (in *Instance) sendAdvert(priority uint8) {
	if in.conn == nil || !in.src.IsValid() {
		return
	}
	a := &Advert{
		Version:  in.cfg.Version,
		VRID:     uint8(in.cfg.VRID),
		Priority: priority,
		Interval: in.cfg.AdvertInterval,
		AuthType: in.rules.authType,
		AuthData: in.rules.authData,
	}
	for _, p := range in.cfg.AdvertPrefixes() {
		a.Addrs = append(a.Addrs, p.Addr())
	}
	c := in.conn
	if in.vmacConn != nil && !in.cfg.VMACXmitBase {
		c = in.vmacConn
	}
	if err := c.send(a, in.src); err != nil {
		in.log.Warn("advert not sent", "err", err)
		return
	}
	in.mu.Lock()
	in.status.Sent++
	in.mu.Unlock()
}

// takeOver puts the VIPs on the link, announces them and starts
// defending them.
func (in *Instance) takeOver(now time.Time) {
	if in.vipIfc.Index == 0 {
		return
	}
	foreign, err := in.link.addVIPs(in.vipIfc, in.vips)
	if err != nil {
		in.log.Error("cannot add virtual IPs", "err", err)
	}
	for _, p := range foreign {
		in.log.Warn("virtual IP already on the interface and not added by halb; served as it is and never removed",
			"vip", p.String(), "interface", in.vipIfc.Name)
	}
	in.holdExtras(now)
	in.garp.start(now)
	in.announceDue(now)
	in.watchConflicts()
}

func (in *Instance) giveUp() {
	in.garp.stop()
	in.stopConflicts()
	in.releaseExtras()
	if in.vipIfc.Index == 0 {
		return
	}
	if err := in.link.removeVIPs(in.vipIfc); err != nil {
		in.log.Error("cannot remove virtual IPs", "err", err)
	}
}

// isVIP reports whether a is one of the VIPs on the instance's interface.
func (in *Instance) isVIP(a netip.Addr) bool {
	return slices.ContainsFunc(in.vips, func(p netip.Prefix) bool { return p.Addr() == a })
}
