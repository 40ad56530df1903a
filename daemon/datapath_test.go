package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

// failing is an event-driven data path (Resync 0) whose Apply fails with
// err every time, counting its applies.
type failing struct {
	nopDatapath
	err     error
	applies int
}

func (f *failing) Apply(context.Context, []service.Service) error {
	f.applies++
	return f.err
}

// fakeClock is the daemon's clock in these tests: it moves only when the
// test moves it.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// ticks applies once, then runs the daemon's resync at every tick for
// span, and returns the seconds (since the first apply) of the ticks
// that applied.
func ticks(t *testing.T, dp service.Datapath, span time.Duration) (applied []int) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 12, 6, 17, 0, 0, 0, time.UTC)}
	start := clock.t
	d := &Daemon{cfg: &config.Config{}, log: slog.New(slog.DiscardHandler), accept: &acceptFilter{}, dp: dp, clock: clock.now}
	ctx := context.Background()
	_ = d.apply(ctx)
	count := func() int { return applyCount(dp) }
	for clock.t.Sub(start) < span {
		clock.t = clock.t.Add(resyncInterval)
		before := count()
		d.resync(ctx)
		if count() > before {
			applied = append(applied, int(clock.t.Sub(start)/time.Second))
		}
	}
	return applied
}

func applyCount(dp service.Datapath) int {
	switch f := dp.(type) {
	case *failing:
		return f.applies
	case *failingOnce:
		return f.applies
	}
	panic("not a counting data path")
}

// A failed apply is retried at the next tick even when the data path
// wants no resync, as the daemon's log line promises; once it succeeds
// the ticks apply nothing more.
func TestResyncRetriesFailedApply(t *testing.T) {
	dp := &failingOnce{}
	got := ticks(t, dp, 5*time.Minute)
	if !slices.Equal(got, []int{10}) {
		t.Errorf("applied at %v s after a failed first apply, want the retry at the next tick (10) alone", got)
	}
	if dp.applies != 2 {
		t.Errorf("%d applies, want 2", dp.applies)
	}
}

// A failure that keeps coming back is retried with a backoff: the first
// retry at the next tick, each wait twice the one before, none longer
// than applyRetryMax; not at every tick, as before, for an event-driven
// data path that would otherwise do nothing on the clock.
func TestResyncBacksOffTransientFailure(t *testing.T) {
	dp := &failing{err: errors.New("the kernel said no")}
	got := ticks(t, dp, 15*time.Minute)
	want := []int{10, 30, 70, 150, 310, 610} // waits 10, 20, 40, 80, 160, then 300 s (applyRetryMax)
	if !slices.Equal(got, want) {
		t.Errorf("retried at %v s, want %v", got, want)
	}
	if dp.applies != 1+len(want) {
		t.Errorf("%d applies in 15 minutes, want %d (90 ticks)", dp.applies, 1+len(want))
	}
}

// A failure no retry can mend is not retried on the clock: a service the
// data path does not support, a closed data path, a bad configuration.
// One joined with a failure that can mend is retried.
func TestResyncSkipsLastingFailure(t *testing.T) {
	unsupported := fmt.Errorf("service web: %w", &service.UnsupportedError{Datapath: "the eBPF data path", Feature: "forward nat"})
	for _, c := range []struct {
		name  string
		err   error
		retry bool
	}{
		{"unsupported", unsupported, false},
		{"unsupported twice", errors.Join(unsupported, fmt.Errorf("service dns: %w", service.ErrUnsupported)), false},
		{"closed", fmt.Errorf("apply: %w", service.ErrClosed), false},
		{"bad config", fmt.Errorf("open ebpf data path: %w", &config.Error{}), false},
		{"unsupported and a kernel error", errors.Join(unsupported, errors.New("write backend 3: no space left on device")), true},
		{"wrapped join", fmt.Errorf("apply: %w", errors.Join(unsupported, errors.New("the kernel said no"))), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := retryable(c.err); got != c.retry {
				t.Fatalf("retryable(%v) = %v, want %v", c.err, got, c.retry)
			}
			dp := &failing{err: c.err}
			got := ticks(t, dp, 5*time.Minute)
			if c.retry && len(got) == 0 {
				t.Errorf("never retried in 5 minutes")
			}
			if !c.retry && len(got) != 0 {
				t.Errorf("retried at %v s, want no retry", got)
			}
		})
	}
}

// A data path with a resync of its own (IPVS, 10 s) keeps it when an
// apply fails for good: the resync is how it finds what others changed.
func TestResyncKeptForLastingFailure(t *testing.T) {
	dp := &resyncingFailing{failing: failing{err: service.ErrUnsupported}, every: 10 * time.Second}
	d := &Daemon{cfg: &config.Config{}, log: slog.New(slog.DiscardHandler), accept: &acceptFilter{}, dp: dp}
	clock := &fakeClock{t: time.Date(2026, 12, 6, 17, 0, 0, 0, time.UTC)}
	d.clock = clock.now
	ctx := context.Background()
	_ = d.apply(ctx)
	for range 6 {
		clock.t = clock.t.Add(resyncInterval)
		d.resync(ctx)
	}
	if dp.applies != 7 {
		t.Errorf("%d applies over 6 ticks after the first, want 7 (the data path's 10 s resync)", dp.applies)
	}
}

type resyncingFailing struct {
	failing
	every time.Duration
}

func (r *resyncingFailing) Resync() time.Duration { return r.every }
