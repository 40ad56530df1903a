package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/datapaths"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/service"
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
	if d.resyncDue(d.now()) {
		if err := d.apply(ctx); err != nil {
			d.log.Error("resync of the data path failed", "err", err, "retry", d.retryNote())
		}
	}
	d.accept.apply(d.cfg)
}

// resyncDue reports whether a failed apply's retry is due, or the data
// path's resync interval has passed since its last resync, give or take
// half a tick of the daemon's. A failed apply is retried even for a data
// path that wants no resync (Resync 0: it learns of changes by events),
// unless no retry can mend it (retryable): then only a reload or a health
// change applies again, and the data path's own resync, if it has one.
func (d *Daemon) resyncDue(now time.Time) bool {
	half := resyncInterval / 2
	if d.retry.failed && d.retry.transient && !now.Before(d.retry.at.Add(-half)) {
		return true
	}
	if d.dp == nil {
		// No services yet, or the open failed: apply opens it. A failed
		// open waits for its retry, or for a reload.
		return !d.retry.failed
	}
	every := d.dp.Resync()
	if every <= 0 || now.Sub(d.lastResync) < every-half {
		return false
	}
	d.lastResync = now
	return true
}

// now is the daemon's clock.
func (d *Daemon) now() time.Time {
	if d.clock != nil {
		return d.clock()
	}
	return time.Now()
}

// applyRetryMax bounds the backoff of a failing apply's retries: the
// first comes at the next tick (resyncInterval), each one after waits
// twice as long as the one before, up to this.
const applyRetryMax = 5 * time.Minute

// applyRetry is what the last apply's failure calls for.
type applyRetry struct {
	failed bool
	// transient: a retry may mend it, due at at; the next one waits wait.
	transient bool
	at        time.Time
	wait      time.Duration
}

// note takes the outcome of an apply at now.
func (r *applyRetry) note(err error, now time.Time) {
	if err == nil || !retryable(err) {
		*r = applyRetry{failed: err != nil}
		return
	}
	switch {
	case !r.transient:
		r.wait = resyncInterval
	case r.wait < applyRetryMax:
		r.wait = min(2*r.wait, applyRetryMax)
	}
	r.failed, r.transient, r.at = true, true, now.Add(r.wait)
}

// retryable reports whether some part of err may go away by itself: a
// kernel call that failed, an interface not up yet. A service the data
// path does not support (service.ErrUnsupported), a closed data path or a
// bad configuration (*config.Error) stays what it is until the
// configuration changes. An error that joins several is retryable when
// one of them is.
func retryable(err error) bool {
	var cfgErr *config.Error
	if errors.Is(err, service.ErrUnsupported) || errors.Is(err, service.ErrClosed) || errors.As(err, &cfgErr) {
		// Some part is lasting; whether all is, the tree says.
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			return slices.ContainsFunc(e.Unwrap(), retryable)
		case interface{ Unwrap() error }:
			if inner := e.Unwrap(); inner != nil {
				return retryable(inner)
			}
		}
		return false
	}
	return true
}

// retryNote says when a failed apply is tried again, for the log.
func (d *Daemon) retryNote() string {
	if !d.retry.transient {
		return "at the next config or health change: no retry can mend it"
	}
	return "in " + d.retry.wait.String()
}

// apply programs the configured services, opening the data path the first
// time there are any. It is bounded in time so that a stuck kernel call
// cannot stall the daemon's loop for ever. It notes how it failed, for the
// ticks to retry (resyncDue).
func (d *Daemon) apply(ctx context.Context) (err error) {
	defer func() { d.retry.note(err, d.now()) }()
	if d.dp == nil {
		if len(d.cfg.Services) == 0 {
			return nil
		}
		if err := d.lockBPFFS(); err != nil {
			return err
		}
		dp, err := datapaths.Open(ctx, d.boot.Datapath, d.mode, d.log) // the datapath keys it started with (restartKeys)
		if err != nil {
			d.served = nil
			d.announce()
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
	// Configured weights, with run-time overrides (override.go), unhealthy
	// backends drained and quorum and the sorry backend applied.
	services := weighted(d.cfg.Services, d.overrides.snapshot())
	d.logQuorum(services, states)
	err = d.dp.Apply(ctx, health.Services(services, states))
	d.noteServed(err)
	d.announce()
	return err
}

// noteServed notes which services the data path serves after an apply
// that ended with err: all when it succeeded, else those it reports
// holding, a service group only when it holds each of its pairs (one
// announcement stands for them all).
func (d *Daemon) noteServed(err error) {
	d.served = make(map[string]bool, len(d.cfg.Services))
	if err == nil {
		for _, s := range d.cfg.Services {
			d.served[s.Name] = true
		}
		return
	}
	reports, rerr := d.dp.Report()
	if rerr != nil {
		d.log.Warn("which services the data path serves is not known: none is announced over bgp", "err", rerr)
		return
	}
	held := map[string]int{}
	for _, r := range reports {
		held[r.Name]++
	}
	for _, s := range d.cfg.Services {
		d.served[s.Name] = held[s.Name] >= len(s.Pairs())
	}
}

// logQuorum logs, one line per service, each service that lost or regained
// its quorum since the last apply: the moment its new flows move to the
// sorry backend (or are dropped) and back, which the backends' own health
// lines do not say. A service the daemon has not seen before counts as
// having had quorum, so one that starts below it is logged too.
func (d *Daemon) logQuorum(services []config.Service, states map[health.Key]health.State) {
	lost := make(map[string]bool, len(services))
	for _, s := range services {
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
