// Command demo shows halb at work on one Linux machine, in under a minute,
// without touching the machine's own network. It builds a small LAN out of
// network namespaces:
//
//	                       halbdemo-lan: bridge br0
//	client  192.0.2.10  ──┤
//	lb1     192.0.2.2   ──┤  halb, VRRP priority 150: the Master
//	lb2     192.0.2.3   ──┤  halb, VRRP priority 100: the Backup
//	be1     192.0.2.11  ──┤  web servers; each holds the VIP 192.0.2.100 on lo
//	be2     192.0.2.12  ──┤  and answers with its name
//	be3     192.0.2.13  ──┘
//
// The Master holds the VIP 192.0.2.100 on its eth0, so the client finds it
// by ARP; halb's XDP program there hands each new connection to a backend
// (direct routing: it rewrites the MAC, the backend answers the client
// itself). The client asks http://192.0.2.100/ five times a second and
// prints who answered. Then lb1 dies, and lb2 takes the VIP; then be2's
// web server stops, and halb drains it.
//
// On the way out, Ctrl-C included, the demo removes all it made: the
// namespaces (and with them every veth), the pins, the bpf filesystem and
// /run/halbdemo. It must never touch anything not named halbdemo. A demo
// killed outright leaves them; the next run, or `halb-demo -clean`,
// removes them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf/link"
)

// The LAN: 192.0.2.0/24 (RFC 5737, documentation).
var (
	vip      = netip.MustParseAddr("192.0.2.100")
	clientIP = netip.MustParsePrefix("192.0.2.10/24")
	lbIPs    = map[string]netip.Prefix{"lb1": netip.MustParsePrefix("192.0.2.2/24"), "lb2": netip.MustParsePrefix("192.0.2.3/24")}
	beIPs    = []struct {
		name string
		addr netip.Prefix
	}{
		{"be1", netip.MustParsePrefix("192.0.2.11/24")},
		{"be2", netip.MustParsePrefix("192.0.2.12/24")},
		{"be3", netip.MustParsePrefix("192.0.2.13/24")},
	}
)

// Bounds on the waits for halb: they end the demo with an error rather
// than hang it.
const (
	readyWait    = 30 * time.Second
	failoverWait = 20 * time.Second
	drainWait    = 20 * time.Second
	stopWait     = 5 * time.Second
)

func main() {
	halb := flag.String("halb", "bin/halb", "the halb binary to run (make build makes it)")
	phase := flag.Duration("phase", 6*time.Second, "how long the client's traffic is shown in each phase")
	clean := flag.Bool("clean", false, "only remove what an earlier, crashed demo left behind")
	flag.Parse()
	os.Exit(run(*halb, *phase, *clean, os.Stdout))
}

// run plays the demo and cleans up; it returns the exit status.
func run(halb string, phase time.Duration, cleanOnly bool, out io.Writer) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "halb demo: run it as root (sudo make demo): it creates network namespaces and loads XDP programs")
		return 1
	}
	unlock, err := lock()
	if err != nil {
		fmt.Fprintln(out, "halb demo:", err)
		return 1
	}
	defer unlock()
	if leftOver() {
		fmt.Fprintf(out, "==> removing what an earlier demo left (namespaces %s*, %s)\n", prefix, stateDir)
	}
	if err := sweep(); err != nil {
		fmt.Fprintln(out, "halb demo: cannot remove what an earlier demo left:", err)
		return 1
	}
	if cleanOnly {
		fmt.Fprintln(out, "nothing of a halb demo is left")
		return 0
	}
	if halb, err = filepath.Abs(halb); err == nil {
		_, err = os.Stat(halb)
	}
	if err != nil {
		fmt.Fprintf(out, "halb demo: no halb binary (%v); run make build first, or name it with -halb\n", err)
		return 1
	}

	// The first Ctrl-C (or SIGTERM) stops the demo; the clean-up that
	// follows is bounded, and later signals do not cut it short.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	// Output into a closed pipe (make demo | head) must not end the
	// demo before it has cleaned up.
	signal.Ignore(syscall.SIGPIPE)
	go func() {
		for first := true; ; first = false {
			sig := <-signals
			if first {
				fmt.Fprintf(out, "\n%s: stopping and cleaning up\n", sig)
				cancel(stopped{sig.(syscall.Signal)})
			} else {
				fmt.Fprintln(out, "still cleaning up; it takes a few seconds more")
			}
		}
	}()

	d := &demo{halb: halb, phase: phase, out: out}
	err = d.play(ctx)
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(out, "halb demo failed:", err)
	}
	d.teardown()
	if serr := sweep(); serr != nil {
		fmt.Fprintf(out, "halb demo: clean-up incomplete (sudo %s -clean tries again): %v\n", os.Args[0], serr)
		return 1
	}
	d.say("cleaned up: no namespace, link, pin or process of the demo is left")
	var sig stopped
	switch {
	case errors.As(context.Cause(ctx), &sig):
		return 128 + int(sig.Signal) // as a shell reports a process the signal ended
	case err != nil:
		return 1
	}
	return 0
}

// stopped is the cause of a demo cut short by a signal.
type stopped struct{ syscall.Signal }

func (s stopped) Error() string { return "stopped by " + s.Signal.String() }

type demo struct {
	halb  string
	phase time.Duration
	out   io.Writer

	hosts    []*host // every namespace, for teardown
	lan      *host
	client   *client
	lbs      []*node // lb1, lb2
	backends []*backend
	passes   []link.Link
	stop     context.CancelFunc // stops the client
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "==> "+format+"\n", args...)
}

// play runs the script; any error ends it.
func (d *demo) play(ctx context.Context) error {
	d.say("building the LAN: namespaces %s{lan,client,lb1,lb2,be1,be2,be3}, one bridge, a veth each", prefix)
	if err := d.build(); err != nil {
		return err
	}
	// lb1 first: it becomes Master once it has heard no advert for
	// three advert intervals; lb2, started after, finds it there.
	lb1, lb2 := d.lbs[0], d.lbs[1]
	began := time.Now()
	d.say("starting halb on lb1 (configs, logs and control sockets in %s)", stateDir)
	if err := lb1.start(d.halb, d.out); err != nil {
		return err
	}
	err := d.waitFor(ctx, readyWait, "lb1 MASTER with three live backends", []*node{lb1}, func() bool {
		s, err := lb1.status(ctx, d.halb)
		return err == nil && s.state() == "MASTER" && len(s.live()) == 3
	})
	if err != nil {
		return err
	}
	d.say("starting halb on lb2")
	if err := lb2.start(d.halb, d.out); err != nil {
		return err
	}
	err = d.waitFor(ctx, readyWait, "lb2 BACKUP with three live backends", d.lbs, func() bool {
		s, err := lb2.status(ctx, d.halb)
		return err == nil && s.state() == "BACKUP" && len(s.live()) == 3
	})
	if err != nil {
		return err
	}
	d.say("ready after %.1fs: lb1 is MASTER and holds the VIP %s; both nodes see be1, be2, be3 healthy", time.Since(began).Seconds(), vip)

	cctx, stop := context.WithCancel(ctx)
	d.stop = stop
	go d.client.run(cctx, 200*time.Millisecond, d.out)

	// Phase 1: the Master spreads new connections over all three.
	d.say("phase 1: traffic through lb1 for %s", d.phase)
	steady, err := d.window(ctx, "be1", "be2", "be3")
	if err != nil {
		return err
	}

	// Phase 2: the Master dies without a word.
	d.say("phase 2: lb1 dies: its halb is killed (SIGKILL, no goodbye advert) and its link goes down, as in a power cut")
	killed := time.Now()
	lb1.kill()
	eth0, err := lb1.eth0()
	if err == nil {
		err = lb1.nl.LinkSetDown(eth0)
	}
	if err != nil {
		return fmt.Errorf("take down lb1's link: %w", err)
	}
	err = d.waitFor(ctx, failoverWait, "lb2 MASTER and the client's ARP pointing at it", []*node{lb2}, func() bool {
		s, err := lb2.status(ctx, d.halb)
		return err == nil && s.state() == "MASTER" && d.client.vipAt() == "lb2"
	})
	if err != nil {
		return err
	}
	d.say("lb2 took over %.1fs after lb1 died; the client's ARP entry for %s now points at lb2. `halb status` on lb2:", time.Since(killed).Seconds(), vip)
	fmt.Fprint(d.out, indent(lb2.statusTable(ctx, d.halb)))
	d.say("traffic through lb2 for %s", d.phase)
	failover, err := d.window(ctx)
	if err != nil {
		return err
	}

	// Phase 3: a backend stops; halb's health checks take it out.
	d.say("phase 3: be2's web server stops")
	stopped := time.Now()
	d.backends[1].stopServing()
	err = d.waitFor(ctx, drainWait, "lb2 to drain be2", []*node{lb2}, func() bool {
		s, err := lb2.status(ctx, d.halb)
		return err == nil && !slices.Contains(s.live(), beIPs[1].addr.Addr().String())
	})
	if err != nil {
		return err
	}
	d.say("halb drained be2 %.1fs after it stopped. `halb status` on lb2:", time.Since(stopped).Seconds())
	fmt.Fprint(d.out, indent(lb2.statusTable(ctx, d.halb)))
	d.say("traffic with be2 drained for %s", d.phase)
	drained, err := d.window(ctx, "be1", "be3")
	if err != nil {
		return err
	}
	d.stop()

	d.say("summary of the requests sent in each phase (who answered, and where the client found the VIP):")
	fmt.Fprintf(d.out, "    steady     %s\n    failover   %s\n    drained    %s\n", steady, failover, drained)
	return d.judge(steady, failover, drained)
}

// judge fails the demo when halb did not do what the demo shows.
func (d *demo) judge(steady, failover, drained tally) error {
	var errs []error
	for _, be := range beIPs {
		if steady.by[be.name] == 0 {
			errs = append(errs, fmt.Errorf("steady: no answer from %s", be.name))
		}
	}
	if steady.failed > 0 || !onlyAt(steady, "lb1") {
		errs = append(errs, fmt.Errorf("steady: want every request answered through lb1: %s", steady))
	}
	if failover.failed > 0 || len(failover.by) == 0 || !onlyAt(failover, "lb2") {
		errs = append(errs, fmt.Errorf("failover: want every request answered through lb2: %s", failover))
	}
	if drained.failed > 0 || drained.by["be2"] > 0 || drained.by["be1"] == 0 || drained.by["be3"] == 0 {
		errs = append(errs, fmt.Errorf("drained: want every request answered by be1 or be3: %s", drained))
	}
	return errors.Join(errs...)
}

func onlyAt(t tally, lb string) bool { return len(t.vipAt) == 1 && t.vipAt[lb] > 0 }

// window lets the client's traffic run for the phase, and on, up to
// windowMore longer, until each of want has answered at least once: a
// phase of a few seconds is a handful of new flows, and with three
// backends ten of them miss one about one time in twenty, which would say
// nothing about halb. It tallies the requests sent meanwhile.
func (d *demo) window(ctx context.Context, want ...string) (tally, error) {
	from := time.Now()
	select {
	case <-ctx.Done():
		return tally{}, ctx.Err()
	case <-time.After(d.phase):
	}
	deadline := time.Now().Add(windowMore)
	for !answeredBy(d.client.tally(from, time.Now()), want) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return tally{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return d.client.tally(from, time.Now()), nil
}

// windowMore is how much longer than its phase a window may run while it
// waits for a backend that has not answered yet.
const windowMore = 10 * time.Second

// answeredBy says whether each of want answered at least once in t.
func answeredBy(t tally, want []string) bool {
	for _, be := range want {
		if t.by[be] == 0 {
			return false
		}
	}
	return true
}

// waitFor polls cond until it holds, for at most limit; the nodes in up
// must keep running meanwhile.
func (d *demo) waitFor(ctx context.Context, limit time.Duration, what string, up []*node, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		for _, n := range up {
			if n.exited() {
				return fmt.Errorf("halb on %s exited while the demo waited for %s\n%s", n.name, what, d.logs())
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %s\n%s", what, limit, d.logs())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// logs is the tail of each node's log, for an error message: the files
// go with the clean-up.
func (d *demo) logs() string {
	var b strings.Builder
	for _, n := range d.lbs {
		if n.cmd == nil {
			continue // not started
		}
		data, _ := os.ReadFile(strings.TrimSuffix(n.config, ".yaml") + ".log")
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		state := "running"
		if n.exited() {
			state = n.cmd.ProcessState.String()
		}
		fmt.Fprintf(&b, "--- %s: halb %s; the end of its log:\n%s\n", n.name, state, strings.Join(lines, "\n"))
	}
	return b.String()
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Fprintf(&b, "      %s\n", line)
	}
	return b.String()
}
