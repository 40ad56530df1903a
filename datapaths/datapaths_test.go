package datapaths

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/halb-lb/halb/config"
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
