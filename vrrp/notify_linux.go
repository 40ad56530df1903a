package vrrp

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// notifyTimeout bounds one run of the notify script; its whole process
// group is killed then.
const notifyTimeout = 10 * time.Second

// notifier runs an instance's notify script on every transition, with
// keepalived's arguments (INSTANCE <name> <STATE> <priority>), one run at a
// time and in order, on a goroutine of its own: a slow or hanging script
// never delays a transition.
type notifier struct {
	cfg config.Instance
	log *slog.Logger
	// timeout is notifyTimeout; a test that waits for a kill shortens
	// it before the instance runs.
	timeout time.Duration
	queue   chan []string
	done    chan struct{}
}

func newNotifier(cfg config.Instance, log *slog.Logger) *notifier {
	n := &notifier{cfg: cfg, log: log, timeout: notifyTimeout, queue: make(chan []string, 256), done: make(chan struct{})}
	go n.loop()
	return n
}

// notifyName is the state as keepalived's notify scripts know it: the
// machine's INIT is where a stopping instance goes.
func notifyName(s State) string {
	if s == Initialize {
		return "STOP"
	}
	return s.String()
}

// notify queues one run; it never blocks.
func (n *notifier) notify(s State, priority uint8) {
	args := []string{"INSTANCE", n.cfg.Name, notifyName(s), strconv.Itoa(int(priority))}
	select {
	case n.queue <- args:
	default:
		n.log.Error("notify queue full; call dropped", "state", s.String())
	}
}

// close waits for the queued runs, at most for their timeouts.
func (n *notifier) close() {
	close(n.queue)
	<-n.done
}

func (n *notifier) loop() {
	defer close(n.done)
	for args := range n.queue {
		n.run(args)
	}
}

func (n *notifier) run(args []string) {
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
	output, err := runProgram(context.Background(), n.timeout, append([]string{n.cfg.Notify}, args...), env)
	attrs := []any{"script", n.cfg.Notify, "state", args[2], "priority", args[3], "took", time.Since(start).Round(time.Millisecond), "output", output}
	switch {
	case errors.Is(err, errTimeout):
		n.log.Error("notify script killed at its timeout", append(attrs, "timeout", n.timeout)...)
	case err != nil:
		n.log.Warn("notify script failed", append(attrs, "err", err)...)
	default:
		n.log.Info("notify script ran", attrs...)
	}
}
