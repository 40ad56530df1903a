// Package datapaths opens the data path the probe chose: the eBPF one
// (loader), IPVS (ipvs), or with datapath.mode auto the eBPF one with IPVS
// beside it for what only IPVS can carry (service.Split). It is the one
// place that names the implementations; the daemon gets the probe (Host,
// Choose), a service.Datapath and what to lock (Pins) from here, and
// drives nothing else.
//
// It must never hold state or change the kernel or a file itself: beyond
// looking whether an earlier halb left pins or IPVS's state file (Absent),
// it only chooses and calls the constructors.
package datapaths

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/ipvs"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// Host is the machine the probe reads (loader's probe, which knows what
// each data path needs of the kernel).
type Host = loader.Host

// Choose is the data path for datapath.mode on a probed host, and why.
func Choose(mode string, r loader.Report) loader.Decision { return loader.Choose(mode, r) }

// Open opens the data path for mode, the one the probe chose
// (loader.Choose) from cfg.Mode. The eBPF data path keeps cfg for its
// life.
func Open(ctx context.Context, cfg config.Datapath, mode string, log *slog.Logger) (service.Datapath, error) {
	openIPVS := func(ctx context.Context) (service.Datapath, error) {
		return opened(ipvs.Open(ctx, ipvs.Options{Log: log}))
	}
	switch mode {
	case config.ModeIPVS:
		return openIPVS(ctx)
	case config.ModeXDP, config.ModeTC:
		bpf, err := opened(loader.NewDatapath(cfg, mode, log))
		if err != nil || cfg.Mode != config.ModeAuto {
			return bpf, err
		}
		// auto: IPVS-only schedulers are not in the eBPF data path,
		// so those services run on IPVS beside it.
		return &service.Split{First: bpf, OpenSecond: openIPVS}, nil
	}
	return nil, fmt.Errorf("no data path for mode %q", mode)
}

// opened is a constructor's result as a service.Datapath: nil with the
// error when it failed. Returned as it is, its nil *T would make a non-nil
// interface that panics on the first call (service.Split kept one).
func opened[T service.Datapath](dp T, err error) (service.Datapath, error) {
	if err != nil {
		return nil, err
	}
	return dp, nil
}

// Pins is the bpffs directory the data path for mode pins its maps and
// programs in, which one halb at a time may use (the daemon locks it
// before Open); "" when that data path pins nothing (IPVS).
func Pins(cfg config.Datapath, mode string) string {
	if mode == config.ModeXDP || mode == config.ModeTC {
		return cfg.BPFFS
	}
	return ""
}

// Absent reports whether no earlier halb left a data path that Open for
// mode would adopt: nothing in cfg.BPFFS for the eBPF data path, no state
// file of halb's IPVS services.
func Absent(cfg config.Datapath, mode string) bool {
	absent := func(path string) bool {
		_, err := os.Lstat(path)
		return errors.Is(err, fs.ErrNotExist)
	}
	empty := func(dir string) bool {
		entries, err := os.ReadDir(dir)
		return errors.Is(err, fs.ErrNotExist) || err == nil && len(entries) == 0
	}
	if pins := Pins(cfg, mode); pins != "" && !empty(pins) {
		return false
	}
	if (mode == config.ModeIPVS || cfg.Mode == config.ModeAuto) && !absent(ipvs.DefaultStateFile) {
		return false
	}
	return true
}
