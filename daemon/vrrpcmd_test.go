package daemon

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/vrrp"
)

// TestGroupOfDuringReload: a reload takes a stopped instance out of
// running before it sets order, so a `halb vrrp` call in between finds a
// name in order with no running entry; groupOf skips it rather than
// panicking in the control socket's goroutine.
func TestGroupOfDuringReload(t *testing.T) {
	cfg := config.Instance{Name: "VI_A", Interface: "halbgo0", VRID: 9, Priority: 100, Version: 3,
		AdvertInterval: 100 * time.Millisecond}
	s := newVRRPSet(slog.New(slog.DiscardHandler), t.TempDir())
	s.running["VI_A"] = &runningInstance{cfg: cfg, group: "G:1", inst: vrrp.NewInstance(cfg, slog.New(slog.DiscardHandler))}
	s.order = []string{"VI_A", "VI_B"} // VI_B: stopped by a reload that has not set order yet
	insts, interval := s.groupOf("VI_A")
	if names := namesOf(insts); !slices.Equal(names, []string{"VI_A"}) || interval != cfg.AdvertInterval {
		t.Errorf("groupOf(VI_A) = %v, %v; want [VI_A], %v", names, interval, cfg.AdvertInterval)
	}
}
