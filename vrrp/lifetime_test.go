package vrrp

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/config"
)

// Every goroutine an instance starts (the readers of its sockets, its
// track scripts, its notifier) ends before Run returns: Run waits for
// them. Over the fake link, with a VMAC socket, scripts and a notify
// script, through a fault and a new socket.
func TestRunLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := baseConfig()
	cfg.UseVMAC = true
	cfg.Notify = "/bin/notify"
	cfg.TrackScripts = []config.TrackScript{{Command: []string{"/bin/check"}, Weight: -10, Rise: 1, Fall: 1,
		Interval: 10 * time.Millisecond, Timeout: time.Second}}
	f := upLAN(cfg)
	runs := make(chan string, 1000)
	run := func(ctx context.Context, _ time.Duration, argv, _ []string) (string, error) {
		select {
		case runs <- argv[0]:
		default:
		}
		return "", nil
	}
	in := newInstance(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), f, run)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- in.Run(ctx) }()

	waitFor(t, "a track script run", func() *string {
		for {
			select {
			case r := <-runs:
				if r == "/bin/check" {
					return &r
				}
			default:
				return nil
			}
		}
	})
	waitFor(t, "two open sockets", func() *int {
		if n := len(f.openConns()); n == 2 {
			return &n
		}
		return nil
	})
	// The interface goes and comes back: its sockets are closed and new
	// ones opened, each with its reader.
	f.delIface("lan0")
	f.notify(ctx, change{name: "lan0", index: 2})
	waitFor(t, "FAULT", func() *State {
		if s := in.Status().State; s == Fault {
			return &s
		}
		return nil
	})
	f.addIface("lan0", true, "192.0.2.1/24")
	f.notify(ctx, change{name: "lan0"})
	waitFor(t, "BACKUP", func() *State {
		if s := in.Status().State; s == Backup {
			return &s
		}
		return nil
	})

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30 s of its context's end")
	}
	if n := len(f.openConns()); n != 0 {
		t.Errorf("%d sockets open after Run returned", n)
	}
	if !f.closed {
		t.Error("the link was not closed")
	}
}

// A socket that fails on every read is read again after a growing pause,
// not in a tight loop; a reader whose Run has ended stops, even with an
// advert in hand that nobody takes.
func TestReadLoopBacksOffAndStops(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c := &countingConn{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		readLoop(ctx, c, make(chan packetIn), slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	time.Sleep(500 * time.Millisecond)
	cancel()
	<-done
	// 10+20+40+80+160 ms: about 6 reads in half a second; without the
	// pause, millions.
	if n := c.reads.Load(); n < 2 || n > 50 {
		t.Errorf("%d reads of a failing socket in 500 ms, want a handful", n)
	}
	for n, want := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 5: 160 * time.Millisecond, 7: 640 * time.Millisecond, 8: time.Second, 100: time.Second} {
		if got := readBackoff(n); got != want {
			t.Errorf("readBackoff(%d) = %v, want %v", n, got, want)
		}
	}

	// An advert read while nobody takes it: the reader ends with ctx.
	fc := &fakeConn{in: make(chan fakeRead, 1), done: make(chan struct{})}
	fc.in <- fakeRead{p: packetIn{payload: []byte{1}}}
	ctx, cancel = context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		readLoop(ctx, fc, make(chan packetIn), slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	waitFor(t, "the advert read", func() *int {
		if len(fc.in) == 0 {
			n := 0
			return &n
		}
		return nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader blocked handing on an advert after its context ended")
	}
}

// countingConn fails every read.
type countingConn struct {
	fakeConn
	reads atomic.Int64
}

func (c *countingConn) receive([]byte) (packetIn, error) {
	c.reads.Add(1)
	return packetIn{}, &net.OpError{Op: "read", Err: errFake}
}
