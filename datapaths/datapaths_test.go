package datapaths

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/ipvs"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// An eBPF data path counts as left behind when datapath.bpffs holds
// anything; a missing or empty directory is nothing to adopt.
func TestAbsentBPF(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "halb")
	cfg := config.Datapath{Mode: config.ModeXDP, BPFFS: dir}
	if !Absent(cfg, config.ModeXDP) {
		t.Error("a missing bpffs directory counts as a data path left behind")
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if !Absent(cfg, config.ModeTC) {
		t.Error("an empty bpffs directory counts as a data path left behind")
	}
	if err := os.WriteFile(filepath.Join(dir, "halb_services"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if Absent(cfg, config.ModeXDP) {
		t.Error("a pinned map does not count as a data path left behind")
	}
}

func TestOpenUnknownMode(t *testing.T) {
	if dp, err := Open(context.Background(), config.Datapath{}, "dpdk", nil); err == nil {
		t.Errorf("mode dpdk opened %v", dp)
	}
}

// A constructor that fails returns a nil pointer; as a service.Datapath
// that must be a nil interface, or a caller that keeps it (service.Split
// did) panics on its first call.
func TestOpenedNilOnError(t *testing.T) {
	failed := errors.New("ip_vs could not be loaded")
	if dp, err := opened((*ipvs.Datapath)(nil), failed); dp != nil || err != failed {
		t.Errorf("failed IPVS open: %#v, %v; want a nil data path and the error", dp, err)
	}
	if dp, err := opened((*loader.Datapath)(nil), failed); dp != nil || err != failed {
		t.Errorf("failed eBPF open: %#v, %v; want a nil data path and the error", dp, err)
	}
	ok := &ipvs.Datapath{}
	if dp, err := opened(ok, nil); dp != service.Datapath(ok) || err != nil {
		t.Errorf("IPVS open: %#v, %v; want the data path", dp, err)
	}
}

// The daemon locks what Pins names before it opens the data path: the
// bpffs directory of the eBPF modes, nothing for IPVS.
func TestPins(t *testing.T) {
	cfg := config.Datapath{Mode: config.ModeAuto, BPFFS: "/sys/fs/bpf/halb"}
	for mode, want := range map[string]string{config.ModeXDP: cfg.BPFFS, config.ModeTC: cfg.BPFFS, config.ModeIPVS: ""} {
		if got := Pins(cfg, mode); got != want {
			t.Errorf("Pins(%s) = %q, want %q", mode, got, want)
		}
	}
}
