package daemon

import (
	"runtime/debug"
	"testing"
)

// TestMemoryReleasesOnlyAfterAllocating pins the rule that keeps an idle
// daemon idle: a resync tick returns memory to the OS only once the heap
// allocated releaseAfter since the last return, and on the tick after
// such a return, never on another tick with little or nothing allocated.
func TestMemoryReleasesOnlyAfterAllocating(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	m := newMemory()
	m.release()
	at := m.released
	keep := make([]byte, releaseAfter/16)
	m.releaseIfGrown()
	if m.released != at {
		t.Fatalf("released after %d bytes allocated, under releaseAfter (%d)", m.released-at, releaseAfter)
	}
	for range 20 {
		keep = append(keep[:0:0], make([]byte, releaseAfter/8)...)
	}
	m.releaseIfGrown()
	if m.released-at < releaseAfter {
		t.Fatalf("not released after %d bytes allocated (releaseAfter %d)", m.allocated()-at, releaseAfter)
	}
	n := m.count
	m.releaseIfGrown()
	if m.count != n+1 {
		t.Fatalf("the tick after a release made %d releases, want 1", m.count-n)
	}
	m.releaseIfGrown()
	if m.count != n+1 {
		t.Fatalf("a second quiet tick released")
	}
	_ = keep
}
