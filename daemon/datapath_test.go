package daemon

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// resyncingDatapath asks for a resync every every.
type resyncingDatapath struct {
	nopDatapath
	every time.Duration
}

func (r resyncingDatapath) Resync() time.Duration { return r.every }

// The data path says how often it wants the daemon's resync, and the
// daemon, ticking every resyncInterval, applies on the ticks that fall
// due: each tick for IPVS's 10 s, every third for 30 s, never for 0. With
// no data path open every tick applies, which opens it when there are
// services.
func TestResyncDue(t *testing.T) {
	start := time.Date(2026, 12, 6, 17, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name  string
		every time.Duration
		open  bool
		want  string // one letter per tick: y applies, n does not
	}{
		{"none open", 0, false, "yyyyyy"},
		{"ipvs", 10 * time.Second, true, "yyyyyy"},
		{"every 30s", 30 * time.Second, true, "ynnynn"},
		{"never", 0, true, "nnnnnn"},
		{"below the tick", time.Second, true, "yyyyyy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &Daemon{}
			if c.open {
				d.dp = resyncingDatapath{every: c.every}
			}
			var got []byte
			for i := range len(c.want) {
				// A tick comes a little late or early, as tickers do.
				jitter := time.Duration(i%3-1) * 50 * time.Millisecond
				if d.resyncDue(start.Add(time.Duration(i)*resyncInterval + jitter)) {
					got = append(got, 'y')
				} else {
					got = append(got, 'n')
				}
			}
			if string(got) != c.want {
				t.Errorf("ticks %s, want %s", got, c.want)
			}
		})
	}
}

// failingOnce is an event-driven data path (Resync 0) whose first Apply
// fails.
type failingOnce struct {
	nopDatapath
	applies int
}

func (f *failingOnce) Apply(context.Context, []service.Service) error {
	f.applies++
	if f.applies == 1 {
		return errors.New("the kernel said no")
	}
	return nil
}

// A failed apply is retried at the next tick even when the data path
// wants no resync, as the daemon's log line promises; once it succeeds
// the ticks apply nothing more.
func TestResyncRetriesFailedApply(t *testing.T) {
	dp := &failingOnce{}
	d := &Daemon{cfg: &config.Config{}, log: slog.New(slog.DiscardHandler), accept: &acceptFilter{}, dp: dp}
	ctx := context.Background()
	if err := d.apply(ctx); err == nil {
		t.Fatal("the first apply did not fail")
	}
	d.resync(ctx)
	if dp.applies != 2 {
		t.Fatalf("%d applies after a failed one and a tick, want the retry", dp.applies)
	}
	d.resync(ctx)
	d.resync(ctx)
	if dp.applies != 2 {
		t.Errorf("%d applies after the retry succeeded, want none more with Resync 0", dp.applies)
	}
}
