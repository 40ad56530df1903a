package health

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
)

// Run owns every prober it starts, those an Update replaced too: when it
// returns, no check is under way and none of its goroutines runs, even
// when a check takes a moment to wind up after it is cancelled (an exec
// check killing its process group).
func TestMonitorRunLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before := halbtest.Running()
	var inFlight, started atomic.Int64
	windUp := make(chan struct{})
	m := NewMonitor(Options{})
	m.newChecker = func(config.HealthCheck) (Checker, error) {
		return CheckerFunc(func(ctx context.Context, _ Key) error {
			inFlight.Add(1)
			defer inFlight.Add(-1)
			started.Add(1)
			<-ctx.Done()
			<-windUp
			return ctx.Err()
		}), nil
	}
	backends := []string{"198.51.100.11:80", "198.51.100.12:80", "198.51.100.13:80"}
	// Checks that outlast their interval: each is under way until
	// cancelled.
	slow := config.HealthCheck{Type: "tcp", Interval: 50 * time.Millisecond, Timeout: time.Hour, Rise: 1, Fall: 1}
	if err := m.Update([]config.Service{webService(slow, backends...)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, "every backend's first check", func() bool { return started.Load() == int64(len(backends)) })

	// A reload that changes the check replaces every prober.
	slow.Interval = 60 * time.Millisecond
	if err := m.Update([]config.Service{webService(slow, backends...)}); err != nil {
		t.Fatal(err)
	}
	cancel()
	// The checks wind up only a moment after Run was told to stop: Run
	// must not have returned meanwhile.
	go func() { time.Sleep(50 * time.Millisecond); close(windUp) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context's end")
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("Run returned with %d checks under way", n)
	}
	if left := halbtest.Left(before, "github.com/halb-lb/halb/"); len(left) > 0 {
		t.Errorf("%d goroutines of the monitor still run after Run returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
