package vrrp

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
)

// notifyTimeout bounds one run of the notify script; its whole process
// group is killed then.
const notifyTimeout = 10 * time.Second

// notifyStopWait and notifyStopTimeout bound what stopping an instance
// waits for: the call running at the stop gets notifyStopWait to finish
// before it is killed (it announced a state the instance is leaving), and
// the STOP call notifyStopTimeout to run; together they stay within the
// daemon's 5 s for a shutdown. Without them a slow script held a stop, a
// shutdown or a reload that restarts the instance for a whole timeout per
// queued call (87 s with three hostile adverts and a 30 s script).
const (
	notifyStopWait    = time.Second
	notifyStopTimeout = 2 * time.Second
)

// notifier runs an instance's notify script on every transition, with
// keepalived's arguments (INSTANCE <name> <STATE> <priority>), one run at a
// time, on a goroutine of its own: a slow or hanging script never delays a
// transition.
//
// At most one call waits behind the running one: a newer transition
// replaces it (logged), since the script only needs to learn the state the
// instance is in now, and a queue of calls that each may run for the whole
// timeout is what let a peer flapping the state hold the instance's stop
// for minutes.
type notifier struct {
	cfg config.Instance
	log *slog.Logger
	run runProgramFunc
	// timeout is notifyTimeout, stopWait notifyStopWait and stopTimeout
	// notifyStopTimeout; a test that waits for a kill shortens them before
	// the instance runs.
	timeout     time.Duration
	stopWait    time.Duration
	stopTimeout time.Duration

	wake chan struct{} // a call is pending, or close was called
	done chan struct{} // the loop has ended

	mu      sync.Mutex
	pending []string // the next call's arguments; nil when none
	closing bool
	// cancelRunning kills the call running since before close; nil when
	// none.
	cancelRunning context.CancelFunc
}

// newNotifier prepares the notifier; its loop runs on a goroutine of the
// instance's Run, and close ends it.
func newNotifier(cfg config.Instance, log *slog.Logger, run runProgramFunc) *notifier {
	return &notifier{cfg: cfg, log: log, run: run, timeout: notifyTimeout, stopWait: notifyStopWait, stopTimeout: notifyStopTimeout,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// notifyName is the state as keepalived's notify scripts know it: the
// machine's INIT is where a stopping instance goes.
func notifyName(s State) string {
	if s == Initialize {
		return "STOP"
	}
	return s.String()
}

// notify makes a call due, replacing one that has not started; it never
// blocks.
func (n *notifier) notify(s State, priority uint8) {
	args := []string{"INSTANCE", n.cfg.Name, notifyName(s), strconv.Itoa(int(priority))}
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		n.log.Warn("notify call after stop; dropped", "state", args[2])
		return
	}
	old := n.pending
	n.pending = args
	n.mu.Unlock()
	if old != nil {
		n.log.Warn("notify call superseded before it ran; dropped", "state", old[2], "by", args[2])
	}
	n.poke()
}

func (n *notifier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// close runs the pending call (the STOP one, when the instance stops),
// bounded by stopTimeout, after the running one, which gets stopWait to
// finish before it is killed. It returns within about stopWait plus
// stopTimeout.
func (n *notifier) close() {
	n.mu.Lock()
	n.closing = true
	cancel := n.cancelRunning
	n.mu.Unlock()
	n.poke()
	if cancel != nil {
		t := time.AfterFunc(n.stopWait, cancel)
		defer t.Stop()
	}
	<-n.done
}

func (n *notifier) loop() {
	defer close(n.done)
	for {
		n.mu.Lock()
		args, closing := n.pending, n.closing
		n.pending = nil
		if args == nil {
			n.mu.Unlock()
			if closing {
				return
			}
			<-n.wake
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		timeout := n.timeout
		if closing {
			timeout = min(timeout, n.stopTimeout)
		} else {
			n.cancelRunning = cancel
		}
		n.mu.Unlock()
		n.call(ctx, timeout, args)
		n.mu.Lock()
		n.cancelRunning = nil
		n.mu.Unlock()
		cancel()
	}
}

func (n *notifier) call(ctx context.Context, timeout time.Duration, args []string) {
	vips := make([]string, len(n.cfg.VirtualIPs))
	for i, p := range n.cfg.VirtualIPs {
		vips[i] = p.String()
	}
	env := []string{
		"HALB_INSTANCE=" + n.cfg.Name,
		"HALB_STATE=" + args[2],
		"HALB_PRIORITY=" + args[3],
		"HALB_VRID=" + strconv.Itoa(n.cfg.VRID),
		"HALB_INTERFACE=" + n.cfg.Interface,
		"HALB_VIRTUAL_IPS=" + strings.Join(vips, " "),
	}
	start := time.Now()
	output, err := n.run(ctx, timeout, append([]string{n.cfg.Notify}, args...), env)
	attrs := []any{"script", n.cfg.Notify, "state", args[2], "priority", args[3], "took", time.Since(start).Round(time.Millisecond), "output", output}
	switch {
	case errors.Is(err, errTimeout) && ctx.Err() != nil:
		n.log.Warn("notify script killed at stop", append(attrs, "wait", n.stopWait)...)
	case errors.Is(err, errTimeout):
		n.log.Error("notify script killed at its timeout", append(attrs, "timeout", timeout)...)
	case errors.Is(err, errRefused):
		n.log.Error("notify script refused, not run", append(attrs, "err", err)...)
	case err != nil:
		n.log.Warn("notify script failed", append(attrs, "err", err)...)
	default:
		n.log.Info("notify script ran", attrs...)
	}
}
