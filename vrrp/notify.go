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

// notifier runs an instance's notify scripts on every transition, one
// call at a time, on a goroutine of its own: a slow or hanging script never
// delays a transition. A call is the state's own script (notify_master,
// notify_backup, notify_fault or notify_stop, run with no added
// arguments), then notify with keepalived's arguments (INSTANCE <name>
// <STATE> <priority>): keepalived's order. So the scripts of one instance
// run in the order of its transitions, never two at once.
//
// At most one call waits behind the running one: a newer transition
// replaces it (logged), since the scripts only need to learn the state the
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

	// group: the notifier of a sync group (Group.enter), whose scripts
	// learn the group's name and state only.
	group bool

	wake chan struct{} // a call is pending, or close was called
	done chan struct{} // the loop has ended

	mu      sync.Mutex
	pending *notifyCall // the next call; nil when none
	closing bool
	// cancelRunning kills the call running since before close; nil when
	// none.
	cancelRunning context.CancelFunc
}

// notifyCall is what one transition runs: each argv in turn.
type notifyCall struct {
	state, priority string
	argvs           [][]string
}

// newNotifier prepares the notifier, or returns nil when the instance has
// no notify script; its loop runs on a goroutine of the instance's Run,
// and close ends it.
func newNotifier(cfg config.Instance, log *slog.Logger, run runProgramFunc) *notifier {
	if cfg.Notify == "" && len(cfg.StateScripts()) == 0 {
		return nil
	}
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

// stateScript is the per-state script of s; nil when none.
func (n *notifier) stateScript(s State) []string {
	switch s {
	case Master:
		return n.cfg.NotifyMaster
	case Backup:
		return n.cfg.NotifyBackup
	case Fault:
		return n.cfg.NotifyFault
	case Initialize:
		return n.cfg.NotifyStop
	}
	return nil
}

// notify makes a call due, replacing one that has not started; it never
// blocks. A state with no script of its own and no notify makes none.
func (n *notifier) notify(s State, priority uint8) {
	c := &notifyCall{state: notifyName(s), priority: strconv.Itoa(int(priority))}
	if argv := n.stateScript(s); len(argv) > 0 {
		c.argvs = append(c.argvs, argv)
	}
	if n.cfg.Notify != "" {
		c.argvs = append(c.argvs, []string{n.cfg.Notify, "INSTANCE", n.cfg.Name, c.state, c.priority})
	}
	if len(c.argvs) == 0 {
		return
	}
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		n.log.Warn("notify call after stop; dropped", "state", c.state)
		return
	}
	old := n.pending
	n.pending = c
	n.mu.Unlock()
	if old != nil {
		n.log.Warn("notify call superseded before it ran; dropped", "state", old.state, "by", c.state)
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
		c, closing := n.pending, n.closing
		n.pending = nil
		if c == nil {
			n.mu.Unlock()
			if closing {
				return
			}
			<-n.wake
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		budget := time.Duration(0) // each script gets the timeout
		if closing {
			// The call at the stop, its scripts together, within
			// stopTimeout.
			budget = n.stopTimeout
		} else {
			n.cancelRunning = cancel
		}
		n.mu.Unlock()
		n.runCall(ctx, c, budget)
		n.mu.Lock()
		n.cancelRunning = nil
		n.mu.Unlock()
		cancel()
	}
}

// runCall runs the call's scripts in turn; budget, when not 0, bounds
// them together. A call killed at stop runs no further script.
func (n *notifier) runCall(ctx context.Context, c *notifyCall, budget time.Duration) {
	end := time.Now().Add(budget)
	for _, argv := range c.argvs {
		timeout := n.timeout
		if budget > 0 {
			timeout = min(timeout, time.Until(end))
		}
		if ctx.Err() != nil || timeout <= 0 {
			n.log.Warn("notify script not run: the stop's time is spent", "script", argv[0], "state", c.state)
			continue
		}
		n.call(ctx, timeout, c, argv)
	}
}

func (n *notifier) call(ctx context.Context, timeout time.Duration, c *notifyCall, argv []string) {
	start := time.Now()
	env := n.env(c)
	output, err := n.run(ctx, timeout, argv, env)
	attrs := []any{"script", argv[0], "state", c.state, "priority", c.priority, "took", time.Since(start).Round(time.Millisecond), "output", output}
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

// env is what a script of call c learns beside its arguments.
func (n *notifier) env(c *notifyCall) []string {
	if n.group {
		return []string{"HALB_GROUP=" + n.cfg.Name, "HALB_STATE=" + c.state}
	}
	vips := make([]string, len(n.cfg.VirtualIPs))
	for i, p := range n.cfg.AdvertPrefixes() {
		vips[i] = p.String()
	}
	return []string{
		"HALB_INSTANCE=" + n.cfg.Name,
		"HALB_STATE=" + c.state,
		"HALB_PRIORITY=" + c.priority,
		"HALB_VRID=" + strconv.Itoa(n.cfg.VRID),
		"HALB_INTERFACE=" + n.cfg.Interface,
		"HALB_VIRTUAL_IPS=" + strings.Join(vips, " "),
	}
}
