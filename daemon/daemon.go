// Package daemon is the life of `halb run`: it loads the configuration,
// decides the data path, and handles reloads and shutdown.
//
// It is the one place that knows about every part of halb; the parts never
// know about each other through it. A bad configuration, at start or on
// reload, must never be half-applied: at start it stops the daemon before
// anything is touched, on reload the running configuration stays.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// Daemon is one running halb.
type Daemon struct {
	path   string
	host   loader.Host
	level  slog.LevelVar
	log    *slog.Logger
	format string
	cfg    *config.Config

	// Cleanup removes the data path at shutdown instead of leaving it
	// pinned (halb run --cleanup).
	Cleanup bool

	vrrp   *vrrpSet
	accept *acceptFilter
	mode   string           // the data path the probe chose
	dp     service.Datapath // nil while there are no services
	health *health.Monitor
	// healthChanged wakes the loop to re-apply when a backend's health
	// changes; it holds one pending wake-up at most.
	healthChanged chan struct{}
	// quorumLost is, by service name, whether the last apply found the
	// service below its quorum, so that a change is logged once.
	quorumLost   map[string]bool
	datapathName atomic.Pointer[string]           // for the control socket's goroutines
	datapath     atomic.Pointer[service.Datapath] // d.dp, for status and /metrics
}

// New loads the configuration at path and sets up logging to w. A bad
// configuration returns the *config.Error unchanged so the caller can exit
// with the "bad config" status.
func New(path string, w io.Writer, host loader.Host) (*Daemon, error) {
	cfg, warnings, err := config.LoadWithWarnings(path)
	if err != nil {
		return nil, err
	}
	d := &Daemon{path: path, host: host, cfg: cfg, format: cfg.Log.Format}
	lvl, _ := ParseLevel(cfg.Log.Level) // validated by config
	d.level.Set(lvl)
	d.log = NewLogger(w, cfg.Log.Format, &d.level)
	d.logConfigWarnings(warnings)
	return d, nil
}

// Config is the configuration in force.
func (d *Daemon) Config() *config.Config { return d.cfg }

// Run runs until ctx ends or a SIGTERM/SIGINT arrives on signals; SIGHUP
// reloads. It returns nil on a clean shutdown.
func (d *Daemon) Run(ctx context.Context, signals <-chan os.Signal) error {
	report := d.host.Probe()
	decision := loader.Choose(d.cfg.Datapath.Mode, report)
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

	// The data path comes first, so that traffic flows the moment VRRP
	// brings a VIP here; if it cannot be programmed, nothing else starts.
	d.mode = decision.Mode
	d.healthChanged = make(chan struct{}, 1)
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
	hctx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
	go func() { _ = d.health.Run(hctx) }()
	defer func() {
		if d.dp == nil {
			return
		}
		if c, ok := d.dp.(service.Cleaner); ok && d.Cleanup {
			if err := c.Cleanup(); err != nil {
				d.log.Error("data path cleanup incomplete", "datapath", d.dp.Name(), "err", err)
			} else {
				d.log.Info("data path removed", "datapath", d.dp.Name())
			}
			return
		}
		d.dp.Close() // what is programmed stays: traffic flows on
	}()
	if err := d.apply(ctx); err != nil {
		return fmt.Errorf("program services: %w", err)
	}
	if d.dp != nil {
		d.log.Info("services programmed", "datapath", d.dp.Name(), "services", len(d.cfg.Services))
		name := d.dp.Name()
		d.datapathName.Store(&name)
	}
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()

	// The accept filter is in place before any instance can become
	// Master, and goes after every instance has given its VIPs up.
	accept, err := newAcceptFilter(d.log)
	if err != nil {
		return fmt.Errorf("accept_mode filter: %w", err)
	}
	d.accept = accept
	d.accept.apply(d.cfg)
	defer d.accept.remove()
	d.vrrp = newVRRPSet(d.log)
	d.vrrp.apply(d.cfg.VRRP)
	// Metrics last: a scrape reads d.vrrp and d.accept.
	if d.cfg.Control.Metrics != "" {
		mctx, stopMetrics := context.WithCancel(ctx)
		defer stopMetrics()
		if err := d.serveMetrics(mctx, d.cfg.Control.Metrics, latency); err != nil {
			return err
		}
	}
	cctx, stopControl := context.WithCancel(ctx)
	defer stopControl()
	if err := d.serveControl(cctx, d.cfg.Control.Socket); err != nil {
		// halb status will not answer, but the load balancer runs.
		d.log.Error("no control socket", "err", err)
	}

	// On the way out every instance gives its VIPs up and, as Master,
	// sends priority 0 so the backup takes over after skew time.
	defer func() {
		d.notifySystemd(sd.SdNotifyStopping)
		d.vrrp.stopAll()
	}()

	d.notifySystemd(sd.SdNotifyReady)
	for {
		select {
		case <-ctx.Done():
			d.log.Info("halb stopping", "reason", ctx.Err())
			return nil
		case <-resync.C:
			if err := d.apply(ctx); err != nil {
				d.log.Error("resync of the data path failed", "err", err)
			}
			d.accept.apply(d.cfg) // only when the last change failed
		case <-d.healthChanged:
			if err := d.apply(ctx); err != nil {
				d.log.Error("backend weights not fully programmed; retrying at the next resync", "err", err)
			}
		case sig := <-signals:
			switch sig {
			case syscall.SIGHUP:
				d.notifySystemd(sd.SdNotifyReloading)
				if d.Reload() == nil {
					if err := d.apply(ctx); err != nil {
						d.log.Error("reloaded services not fully programmed; retrying at the next resync", "err", err)
					}
				}
				d.notifySystemd(sd.SdNotifyReady)
			case syscall.SIGTERM, os.Interrupt:
				d.log.Info("halb stopping", "signal", sig.String())
				return nil
			}
		}
	}
}

// Reload reads the file again. A bad file is refused and logged problem by
// problem; the running configuration stays in force.
func (d *Daemon) Reload() error {
	cfg, warnings, err := config.LoadWithWarnings(d.path)
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
	lvl, _ := ParseLevel(cfg.Log.Level)
	d.level.Set(lvl)
	if cfg.Log.Format != d.format {
		d.log.Warn("log.format changes at the next restart", "running", d.format, "configured", cfg.Log.Format)
	}
	if d.health != nil {
		// Unchanged checks keep their state; new backends start presumed
		// healthy.
		if err := d.health.Update(cfg.Services); err != nil {
			d.log.Error("config rejected, keeping the running one", "err", err)
			return err
		}
	}
	if d.accept != nil {
		d.accept.apply(cfg) // only when the rules changed
	}
	if d.vrrp != nil {
		d.vrrp.apply(cfg.VRRP)
	}
	d.cfg = cfg
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
