package halbtest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
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
