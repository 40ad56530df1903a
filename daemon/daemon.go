// Package daemon is the life of `halb run`: it loads the configuration,
// decides the data path, and handles reloads and shutdown.
//
// It is the one place that knows about every part of halb; the parts never
// know about each other through it. It knows a data path only as a
// service.Datapath, opened by package datapaths, and shows what that
// reports (status, counters) as it comes: it must never branch on which
// data path it drives, nor reach into loader or ipvs (the probe too comes
// through datapaths: Host, Choose). A bad configuration, at start or on
// reload, must never be half-applied: at start it stops the daemon before
// anything is touched, on reload the running configuration stays.
//
// Its loop must never wait on anything unbounded (a file read, an instance
// that stops slowly, a script): SIGTERM is honoured within a bound
// whatever came before it. One daemon holds a control socket and a bpffs
// path (flock), and none touches the host before it holds them. Every
// goroutine it starts has an owner that stops it and waits for it, within
// that bound: Run for its servers and the health monitor (workers.go),
// vrrpSet for the instances, reader for a config read, bgpRunner for the
// BGP speaker (bgp.go), which announces what one rule decides per
// service (decideAnnounce, announce.go) and drains before a stop.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/datapaths"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/service"
)

// Bounds on what the daemon waits for, so that neither a reload nor a
// shutdown can hang: a config read that takes longer is given up (the
// running configuration stays), and at shutdown what has not stopped
// within its bound is left behind with a log line naming it. A config read
// has nothing to undo, so shutdown hardly waits for it.
const (
	readTimeout     = 10 * time.Second
	shutdownTimeout = 5 * time.Second
	readGrace       = time.Second
)

// Daemon is one running halb.
type Daemon struct {
	path  string
	host  datapaths.Host
	level slog.LevelVar
	log   *slog.Logger
	cfg   *config.Config
	// boot is the configuration the daemon started with: the keys of
	// restartKeys keep its values until the next start.
	boot *config.Config
	// load reads and checks the file (config.LoadWithWarnings); a test
	// may slow it.
	load func(path string) (*config.Config, []config.Problem, error)

	// Cleanup removes the data path at shutdown instead of leaving it
	// pinned (halb run --cleanup).
	Cleanup bool

	vrrp   *vrrpSet
	accept *acceptFilter
	mode   string           // the data path the probe chose
	dp     service.Datapath // nil while there are no services
	// bpffsLock is held from the first time the eBPF data path is needed.
	bpffsLock *lockFile
	health    *health.Monitor
	// healthChanged wakes the loop to re-apply when a backend's health
	// changes; it holds one pending wake-up at most.
	healthChanged chan struct{}
	// quorumLost is, by service name, whether the last apply found the
	// service below its quorum, so that a change is logged once.
	quorumLost map[string]bool
	// lastResync is when the data path was last applied for its resync.
	lastResync time.Time
	// retry is what the last apply's failure calls for: a retry on the
	// clock, with a backoff, whatever the data path's Resync, or none
	// when no retry can mend it (retryable).
	retry applyRetry
	clock func() time.Time // time.Now when nil; tests set their own
	// served is, by name, each service the last apply left programmed:
	// an input of the BGP announcements.
	served map[string]bool
	// bgp is the BGP speaker while the configuration has a bgp: section
	// and Run runs (bgp.go); bgpLive is set once Run has started it, so
	// that a reload adds or removes it.
	bgp     atomic.Pointer[bgpRunner]
	bgpLive bool
	// vips holds the announce: always VIPs on lo (vips.go); nil until
	// BGP is first configured.
	vips *vipHome
	// announceDue wakes the loop to decide the BGP announcements again
	// (a VRRP instance changed state, `halb undrain`); one pending
	// wake-up at most.
	announceDue chan struct{}
	// overrideCalls carries `halb backend` requests to the loop, which
	// owns the config; overrides holds what they set (override.go).
	overrideCalls chan overrideCall
	overrides     overrides
	datapathName  atomic.Pointer[string]           // for the control socket's goroutines
	datapath      atomic.Pointer[service.Datapath] // d.dp, for status and /metrics
	running       atomic.Pointer[config.Config]    // d.cfg, for the control socket's goroutines (flows)
	reloaded      lastReload                       // for /metrics
}

// New loads the configuration at path and sets up logging to w. A bad
// configuration returns the *config.Error unchanged so the caller can exit
// with the "bad config" status.
func New(path string, w io.Writer, host datapaths.Host) (*Daemon, error) {
	cfg, warnings, err := config.LoadWithWarnings(path)
	if err != nil {
		return nil, err
	}
	d := &Daemon{path: path, host: host, cfg: cfg, boot: cfg, load: config.LoadWithWarnings,
		healthChanged: make(chan struct{}, 1), announceDue: make(chan struct{}, 1), overrideCalls: make(chan overrideCall)}
	d.running.Store(cfg)
	lvl, _ := ParseLevel(cfg.Log.Level) // validated by config
	d.level.Set(lvl)
	d.log = NewLogger(w, cfg.Log.Format, &d.level)
	d.logConfigWarnings(warnings)
	d.reloaded.record(true, time.Now())
	return d, nil
}

// Config is the configuration in force.
func (d *Daemon) Config() *config.Config { return d.cfg }

// Run runs until ctx ends or a signal arrives on stop; each signal on
// reload reads the file again. It returns nil on a clean shutdown.
//
// Start is all or nothing: everything that can fail and that nobody else
// can see (the socket's directory, the locks, the listeners, the health
// checks) is done before the first change a peer or a packet could see
// (the data path, the accept filter, VIPs), and every way out undoes what
// was done. The caller gives stop and reload channels of their own, so
// that any number of reloads can never crowd a SIGTERM out (Go drops a
// signal whose channel is full: that is how reloads coalesce).
func (d *Daemon) Run(ctx context.Context, stop, reload <-chan os.Signal) error {
	mem := newMemory()
	report := d.host.Probe()
	decision := datapaths.Choose(d.boot.Datapath.Mode, report)
	d.log.Info("halb starting",
		"config", d.path,
		"kernel", report.KernelRelease,
		"datapath", decision.Mode,
		"reason", decision.Reason,
		"instances", len(d.cfg.VRRP.Instances),
		"services", len(d.cfg.Services))
	for _, w := range decision.Warnings {
		d.log.Warn("datapath", "warning", w)
	}
	d.mode = decision.Mode

	// First what can fail, in this order, before anything is touched.
	socket := d.boot.Control.Socket
	if err := CheckControlSocket(d.path, d.boot); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if err := CheckControlSocket(d.path, d.boot); err != nil { // what MkdirAll found or made
		return err
	}
	ctlLock, err := lockControl(socket)
	if err != nil {
		return err
	}
	defer ctlLock.release()
	if len(d.cfg.Services) > 0 {
		if err := d.lockBPFFS(); err != nil {
			return err
		}
	}
	defer func() { d.bpffsLock.release() }()
	// One halb per virtual router: a second one would take the first
	// one's VIPs and be a second Master on this host.
	d.vrrp = newVRRPSet(d.log, LockDir)
	d.vrrp.changed = d.wakeAnnounce
	if err := d.vrrp.lockAll(d.cfg.VRRP); err != nil {
		return err
	}
	defer d.vrrp.releaseLocks() // after stopAll, below
	// The Accept_Mode filter is one table per network namespace: one
	// halb's.
	accept, err := newAcceptFilter(d.log, LockDir)
	if err != nil {
		return fmt.Errorf("accept_mode filter: %w", err)
	}
	if err := accept.claimFor(d.cfg); err != nil {
		return err
	}
	d.accept = accept
	defer d.accept.remove() // after the instances, below, gave their VIPs up
	ctlListener, err := listenControl(socket)
	if err != nil {
		return err
	}
	defer ctlListener.Close() // once served, the server closes it first
	var metricsListener net.Listener
	if d.boot.Control.Metrics != "" {
		if metricsListener, err = listenMetrics(d.boot.Control.Metrics); err != nil {
			return err
		}
		defer metricsListener.Close()
	}
	latency := newCheckLatency()
	d.health = health.NewMonitor(health.Options{
		OnChange: func(ev health.Event) {
			d.log.Info("backend health", ev.Attrs()...)
			select {
			case d.healthChanged <- struct{}{}:
			default:
			}
		},
		OnResult: func(r health.Result) {
			latency.WithLabelValues(r.Service, r.Check).Observe(r.Latency.Seconds())
		},
	})
	if err := d.health.Update(d.cfg.Services); err != nil {
		return fmt.Errorf("health checks: %w", err)
	}
	primeCheckLatency(latency, d.cfg.Services)

	// A data path this start made goes again if the start fails (one an
	// earlier halb left, which this one adopted, stays as it forwards);
	// either way it is closed last, once the servers, whose handlers read
	// it, have stopped.
	fresh, started := d.datapathAbsent(), false
	defer func() { d.closeDatapath(!started && fresh) }()

	// From here on, goroutines beside the loop: Run waits for them on
	// its way out (after the instances, below, and before the data path).
	var w workers
	defer func() {
		if left := w.stop(shutdownTimeout); len(left) > 0 {
			d.log.Error("did not stop in time; exiting without it", "what", strings.Join(left, ","))
		}
	}()
	hctx, stopHealth := context.WithCancel(ctx)
	w.Go("health checks", func() { _ = d.health.Run(hctx) }, stopHealth)
	// Served from now: status and scrapes read d.vrrp and d.accept,
	// which exist, and the data path once it is open.
	d.serve(&w, "control socket", ctlListener, d.controlHandler())
	if metricsListener != nil {
		d.serve(&w, "metrics", metricsListener, d.metricsHandler(latency))
		d.log.Info("metrics", "listen", metricsListener.Addr().String())
	}

	// The data path comes first, so that traffic flows the moment VRRP
	// brings a VIP here; if it cannot be programmed, nothing else starts.
	if err := d.apply(ctx); err != nil {
		return fmt.Errorf("program services: %w", err)
	}
	if d.dp != nil {
		d.log.Info("services programmed", "datapath", d.dp.Name(), "services", len(d.cfg.Services))
	}
	// The speaker starts once the data path serves, so that its first
	// announcements are of services that are served.
	defer d.removeVIPs() // after the speaker has stopped
	if err := d.startBGP(); err != nil {
		return err
	}
	defer d.stopBGP()
	mem.releaseWithCode(d.log)
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()

	// The accept filter is in place before any instance can become
	// Master, and goes after every instance has given its VIPs up.
	d.accept.apply(d.cfg)
	// On the way out every instance gives its VIPs up and, as Master,
	// sends priority 0 so the backup takes over after skew time.
	defer func() {
		d.notifySystemd(sd.SdNotifyStopping)
		d.vrrp.stopAll(time.Now().Add(shutdownTimeout))
	}()
	d.vrrp.apply(d.cfg.VRRP)

	started = true
	reads := newReader(d.load, d.path)
	defer func() { d.waitAtShutdown(reads.idle(), "config read", readGrace) }()
	d.notifySystemd(sd.SdNotifyReady)
	var drained <-chan time.Time // the end of a drain before stopping
	for {
		select {
		case <-ctx.Done():
			d.log.Info("halb stopping", "reason", ctx.Err())
			return nil
		case sig := <-stop:
			if drained == nil {
				if drained = d.drainBeforeStop(sig); drained != nil {
					continue
				}
			}
			d.log.Info("halb stopping", "signal", sig.String())
			return nil
		case <-drained:
			d.log.Info("halb stopping", "reason", "drain over")
			return nil
		case <-d.announceDue:
			d.announce()
		case <-resync.C:
			d.resync(ctx)
			mem.releaseIfGrown()
		case call := <-d.overrideCalls:
			call.reply <- d.override(ctx, call)
		case <-d.healthChanged:
			if err := d.apply(ctx); err != nil {
				d.log.Error("backend weights not fully programmed", "err", err, "retry", d.retryNote())
			}
		case <-reload:
			switch {
			case !reads.busy():
				d.notifySystemd(sd.SdNotifyReloading)
				reads.start()
			case reads.abandoned:
				d.log.Error("config not reloaded: the last read of the file is still blocked", "file", d.path, "since", reads.began.Format(time.RFC3339))
			default:
				reads.pending = true // one more read when this one ends
			}
		case res := <-reads.results:
			if reads.finish() {
				if d.reloadWith(res.cfg, res.warnings, res.err) == nil {
					if err := d.apply(ctx); err != nil {
						d.log.Error("reloaded services not fully programmed", "err", err, "retry", d.retryNote())
					}
					mem.releaseWithCode(d.log)
				}
				d.notifySystemd(sd.SdNotifyReady)
			}
			if reads.pending {
				reads.pending = false
				d.notifySystemd(sd.SdNotifyReloading)
				reads.start()
			}
		case <-reads.timeout():
			reads.abandon()
			d.log.Error("config rejected, keeping the running one", "file", d.path,
				"err", "reading the file took longer than "+readTimeout.String(), "fix", "make the file a regular file on a local file system")
			d.notifySystemd(sd.SdNotifyReady)
		}
	}
}

// lockBPFFS takes the lock on the bpffs path the data path the probe
// chose pins in (datapaths.Pins), if any, before it is first opened.
func (d *Daemon) lockBPFFS() error {
	pins := datapaths.Pins(d.boot.Datapath, d.mode)
	if d.bpffsLock != nil || pins == "" {
		return nil
	}
	l, err := lockBPFFS(pins)
	if err != nil {
		return err
	}
	d.bpffsLock = l
	return nil
}

// closeDatapath leaves what is programmed in place, so that traffic flows
// on, or with --cleanup (or undo, for a start that failed) removes it.
func (d *Daemon) closeDatapath(undo bool) {
	if d.dp == nil {
		return
	}
	if d.Cleanup || undo {
		reason := "--cleanup"
		if undo {
			reason = "the start failed"
		}
		if err := d.dp.Cleanup(); err != nil {
			d.log.Error("data path cleanup incomplete", "datapath", d.dp.Name(), "reason", reason, "err", err)
		} else {
			d.log.Info("data path removed", "datapath", d.dp.Name(), "reason", reason)
		}
		return
	}
	d.dp.Close()
}

// datapathAbsent reports whether no earlier halb left a data path that
// this one would adopt.
func (d *Daemon) datapathAbsent() bool { return datapaths.Absent(d.boot.Datapath, d.mode) }

// waitAtShutdown waits for done, at most for bound.
func (d *Daemon) waitAtShutdown(done <-chan struct{}, what string, bound time.Duration) {
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		d.log.Error("did not stop in time; exiting without it", "what", what)
	}
}

// Reload reads the file again and applies it, as a SIGHUP does. A bad
// file is refused and logged problem by problem; the running
// configuration stays in force.
func (d *Daemon) Reload() error {
	cfg, warnings, err := d.load(d.path)
	return d.reloadWith(cfg, warnings, err)
}

// reloadWith takes a configuration read off the loop, or logs why it was
// refused; the caller programs the data path.
func (d *Daemon) reloadWith(cfg *config.Config, warnings []config.Problem, err error) error {
	err = d.applyConfig(cfg, warnings, err)
	d.reloaded.record(err == nil, time.Now())
	return err
}

// applyConfig is reloadWith's work; the caller records its outcome.
func (d *Daemon) applyConfig(cfg *config.Config, warnings []config.Problem, err error) error {
	if err != nil {
		var cerr *config.Error
		if errors.As(err, &cerr) {
			for _, p := range cerr.Problems {
				d.log.Error("config rejected, keeping the running one", "file", cerr.File, "line", p.Line, "problem", p.String())
			}
		} else {
			d.log.Error("config rejected, keeping the running one", "err", err)
		}
		return err
	}
	if d.health != nil {
		// Unchanged checks keep their state; new backends start presumed
		// healthy.
		if err := d.health.Update(cfg.Services); err != nil {
			d.log.Error("config rejected, keeping the running one", "err", err)
			return err
		}
	}
	lvl, _ := ParseLevel(cfg.Log.Level)
	d.level.Set(lvl)
	d.warnRestartKeys(cfg)
	if d.accept != nil {
		d.accept.apply(cfg) // only when the rules changed
	}
	if d.vrrp != nil {
		d.vrrp.apply(cfg.VRRP)
	}
	d.cfg = cfg
	d.running.Store(cfg)
	d.keepOverrides(cfg)
	d.reconfigureBGP(cfg.BGP)
	d.log.Info("config reloaded", "file", d.path, "instances", len(cfg.VRRP.Instances), "services", len(cfg.Services))
	d.logConfigWarnings(warnings)
	return nil
}

// logConfigWarnings logs what config.LoadWithWarnings found about a file
// it accepted, such as a password others can read.
func (d *Daemon) logConfigWarnings(warnings []config.Problem) {
	for _, w := range warnings {
		d.log.Warn("config file", "file", d.path, "line", w.Line, "warning", w.String())
	}
}
