package daemon

import (
	"errors"
	"log/slog"
	"runtime/debug"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/halbtest"
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
	releasesOnceMore(t, m, "a release")
	_ = keep
}

// releasesOnceMore checks that the next tick releases once, and the quiet
// tick after it not at all.
func releasesOnceMore(t *testing.T, m *memory, after string) {
	t.Helper()
	n := m.count
	m.releaseIfGrown()
	if m.count != n+1 {
		t.Fatalf("the tick after %s made %d releases, want 1", after, m.count-n)
	}
	m.releaseIfGrown()
	if m.count != n+1 {
		t.Fatalf("a second quiet tick after %s released", after)
	}
}

// TestCodeMapping pins which lines of /proc/self/maps releaseCode pages
// out: the read-only mappings of the binary's file, by device and inode,
// never a writable one or another file's.
func TestCodeMapping(t *testing.T) {
	dev := unix.Mkdev(0xfd, 1)
	for _, c := range []struct {
		line   string
		lo, hi uintptr
		ok     bool
	}{
		{"00400000-01007000 r-xp 00000000 fd:01 1234 /usr/sbin/halb", 0x400000, 0x1007000, true},
		{"01007000-01e07000 r--p 00c07000 fd:01 1234 /usr/sbin/halb (deleted)", 0x1007000, 0x1e07000, true},
		{"01e07000-01ee5000 rw-p 01a07000 fd:01 1234 /usr/sbin/halb", 0, 0, false}, // .data
		{"00400000-01007000 r-xp 00000000 fd:02 1234 /usr/sbin/halb", 0, 0, false}, // another device
		{"00400000-01007000 r-xp 00000000 fd:01 12345 /usr/lib/x.so", 0, 0, false}, // another file
		{"01ee5000-03f2c000 rw-p 00000000 00:00 0", 0, 0, false},                   // the heap
		{"7ffd1000-7ffd3000 r-xp 00000000 00:00 0                  [vdso]", 0, 0, false},
		{"", 0, 0, false},
	} {
		lo, hi, ok := codeMapping(c.line, dev, 1234)
		if lo != c.lo || hi != c.hi || ok != c.ok {
			t.Errorf("codeMapping(%q) = %#x, %#x, %v; want %#x, %#x, %v", c.line, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
}

// TestReleaseCodePagesOut runs releaseCode in the test binary, which has
// mapped far more of its code by now than the next few calls touch: the
// pages of it mapped into the process (RssFile) drop.
func TestReleaseCodePagesOut(t *testing.T) {
	before, err := halbtest.ProcStatusKiB("self", "RssFile")
	if err != nil {
		t.Fatal(err)
	}
	if err := releaseCode(); errors.Is(err, unix.EINVAL) {
		t.Skipf("this kernel pages nothing out on request (MADV_PAGEOUT, Linux 5.4): %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	after, err := halbtest.ProcStatusKiB("self", "RssFile")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RssFile %d KiB before, %d after", before, after)
	if after >= before {
		t.Errorf("RssFile %d KiB after releaseCode, %d before: nothing paged out", after, before)
	}
}

// TestMemoryReleasesAgainAfterApply pins the second pass after the first
// apply and a reload: the tick after releaseWithCode releases once more,
// whatever was allocated, and the quiet tick after that does not.
func TestMemoryReleasesAgainAfterApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	m := newMemory()
	m.releaseWithCode(slog.New(slog.DiscardHandler))
	releasesOnceMore(t, m, "releaseWithCode")
}
