package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
)

// Instance runs one configured virtual router: it feeds the state machine
// with adverts, timers and what netlink says about its interface, and
// carries out the machine's actions on sockets and addresses.
//
// It never needs a restart: a missing interface or address holds it in
// Fault, and the netlink event that brings them clears the fault.
type Instance struct {
	cfg   config.Instance
	log   *slog.Logger
	m     *Machine
	rules receiveRules

	// Owned by the Run goroutine.
	link netlink.Link
	conn *conn
	// vipLink holds the VIPs and sends the announcements: the VMAC with
	// use_vmac, else the interface itself; vipMAC is its MAC. vmacConn is
	// the VMAC's socket (setupVMAC): unless vmac_xmit_base it sends the
	// adverts, so that they carry the virtual MAC (RFC 5798 §7.3); in
	// multicast mode it receives them.
	vipLink  netlink.Link
	vipMAC   net.HardwareAddr
	vmacConn *conn
	src      netip.Addr // the advert source: unicast_src, else the interface's own
	lladdr   netip.Addr // IPv6: the interface's link-local address
	vips     *vipSet
	garpNext time.Time
	garpLeft int // bursts still due before refreshes take over

	notify *notifier // nil without a notify script

	// conflicts answers other hosts' claims on the VIPs while Master
	// (conflict.go); nil otherwise.
	conflicts *conflictWatch

	// conflictDue carries from the watch the claims whose answer is due:
	// the Run loop decides on them (answerDue).
	conflictDue chan conflictReport

	group     *Group // nil outside a sync group
	groupCmds chan groupCmd

	scripts []scriptState // one per track script

	mu     sync.Mutex
	status Status
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
}

// NewInstance prepares an instance; Run starts it.
func NewInstance(cfg config.Instance, log *slog.Logger) *Instance {
	in := &Instance{
		cfg: cfg,
		log: log.With("instance", cfg.Name, "vrid", cfg.VRID),
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
		src:         cfg.UnicastSrc,
		conflictDue: make(chan conflictReport, 16),
	}
	if cfg.AuthPass != "" {
		in.rules.authType = AuthSimple
		copy(in.rules.authData[:], cfg.AuthPass)
	}
	in.vips = newVIPSet(cfg.VirtualIPs)
	if cfg.Notify != "" {
		in.notify = newNotifier(cfg, in.log)
	}
	in.scripts = make([]scriptState, len(cfg.TrackScripts))
	for i := range in.scripts {
		in.scripts[i].ok = true
	}
	in.status = Status{Name: cfg.Name, VRID: cfg.VRID, Interface: cfg.Interface, State: Initialize,
		Priority: uint8(cfg.Priority), Since: time.Now(), Drops: map[string]uint64{}, Conflicts: map[string]uint64{}, VirtualIPs: cfg.VirtualIPs}
	return in
}

// JoinGroup makes the instance a member of a sync group; call it before
// Run.
func (in *Instance) JoinGroup(g *Group) {
	in.group = g
	in.groupCmds = make(chan groupCmd, 16)
	g.join(in.cfg.Name, in.groupCmds)
}

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
	return s
}

// Run runs the instance until ctx ends; then it gives up the VIPs and, if
// it was Master, tells the backups with a priority-0 advert.
func (in *Instance) Run(ctx context.Context) error {
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := in.subscribe(links, addrs, done); err != nil {
		return err
	}
	adverts := make(chan packetIn, 64)
	scriptResults := make(chan scriptResult, 16)
	scriptCtx, stopScripts := context.WithCancel(ctx)
	defer stopScripts()
	defer func() { in.conflicts.stop() }()
	runScripts(scriptCtx, in.cfg.Name, in.cfg.TrackScripts, scriptResults)

	in.evaluate(time.Now(), adverts)
	if in.vipLink != nil {
		// VIPs left behind by a halb that was killed: this node is not
		// Master until the protocol says so. Only halb's own go (vip_linux.go).
		if err := in.vips.remove(in.vipLink); err != nil {
			in.log.Warn("cannot remove leftover virtual IPs", "err", err)
		}
		for _, p := range in.vips.foreign(in.vipLink) {
			in.log.Warn("virtual IP is on the interface and halb did not add it; it stays whatever the state",
				"vip", p.String(), "interface", in.vipLink.Attrs().Name)
		}
	}
	in.apply(in.m.Start(time.Now()))

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		in.arm(timer)
		select {
		case <-ctx.Done():
			in.apply(in.m.Shutdown(time.Now()))
			in.closeConn()
			if in.cfg.UseVMAC && in.link != nil {
				// Without its base interface the VMAC is gone too: the
				// kernel deletes a macvlan with its parent.
				if err := removeVMAC(in.cfg.VRID, in.cfg.IPv6(), in.link.Attrs().Index); err != nil {
					in.log.Warn("cannot remove the VMAC interface", "err", err)
				}
			}
			if in.notify != nil {
				in.notify.close()
			}
			return nil
		case u, ok := <-links:
			if !ok {
				// The kernel dropped the subscription (ENOBUFS on a busy
				// host): subscribe again and look afresh, since events were
				// lost.
				links = make(chan netlink.LinkUpdate, 64)
				in.resubscribe(ctx, func() error {
					return netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: in.onSubscriptionError(done)})
				})
				in.evaluate(time.Now(), adverts)
				continue
			}
			if in.concerns(u) {
				in.evaluate(time.Now(), adverts)
			}
		case u, ok := <-addrs:
			if !ok {
				addrs = make(chan netlink.AddrUpdate, 64)
				in.resubscribe(ctx, func() error {
					return netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: in.onSubscriptionError(done)})
				})
				in.evaluate(time.Now(), adverts)
				continue
			}
			if (in.link != nil && u.LinkIndex == in.link.Attrs().Index) || (in.vipLink != nil && u.LinkIndex == in.vipLink.Attrs().Index) {
				in.evaluate(time.Now(), adverts)
			}
		case p := <-adverts:
			in.receive(time.Now(), p)
		case r := <-scriptResults:
			ts := in.cfg.TrackScripts[r.index]
			if in.scripts[r.index].update(ts, r.err) {
				if in.scripts[r.index].ok {
					in.log.Info("track script good again", "script", ts.Command[0], "successes", ts.Rise)
				} else {
					in.log.Warn("track script failing", "script", ts.Command[0], "failures", ts.Fall, "err", r.err, "output", r.output)
				}
				in.evaluate(time.Now(), adverts)
			}
		case cmd := <-in.groupCmds:
			in.groupCmd(cmd)
		case r := <-in.conflictDue:
			in.answerDue(r, adverts)
		case now := <-timer.C:
			in.apply(in.m.Tick(now))
			in.announceDue(now)
		}
	}
}

// groupCmd carries out what the sync group asks of the instance.
func (in *Instance) groupCmd(cmd groupCmd) {
	now := time.Now()
	if cmd.hold {
		in.apply(in.m.Hold(now, cmd.why))
	}
	if cmd.release {
		in.m.Release()
	}
	if cmd.follow != Initialize {
		in.apply(in.m.Follow(now, cmd.follow, cmd.why))
	}
}

// answerDue decides on a claim whose answer is due. A peer taking over by
// the protocol sent its advert before its claim: whatever the adverts and
// sync-group orders already waiting say is handled first, so that an
// instance that is giving the VIPs up (no longer Master, its watch
// stopped) does not answer and pull the clients back. Only the watch now
// running answers, and only as Master.
func (in *Instance) answerDue(r conflictReport, adverts <-chan packetIn) {
	for range cap(adverts) + cap(in.groupCmds) {
		select {
		case p := <-adverts:
			in.receive(time.Now(), p)
			continue
		case cmd := <-in.groupCmds:
			in.groupCmd(cmd)
			continue
		default:
		}
		break
	}
	if in.conflicts != r.watch || in.m.State() != Master {
		return
	}
	if r, ok := r.watch.answer(r); ok {
		in.onConflict(r)
	}
}

func (in *Instance) subscribe(links chan netlink.LinkUpdate, addrs chan netlink.AddrUpdate, done chan struct{}) error {
	onErr := in.onSubscriptionError(done)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to address updates: %w", err)
	}
	return nil
}

func (in *Instance) onSubscriptionError(done chan struct{}) func(error) {
	return func(err error) {
		select {
		case <-done:
			// Closing the subscription at shutdown interrupts its read.
		default:
			in.log.Error("netlink subscription", "err", err)
		}
	}
}

// resubscribe retries a subscription until it succeeds, a few times a
// second: without it the instance would be deaf to its interface.
func (in *Instance) resubscribe(ctx context.Context, sub func() error) {
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := sub()
		if err == nil {
			in.log.Warn("netlink subscription renewed", "attempt", attempt)
			return
		}
		in.log.Error("cannot renew netlink subscription", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// arm sets the timer to the earliest of the machine's deadline and the
// next announcement.
func (in *Instance) arm(t *time.Timer) {
	next := in.m.Deadline()
	if !in.garpNext.IsZero() && (next.IsZero() || in.garpNext.Before(next)) {
		next = in.garpNext
	}
	d := time.Hour
	if !next.IsZero() {
		d = max(time.Until(next), 0)
	}
	t.Reset(d)
}

// Fault reasons, one per condition, so each clears on its own.
func (in *Instance) faultMissing() string { return "interface " + in.cfg.Interface + " missing" }
func (in *Instance) faultDown() string    { return "interface " + in.cfg.Interface + " down" }
func (in *Instance) faultNoSrc() string {
	if in.cfg.UnicastSrc.IsValid() {
		return fmt.Sprintf("unicast_src %s not on %s", in.cfg.UnicastSrc, in.cfg.Interface)
	}
	if in.cfg.IPv6() {
		return "no IPv6 link-local address on " + in.cfg.Interface
	}
	return "no IPv4 address on " + in.cfg.Interface
}
func (in *Instance) faultSocket() string { return "VRRP socket on " + in.cfg.Interface }

// evaluate looks at the interface and its addresses as they are now and
// sets or clears the faults that depend on them. It runs at start and on
// every netlink event about the interface.
func (in *Instance) evaluate(now time.Time, adverts chan<- packetIn) {
	faults := map[string]bool{}
	defer func() { in.setFaults(now, faults) }()
	in.track(now, faults)

	link, err := netlink.LinkByName(in.cfg.Interface)
	if err != nil {
		in.link, in.vipLink = nil, nil
		in.closeConn()
		faults[in.faultMissing()] = true
		return
	}
	if in.link == nil || in.link.Attrs().Index != link.Attrs().Index || in.conn == nil {
		// New, or deleted and made again: a new index needs a new socket
		// (and a new multicast membership).
		in.closeConn()
		c, err := in.openConn(link)
		if err != nil {
			in.log.Warn("cannot open VRRP socket", "interface", in.cfg.Interface, "err", err)
			faults[in.faultSocket()] = true
		} else {
			in.conn = c
			go c.readLoop(adverts)
		}
	}
	in.link = link
	in.vipLink, in.vipMAC = link, link.Attrs().HardwareAddr
	if in.cfg.UseVMAC {
		in.setupVMAC(link, faults, adverts)
	}
	if !linkUp(link) {
		faults[in.faultDown()] = true
	}
	if src, ok := in.findSource(link); ok {
		in.src = src
		in.m.SetPrimary(src)
	} else {
		faults[in.faultNoSrc()] = true
	}
	if len(faults) == 0 && in.m.State() == Master {
		in.repairVIPs()
		in.watchConflicts()
	}
}

// concerns reports whether a link update is about the instance's own
// interface or one it tracks.
func (in *Instance) concerns(u netlink.LinkUpdate) bool {
	name := u.Attrs().Name
	if name == in.cfg.Interface || (in.link != nil && int(u.Index) == in.link.Attrs().Index) {
		return true
	}
	for _, ti := range in.cfg.TrackInterfaces {
		if ti.Name == name {
			return true
		}
	}
	return false
}

// track applies track_interfaces and track_scripts, as keepalived does:
// weight 0 faults the instance while the interface is down (the script
// fails); a negative weight is added to the priority while it is down
// (failing), a positive one while it is up (good). The result
// stays within 1..254, so tracking never makes an owner or a
// priority-0 advert.
func (in *Instance) track(now time.Time, faults map[string]bool) {
	delta := 0
	for _, ti := range in.cfg.TrackInterfaces {
		link, err := netlink.LinkByName(ti.Name)
		up := err == nil && linkUp(link)
		switch {
		case ti.Weight == 0 && !up:
			faults["tracked interface "+ti.Name+" down"] = true
		case ti.Weight < 0 && !up, ti.Weight > 0 && up:
			delta += ti.Weight
		}
	}
	for i, ts := range in.cfg.TrackScripts {
		ok := in.scripts[i].ok
		switch {
		case ts.Weight == 0 && !ok:
			faults["track script "+strings.Join(ts.Command, " ")+" failing"] = true
		case ts.Weight < 0 && !ok, ts.Weight > 0 && ok:
			delta += ts.Weight
		}
	}
	prio := in.cfg.Priority
	if delta != 0 {
		prio = min(max(prio+delta, 1), 254)
	}
	if uint8(prio) != in.m.Priority() {
		in.log.Info("priority changed by tracking", "from", in.m.Priority(), "to", prio)
		in.apply(in.m.SetPriority(now, uint8(prio)))
	}
}

// setFaults makes the machine's faults those in want: new ones first, so
// that a fault that replaces another never lets the instance out of Fault
// in between; each change is logged with its reason.
func (in *Instance) setFaults(now time.Time, want map[string]bool) {
	had := map[string]bool{}
	for _, r := range in.m.Faults() {
		had[r] = true
	}
	for r := range want {
		if !had[r] {
			in.log.Warn("fault", "reason", r)
			in.apply(in.m.SetFault(now, r))
		}
	}
	for r := range had {
		if !want[r] {
			in.log.Info("fault cleared", "reason", r)
			in.apply(in.m.ClearFault(now, r))
		}
	}
	in.publishFaults()
}

func linkUp(l netlink.Link) bool {
	a := l.Attrs()
	if a.Flags&net.FlagUp == 0 {
		return false
	}
	switch a.OperState {
	case netlink.OperDown, netlink.OperLowerLayerDown, netlink.OperNotPresent:
		return false
	}
	return true
}

// findSource picks the advert source: unicast_src when it is on the link,
// else the first address of the family (IPv6: link-local, RFC 5798
// §5.1.2.1) that is not a VIP; a VIP that halb did not add (the host's own
// address given as a VIP) only when there is no other, since it stays on
// the link whatever the state.
func (in *Instance) findSource(link netlink.Link) (netip.Addr, bool) {
	list, err := listAddrs(link.Attrs().Index)
	if err != nil {
		return netip.Addr{}, false
	}
	var first, fallback netip.Addr
	in.lladdr = netip.Addr{}
	for _, e := range list {
		addr := e.prefix.Addr()
		if addr.Is6() != in.cfg.IPv6() {
			continue
		}
		if addr.Is6() && addr.IsLinkLocalUnicast() && !in.lladdr.IsValid() {
			in.lladdr = addr
		}
		if in.cfg.UnicastSrc.IsValid() {
			if addr == in.cfg.UnicastSrc {
				first = addr
			}
			continue
		}
		if first.IsValid() || !(addr.Is4() || addr.IsLinkLocalUnicast()) {
			continue
		}
		switch {
		case !in.vips.owns(addr):
			first = addr
		case !in.vips.isOwn(e) && !fallback.IsValid():
			fallback = addr
		}
	}
	if !first.IsValid() {
		first = fallback
	}
	return first, first.IsValid()
}

func (in *Instance) openConn(link netlink.Link) (*conn, error) {
	a := link.Attrs()
	ifi := &net.Interface{Index: a.Index, Name: a.Name, MTU: a.MTU, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
	// With use_vmac, multicast adverts are read on the VMAC (setupVMAC):
	// joining here as well would read every advert twice.
	receive := !in.cfg.UseVMAC || len(in.cfg.UnicastPeers) > 0
	return openConn(ifi, in.cfg.IPv6(), in.cfg.UnicastSrc, in.cfg.UnicastPeers, receive)
}

func (in *Instance) closeConn() {
	if in.conn != nil {
		in.conn.close()
		in.conn = nil
	}
	if in.vmacConn != nil {
		in.vmacConn.close()
		in.vmacConn = nil
	}
}

// setupVMAC makes sure the instance's macvlan exists on link, that
// adverts leave from it (unless vmac_xmit_base) and, in multicast mode,
// that they are read on it; a failure faults the instance.
//
// Reading on the VMAC is what keepalived does, and the only place the
// peer's adverts can be read: a private macvlan takes every multicast
// frame whose source MAC is its own for itself, so the adverts of a peer
// sending from its VMAC (the same virtual MAC) never reach the base
// interface. The cost: joining the group there makes even a Backup's VMAC
// send IGMP / MLD reports, at the join and on each querier's query, and a
// switch then learns the virtual MAC at the Backup until the Master's
// next frame.
func (in *Instance) setupVMAC(link netlink.Link, faults map[string]bool, adverts chan<- packetIn) {
	v6 := in.cfg.IPv6()
	vm, err := ensureVMAC(link, in.cfg.VRID, v6)
	if err != nil {
		in.log.Warn("cannot set up the VMAC interface", "err", err)
		faults["VMAC "+vmacName(in.cfg.VRID, v6, link.Attrs().Index)] = true
		return
	}
	if in.vmacConn != nil && in.vmacConn.ifi.Index != vm.Attrs().Index {
		in.vmacConn.close()
		in.vmacConn = nil
	}
	in.vipLink, in.vipMAC = vm, vm.Attrs().HardwareAddr
	// Unicast adverts go to the base interface's address: they arrive
	// there.
	receive := len(in.cfg.UnicastPeers) == 0
	if (in.cfg.VMACXmitBase && !receive) || in.vmacConn != nil {
		return
	}
	a := vm.Attrs()
	ifi := &net.Interface{Index: a.Index, Name: a.Name, MTU: a.MTU, HardwareAddr: a.HardwareAddr, Flags: a.Flags}
	c, err := openConn(ifi, v6, netip.Addr{}, in.cfg.UnicastPeers, receive)
	if err != nil {
		in.log.Warn("cannot open the VMAC's VRRP socket", "err", err)
		faults["VMAC "+vmacName(in.cfg.VRID, v6, link.Attrs().Index)] = true
		return
	}
	in.vmacConn = c
	if receive {
		go c.readLoop(adverts)
	}
}

func (c *conn) readLoop(out chan<- packetIn) {
	buf := make([]byte, 1500)
	for {
		p, err := c.receive(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		out <- p
	}
}

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
	in.apply(in.m.Receive(now, Received{Priority: a.Priority, Interval: a.Interval, Src: p.src}))
}

// apply carries out the machine's actions in order.
func (in *Instance) apply(acts []Action) {
	for _, a := range acts {
		switch a.Kind {
		case SendAdvert:
			in.sendAdvert(a.Priority)
		case TakeOver:
			in.takeOver()
		case GiveUp:
			in.giveUp()
		case Reannounce:
			in.announce(in.cfg.GARPMasterRepeat)
		case Transition:
			in.log.Info("transition", "from", a.From.String(), "to", a.To.String(), "reason", a.Reason)
			in.mu.Lock()
			in.status.State, in.status.Since, in.status.Reason = a.To, time.Now(), a.Reason
			in.status.Transitions++
			in.mu.Unlock()
			if in.notify != nil {
				in.notify.notify(a.To, in.m.Priority())
			}
			if in.group != nil {
				in.group.report(in.cfg.Name, a.From, a.To)
			}
		}
	}
	in.mu.Lock()
	in.status.Priority = in.m.Priority()
	in.mu.Unlock()
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
	for _, p := range in.cfg.VirtualIPs {
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

func (in *Instance) takeOver() {
	if in.vipLink == nil {
		return
	}
	foreign, err := in.vips.add(in.vipLink)
	if err != nil {
		in.log.Error("cannot add virtual IPs", "err", err)
	}
	for _, p := range foreign {
		in.log.Warn("virtual IP already on the interface and not added by halb; served as it is and never removed",
			"vip", p.String(), "interface", in.vipLink.Attrs().Name)
	}
	in.garpLeft = 2 // one burst now, one after garp_master_delay
	in.garpNext = time.Now()
	in.announceDue(time.Now())
	in.watchConflicts()
}

func (in *Instance) giveUp() {
	in.garpNext, in.garpLeft = time.Time{}, 0
	in.conflicts.stop()
	in.conflicts = nil
	if in.vipLink == nil {
		return
	}
	if err := in.vips.remove(in.vipLink); err != nil {
		in.log.Error("cannot remove virtual IPs", "err", err)
	}
}

// repairVIPs puts back VIPs that someone deleted while this node is
// Master: the backups think they are here.
func (in *Instance) repairVIPs() {
	list, err := netlink.AddrList(in.vipLink, netlink.FAMILY_ALL)
	if err != nil {
		return
	}
	present := map[netip.Addr]bool{}
	for _, a := range list {
		if addr, ok := netip.AddrFromSlice(a.IP); ok {
			present[addr.Unmap()] = true
		}
	}
	for _, p := range in.cfg.VirtualIPs {
		if !present[p.Addr()] {
			in.log.Warn("virtual IP was removed while MASTER; restoring it", "vip", p.String())
			if _, err := in.vips.add(in.vipLink); err != nil {
				in.log.Error("cannot restore virtual IPs", "err", err)
			}
			in.garpLeft = max(in.garpLeft, 1)
			in.garpNext = time.Now()
			return
		}
	}
}

// announceDue sends the gratuitous ARPs / unsolicited NAs that are due:
// garp_master_repeat of each at takeover, again after garp_master_delay,
// then one round every garp_master_refresh (keepalived's schedule).
func (in *Instance) announceDue(now time.Time) {
	if in.garpNext.IsZero() || now.Before(in.garpNext) || in.m.State() != Master {
		return
	}
	in.announce(in.cfg.GARPMasterRepeat)
	if in.garpLeft > 0 {
		in.garpLeft--
	}
	switch {
	case in.garpLeft > 0 && in.cfg.GARPMasterDelay > 0:
		in.garpNext = now.Add(in.cfg.GARPMasterDelay)
	case in.cfg.GARPMasterRefresh > 0:
		in.garpNext = now.Add(in.cfg.GARPMasterRefresh)
	default:
		in.garpNext = time.Time{}
	}
}

func (in *Instance) announce(repeat int) {
	if in.vipLink == nil || len(in.vipMAC) == 0 {
		return
	}
	ifi := &net.Interface{Index: in.vipLink.Attrs().Index, Name: in.vipLink.Attrs().Name, HardwareAddr: in.vipMAC}
	c, err := packet.Listen(ifi, packet.Raw, 0, nil)
	if err != nil {
		in.log.Warn("cannot announce virtual IPs", "err", err)
		return
	}
	defer c.Close()
	for _, p := range in.cfg.VirtualIPs {
		var frame []byte
		var dst net.HardwareAddr
		if p.Addr().Is4() {
			frame, err = GratuitousARP(in.vipMAC, p.Addr())
			dst = broadcastMAC
		} else {
			src := in.lladdr
			if !src.IsValid() {
				src = p.Addr()
			}
			frame, err = UnsolicitedNA(in.vipMAC, src, p.Addr())
			dst = allNodesMAC
		}
		if err != nil {
			in.log.Warn("cannot build announcement", "vip", p.String(), "err", err)
			continue
		}
		for range repeat {
			if _, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
				in.log.Warn("announcement not sent", "vip", p.String(), "err", err)
				break
			}
		}
	}
}

func (in *Instance) publishFaults() {
	f := in.m.Faults()
	slices.Sort(f)
	in.mu.Lock()
	in.status.Faults = f
	in.mu.Unlock()
}

// watchConflicts makes sure that, as Master, the instance answers claims
// on its VIPs on the link that holds them; a failure is logged and tried
// again at the next netlink event about the interface.
func (in *Instance) watchConflicts() {
	if in.vipLink == nil || len(in.vipMAC) == 0 {
		return
	}
	if in.conflicts != nil && in.conflicts.ifindex == in.vipLink.Attrs().Index {
		return
	}
	in.conflicts.stop()
	in.conflicts = nil
	a := in.vipLink.Attrs()
	ifi := &net.Interface{Index: a.Index, Name: a.Name, MTU: a.MTU, HardwareAddr: in.vipMAC, Flags: a.Flags}
	var base net.HardwareAddr
	if in.link != nil {
		base = in.link.Attrs().HardwareAddr
	}
	w, err := startConflictWatch(ifi, base, in.lladdr, in.cfg.VirtualIPs, in.onConflict, in.conflictDue)
	if err != nil {
		in.log.Warn("cannot watch for address conflicts", "err", err)
		return
	}
	in.conflicts = w
}

// onConflict counts a claim on a VIP by another host, and logs an answer
// (at most one per VIP per conflictAnswerInterval, with how many claims
// came since the last); it runs on the watch's goroutines.
func (in *Instance) onConflict(r conflictReport) {
	if !r.answered {
		in.mu.Lock()
		in.status.Conflicts[r.vip.String()]++
		in.mu.Unlock()
		return
	}
	attrs := []any{"vip", r.vip.String(), "mac", r.mac.String(), "claims", r.claims}
	if r.err != nil {
		in.log.Error("address conflict: another host claims a virtual IP; answer not sent", append(attrs, "err", r.err)...)
		return
	}
	in.log.Warn("address conflict: another host claims a virtual IP; answered with our announcement", attrs...)
}
