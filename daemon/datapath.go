package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/halb-lb/halb/datapaths"
	"github.com/halb-lb/halb/health"
)

// resyncInterval is how often the daemon looks again at what others may
// have changed behind its back: the accept filter, and the data path when
// it asks (service.Datapath.Resync).
const resyncInterval = 10 * time.Second

// resync applies the services again when the data path asks for it or
// the last apply failed, or opens the data path when an earlier try
// failed, and restores the accept filter when the last change failed or
// the kernel lost it.
func (d *Daemon) resync(ctx context.Context) {
	if d.resyncDue(time.Now()) {
		if err := d.apply(ctx); err != nil {
			d.log.Error("resync of the data path failed", "err", err)
		}
	}
	d.accept.apply(d.cfg)
}

// resyncDue reports whether the last apply failed, or the data path's
// resync interval has passed since its last resync, give or take half a
// tick of the daemon's. A failed apply is retried even for a data path
// that wants no resync (Resync 0: it learns of changes by events).
func (d *Daemon) resyncDue(now time.Time) bool {
	if d.dp == nil {
		return true // no services yet, or the open failed: apply opens it
	}
	if d.applyFailed {
		return true
	}
	every := d.dp.Resync()
	if every <= 0 || now.Sub(d.lastResync) < every-resyncInterval/2 {
		return false
	}
	d.lastResync = now
	return true
}

// apply programs the configured services, opening the data path the first
// time there are any. It is bounded in time so that a stuck kernel call
// cannot stall the daemon's loop for ever. It remembers whether it failed,
// for the next tick to retry (resyncDue).
func (d *Daemon) apply(ctx context.Context) (err error) {
	defer func() { d.applyFailed = err != nil }()
	if d.dp == nil {
		if len(d.cfg.Services) == 0 {
			return nil
		}
		if err := d.lockBPFFS(); err != nil {
			return err
		}
		dp, err := datapaths.Open(ctx, d.boot.Datapath, d.mode, d.log) // the datapath keys it started with (restartKeys)
		if err != nil {
			return fmt.Errorf("open %s data path: %w", d.mode, err)
		}
		d.dp = dp
		d.datapath.Store(&dp)
		name := dp.Name()
		d.datapathName.Store(&name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	states := map[health.Key]health.State{}
	if d.health != nil {
		states = d.health.States()
	}
	d.logQuorum(states)
	// Configured weights, with unhealthy backends drained and quorum and
	// the sorry backend applied.
	return d.dp.Apply(ctx, health.Services(d.cfg.Services, states))
}

// logQuorum logs, one line per service, each service that lost or regained
// its quorum since the last apply: the moment its new flows move to the
// sorry backend (or are dropped) and back, which the backends' own health
// lines do not say. A service the daemon has not seen before counts as
// having had quorum, so one that starts below it is logged too.
func (d *Daemon) logQuorum(states map[health.Key]health.State) {
	lost := make(map[string]bool, len(d.cfg.Services))
	for _, s := range d.cfg.Services {
		lost[s.Name] = health.QuorumLost(s, states)
		if lost[s.Name] == d.quorumLost[s.Name] {
			continue
		}
		sorry := "none"
		if s.SorryBackend.IsValid() {
			sorry = s.SorryBackend.String()
		}
		attrs := []any{"service", s.Name, "healthy", health.Live(s, states), "quorum", max(s.Quorum, 1), "sorry_backend", sorry}
		if lost[s.Name] {
			d.log.Warn("service quorum lost", attrs...)
		} else {
			d.log.Info("service quorum regained", attrs...)
		}
	}
	d.quorumLost = lost
}
