package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/ipvs"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// resyncInterval is how often the data path is applied again although
// nothing changed: IPVS sends no change notifications, so a table someone
// flushed is only noticed by looking.
const resyncInterval = ipvs.ResyncInterval

// openDatapath opens the data path the probe chose.
func (d *Daemon) openDatapath(ctx context.Context, mode string) (service.Datapath, error) {
	switch mode {
	case config.ModeIPVS:
		return ipvs.Open(ctx, ipvs.Options{Log: d.log})
	case config.ModeXDP, config.ModeTC:
		bpf, err := d.openBPF(ctx, mode)
		if err != nil || d.boot.Datapath.Mode != config.ModeAuto {
			return bpf, err
		}
		// auto: NAT and IPVS-only schedulers are not in the eBPF data
		// path, so those services run on IPVS beside it.
		return &service.Split{First: bpf, OpenSecond: func(ctx context.Context) (service.Datapath, error) {
			return ipvs.Open(ctx, ipvs.Options{Log: d.log})
		}}, nil
	}
	return nil, fmt.Errorf("no data path for mode %q", mode)
}

// apply programs the configured services, opening the data path the first
// time there are any. It is bounded in time so that a stuck kernel call
// cannot stall the daemon's loop for ever.
func (d *Daemon) apply(ctx context.Context) error {
	if d.dp == nil {
		if len(d.cfg.Services) == 0 {
			return nil
		}
		if err := d.lockBPFFS(); err != nil {
			return err
		}
		dp, err := d.openDatapath(ctx, d.mode)
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

func (d *Daemon) openBPF(_ context.Context, mode string) (service.Datapath, error) {
	// The data path keeps the datapath keys it started with
	// (restartKeys).
	return loader.NewDatapath(d.boot.Datapath, mode, d.log)
}
