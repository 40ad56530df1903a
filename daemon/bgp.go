package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/halb-lb/halb/bgp"
	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/vrrp"
)

// bgpRunner is the daemon's BGP speaker while the configuration has a
// bgp: section: it runs the speaker on a goroutine it owns and waits for
// (stop), and it turns the daemon's decisions (decideAnnounce, one per
// service) into the host routes the speaker announces, one per VIP.
//
// A drain (SIGTERM, `halb drain`) withdraws every route and keeps them
// withdrawn, whatever the decisions say, until `halb undrain` or a
// restart.
type bgpRunner struct {
	log *slog.Logger
	sp  *bgp.Speaker

	cancel context.CancelFunc
	done   chan struct{} // closed when the speaker's Run has returned

	// mu serialises reconcile and drain, so that no decision taken
	// before a drain announces a route after it, and guards what status
	// reads.
	mu        sync.Mutex
	cfg       config.BGP
	drained   string // why every route is withdrawn; "" when not drained
	decisions []AnnouncementStatus
}

// startBGP makes the speaker for cfg and runs it. It fails only when the
// speaker cannot be made on this host (bgp.New: no router ID, a peer that
// is this host); a speaker that then cannot start (its listen port in use)
// is logged, and its peers show idle.
func startBGP(cfg config.BGP, log *slog.Logger) (*bgpRunner, error) {
	sp, err := bgp.New(cfg, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &bgpRunner{log: log, sp: sp, cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := sp.Run(ctx); err != nil && !errors.Is(err, bgp.ErrClosed) {
			log.Error("bgp speaker stopped", "err", err, "fix", "free bgp.listen_port or configure another, then reload")
		}
	}()
	return r, nil
}

// stop ends every session (a Cease, which withdraws halb's routes at each
// router) and waits for the speaker, at most until bound.
func (r *bgpRunner) stop(bound time.Duration) bool {
	r.cancel()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-r.done:
		return true
	case <-t.C:
		r.log.Error("did not stop in time; exiting without it", "what", "bgp speaker")
		return false
	}
}

// reconfigure applies a changed bgp: section: only the peers that
// changed are reset (bgp.Speaker.Reconfigure).
func (r *bgpRunner) reconfigure(cfg config.BGP) {
	if err := r.sp.Reconfigure(cfg); err != nil {
		r.log.Error("bgp settings not applied, keeping the running ones", "err", err)
		return
	}
	r.mu.Lock()
	r.cfg = cfg
	r.mu.Unlock()
}

// drainTime is how long a drain waits, by the running bgp: section.
func (r *bgpRunner) drainTime() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg.DrainTime
}

// drain withdraws every route and keeps them withdrawn, for why, until
// undrain. The sessions stay up, so that the routers hear it at once.
func (r *bgpRunner) drain(why string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drained = why
	var withdrawn []string
	for _, rt := range r.sp.Announced() {
		withdrawn = append(withdrawn, rt.Prefix.String())
	}
	if err := r.sp.WithdrawAll(); err != nil {
		r.log.Error("bgp drain: not every route withdrawn", "err", err)
	}
	r.decisions = slices.Clone(r.decisions)
	markDrained(r.decisions, why)
	r.log.Info("bgp routes withdrawn for a drain", "why", why, "routes", len(withdrawn))
	return withdrawn
}

// undrain ends a drain; the next reconcile announces again what the
// decisions want. It reports whether a drain was on.
func (r *bgpRunner) undrain() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := r.drained != ""
	r.drained = ""
	return was
}

// serviceFacts is what the daemon knows of the services at one moment,
// the inputs of decideAnnounce.
type serviceFacts struct {
	services []config.Service
	served   map[string]bool
	states   map[health.Key]health.State
	insts    []vrrp.Status
}

// decide is each announcing service's decision, one per VIP of a service
// group.
func decide(f serviceFacts) []AnnouncementStatus {
	var out []AnnouncementStatus
	for _, s := range f.services {
		if s.Announce.When == config.AnnounceNever || s.Announce.When == "" {
			continue
		}
		var vips []netip.Addr
		for _, p := range s.Pairs() {
			if slices.Contains(vips, p.Addr()) {
				continue
			}
			vips = append(vips, p.Addr())
			name, state := holderOf(p.Addr(), f.insts)
			ok, why := decideAnnounce(announceInput{Mode: s.Announce.When, Served: f.served[s.Name],
				Healthy: health.Live(s, f.states), Quorum: max(s.Quorum, 1), Instance: name, State: state})
			out = append(out, AnnouncementStatus{Service: s.Name, Prefix: hostRoute(p.Addr()).String(),
				Mode: s.Announce.When, Announced: ok, Reason: why, attrs: s.Announce})
		}
	}
	return out
}

// hostRoute is the route announced for vip: the address alone.
func hostRoute(vip netip.Addr) netip.Prefix {
	return netip.PrefixFrom(vip, vip.BitLen())
}

// reconcile makes the announced routes those the decisions want: a VIP
// is announced while one of its services wants it (several services on
// one VIP share its route; a port whose backends are all down does not
// take the others' away), with the attributes of the first of them in
// the configuration. While drained, nothing is.
func (r *bgpRunner) reconcile(decisions []AnnouncementStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[netip.Prefix]int{} // the first decision announcing each prefix
	for i, dc := range decisions {
		p := netip.MustParsePrefix(dc.Prefix)
		if _, ok := want[p]; !ok && dc.Announced {
			want[p] = i
		}
	}
	if r.drained != "" {
		clear(want)
		markDrained(decisions, r.drained)
	}
	for _, rt := range r.sp.Announced() {
		if _, ok := want[rt.Prefix]; !ok {
			if err := r.sp.Withdraw(rt.Prefix); err != nil {
				r.log.Error("bgp route not withdrawn", "prefix", rt.Prefix, "err", err)
			}
		}
	}
	for p, i := range want {
		attrs, err := bgp.AttrsOf(decisions[i].attrs)
		if err == nil {
			err = r.sp.Announce(p, attrs, decisions[i].Service+": "+decisions[i].Reason)
		}
		if err != nil {
			r.log.Error("bgp route not announced", "prefix", p, "service", decisions[i].Service, "err", err)
		}
	}
	r.logChanges(decisions)
	r.decisions = decisions
}

// markDrained turns decisions into what a drain for why makes of them:
// nothing announced, and what would be without it.
func markDrained(decisions []AnnouncementStatus, why string) {
	for i := range decisions {
		decisions[i].Announced = false
		decisions[i].Reason = "drained (" + why + "); without the drain: " + decisions[i].Reason
	}
}

// logChanges logs each service whose announcement changed since the last
// reconcile, with why.
func (r *bgpRunner) logChanges(decisions []AnnouncementStatus) {
	was := map[string]bool{}
	known := map[string]bool{}
	for _, d := range r.decisions {
		was[d.Service], known[d.Service] = d.Announced, true
	}
	for _, d := range decisions {
		if known[d.Service] && was[d.Service] == d.Announced {
			continue
		}
		if d.Announced {
			r.log.Info("service announced over bgp", "service", d.Service, "prefix", d.Prefix, "reason", d.Reason)
		} else {
			r.log.Info("service not announced over bgp", "service", d.Service, "prefix", d.Prefix, "reason", d.Reason)
		}
	}
}

// status is what `halb status` shows of BGP.
func (r *bgpRunner) status() *BGPStatus {
	st := &BGPStatus{Peers: []BGPPeerStatus{}, Routes: []string{}, Announcements: []AnnouncementStatus{}}
	for _, p := range r.sp.Peers() {
		ps := BGPPeerStatus{Address: p.Address.String(), ASN: p.ASN, State: p.State, PrefixesSent: p.Sent,
			PrefixesReceived: p.Received, UpdatesSent: p.UpdatesSent, UpdatesReceived: p.UpdatesReceived, LastError: p.LastError}
		if !p.Since.IsZero() {
			since := p.Since
			ps.Since = &since
		}
		st.Peers = append(st.Peers, ps)
	}
	for _, rt := range r.sp.Announced() {
		st.Routes = append(st.Routes, rt.Prefix.String())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st.ASN = uint32(r.cfg.ASN)
	st.Drained = r.drained
	st.Announcements = append(st.Announcements, slices.Clone(r.decisions)...)
	return st
}

// BGPStatus is the BGP part of `halb status`; absent without a bgp:
// section.
type BGPStatus struct {
	ASN uint32 `json:"asn"`
	// Drained says why every route is withdrawn (a drain, until `halb
	// undrain` or a restart); "" when not drained.
	Drained string          `json:"drained,omitempty"`
	Peers   []BGPPeerStatus `json:"peers"`
	// Routes are the host routes announced now.
	Routes []string `json:"routes"`
	// Announcements is each service with an announce mode, and whether
	// and why its VIP is announced.
	Announcements []AnnouncementStatus `json:"announcements"`
}

// BGPPeerStatus is one session.
type BGPPeerStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	State   string `json:"state"`
	// Since is when the session was established; absent when it is not.
	Since            *time.Time `json:"established_since,omitempty"`
	PrefixesSent     uint64     `json:"prefixes_sent"`
	PrefixesReceived uint64     `json:"prefixes_received"`
	UpdatesSent      uint64     `json:"updates_sent"`
	UpdatesReceived  uint64     `json:"updates_received"`
	LastError        string     `json:"last_error,omitempty"`
}

// AnnouncementStatus is one service's decision.
type AnnouncementStatus struct {
	Service   string `json:"service"`
	Prefix    string `json:"prefix"`
	Mode      string `json:"announce"`
	Announced bool   `json:"announced"`
	Reason    string `json:"reason"`

	attrs config.Announce
}

// wakeAnnounce has the loop decide the announcements again; it never
// blocks (a VRRP instance calls it on its own goroutine).
func (d *Daemon) wakeAnnounce() {
	select {
	case d.announceDue <- struct{}{}:
	default:
	}
}

// startBGP starts the speaker when the configuration has a bgp: section,
// places the announce: always VIPs (and puts back what a killed halb
// left), and announces what the decisions want.
func (d *Daemon) startBGP() error {
	d.bgpLive = true
	vips, err := newVIPHome(d.log, LockDir)
	if err != nil {
		return err
	}
	d.vips = vips
	if d.cfg.BGP != nil {
		r, err := startBGP(*d.cfg.BGP, d.log)
		if err != nil {
			return d.inFile(fmt.Errorf("bgp: %w", err))
		}
		d.bgp.Store(r)
	}
	d.placeVIPs()
	d.announce()
	return nil
}

// inFile names the configuration file and the lines in the bgp section
// this host refuses (bgp.HostProblems), so that `halb run` prints them as
// `halb check` prints any problem and exits 2 on them: the file is bad
// for this host.
func (d *Daemon) inFile(err error) error {
	var cerr *config.Error
	if errors.As(err, &cerr) && cerr.File == "" {
		cerr.File = d.path
		config.Locate(d.path, cerr.Problems)
	}
	return err
}

// placeVIPs puts the VIPs of the announce: always services on lo (and
// takes those no longer so announced off), vipHome.
func (d *Daemon) placeVIPs() {
	if d.vips == nil {
		return
	}
	if err := d.vips.apply(alwaysVIPs(d.cfg.Services)); err != nil {
		d.log.Error("announce: always vips not fully placed on lo; the data path serves their services all the same", "err", err)
	}
}

// removeVIPs puts back what placeVIPs changed on the host, at stop.
func (d *Daemon) removeVIPs() {
	if d.vips == nil {
		return
	}
	if err := d.vips.remove(); err != nil {
		d.log.Error("bgp vips not fully removed; the next halb run tries again", "err", err, "state", d.vips.state)
	}
}

// stopBGP stops the speaker, if one runs, within shutdownTimeout.
func (d *Daemon) stopBGP() {
	if r := d.bgp.Swap(nil); r != nil {
		r.stop(shutdownTimeout)
	}
}

// reconfigureBGP applies a reloaded bgp: section: a speaker starts, is
// reconfigured (unchanged sessions stay up), or stops when the section
// went. A speaker that cannot start on this host is logged, and tried
// again at the next reload.
func (d *Daemon) reconfigureBGP(cfg *config.BGP) {
	if !d.bgpLive {
		return
	}
	r := d.bgp.Load()
	switch {
	case r == nil && cfg != nil:
		nr, err := startBGP(*cfg, d.log)
		if err != nil {
			d.log.Error("bgp speaker not started; trying again at the next reload", "err", d.inFile(err))
			return
		}
		d.bgp.Store(nr)
		d.log.Info("bgp speaker added by a reload")
	case r != nil && cfg == nil:
		d.bgp.Store(nil)
		r.stop(shutdownTimeout)
		d.log.Info("bgp speaker removed by a reload: every session closed")
	case r != nil:
		r.reconfigure(*cfg)
	}
	d.placeVIPs()
}

// announce decides each service's announcement from what the daemon
// knows now and has the speaker announce and withdraw accordingly.
func (d *Daemon) announce() {
	r := d.bgp.Load()
	if r == nil {
		return
	}
	var states map[health.Key]health.State
	if d.health != nil {
		states = d.health.States()
	}
	r.reconcile(decide(serviceFacts{services: d.cfg.Services, served: d.served, states: states, insts: d.instances()}))
}

// drainBeforeStop withdraws every route on a stop signal when a speaker
// runs, and returns when to stop: after bgp.drain_time, during which
// the data path goes on serving what still arrives. It returns nil (stop
// now) without a speaker.
func (d *Daemon) drainBeforeStop(sig os.Signal) <-chan time.Time {
	r := d.bgp.Load()
	if r == nil {
		return nil
	}
	wait := r.drainTime()
	r.drain("stopping on " + sig.String())
	d.log.Info("halb draining before it stops", "signal", sig.String(), "drain_time", wait,
		"effect", "routes withdrawn, still serving; a second signal stops at once")
	return time.After(wait)
}
