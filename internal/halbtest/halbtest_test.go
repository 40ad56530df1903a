package halbtest

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// Left names a goroutine that halb's code started and that still runs,
// and forgets it once it has returned; those running before are not its
// business.
func TestLeft(t *testing.T) {
	const prefix = "github.com/halb-lb/halb/internal/halbtest."
	earlier := make(chan struct{})
	go func() { <-earlier }()
	defer close(earlier)
	before := Running()

	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { parked(started, release) })
	<-started
	left := Left(before, prefix)
	if len(left) != 1 || !strings.Contains(left[0], prefix+"parked") {
		t.Fatalf("Left with one goroutine parked: %d stacks\n%s", len(left), strings.Join(left, "\n\n"))
	}
	if left := Left(before, "example.com/other/"); len(left) != 0 {
		t.Errorf("Left names goroutines outside the prefix:\n%s", strings.Join(left, "\n\n"))
	}
	close(release)
	wg.Wait()
	if left := Left(before, prefix); len(left) != 0 {
		t.Errorf("Left names goroutines that returned:\n%s", strings.Join(left, "\n\n"))
	}
}

func parked(started, release chan struct{}) { close(started); <-release }

// Log is written from many goroutines and read meanwhile; Reset starts
// it afresh.
func TestLog(t *testing.T) {
	var l Log
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { fmt.Fprintf(&l, "line %d\n", i); _ = l.String() })
	}
	wg.Wait()
	if n := strings.Count(l.String(), "\n"); n != 8 {
		t.Errorf("%d lines, want 8:\n%s", n, l.String())
	}
	l.Reset()
	fmt.Fprint(&l, "after")
	if l.String() != "after" {
		t.Errorf("after Reset: %q", l.String())
	}
}

// A process Start runs in the test's namespace: its output is in Log and,
// line by line, in Lines; how it exited is kept; Stop kills one that
// outlives its bound and says so.
func TestStart(t *testing.T) {
	ns := netnstest.New(t)
	p := Start(t, ns, exec.Command("sh", "-c", "echo out; echo err >&2; printf last; exit 3"), Options{Lines: true})
	var lines []string
	for l := range p.Lines() {
		lines = append(lines, l)
	}
	if strings.Join(lines, ",") != "out,err,last" || p.Log.String() != "out\nerr\nlast" {
		t.Errorf("lines %q, log %q", lines, p.Log)
	}
	if code := p.ExitCode(); code != 3 || !p.Exited() {
		t.Errorf("exit code %d, exited %v; want 3", code, p.Exited())
	}

	// In the namespace: it sees the namespace's links only.
	p = Start(t, ns, exec.Command("cat", "/proc/net/dev"), Options{})
	if err := p.Err(); err != nil || !strings.Contains(p.Log.String(), "lo:") || strings.Count(p.Log.String(), ":") != 1 {
		t.Errorf("%v: a fresh namespace's links, want lo alone:\n%s", err, p.Log)
	}

	p = Start(t, ns, exec.Command("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"), Options{})
	for start := time.Now(); !strings.Contains(p.Log.String(), "ready"); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the shell did not start within 10s")
		}
	}
	if err := p.Stop(syscall.SIGTERM, 100*time.Millisecond); !errors.Is(err, ErrStillRunning) || !p.Exited() {
		t.Errorf("Stop of a process that ignores SIGTERM: %v, exited %v", err, p.Exited())
	}
}
