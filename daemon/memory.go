package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// gcPercent is the Go heap's growth between collections (GOGC) unless
// the environment sets GOGC: half the runtime's default of 100, so that
// an apply of 1000 services of 100 backends peaks under 100 MiB
// (BenchmarkApplyPeak: 92 MiB at 50, 111 at 100). The heap an apply
// holds is some 45 MiB there; the extra collections cost little beside
// the table builds.
const gcPercent = 50

// releaseAfter is how much the Go heap may allocate between two returns
// of its free memory to the OS (releaseIfGrown): 1 MiB, so that what a
// status query or a scrape of 100 000 backends leaves (tens of MiB) goes
// back, and a daemon whose VRRP adverts and timers allocate a few KiB a
// tick is left alone.
const releaseAfter = 1 << 20

// memory returns to the OS the heap the daemon freed, so that an idle
// daemon's RSS is what it holds, not its last peak.
type memory struct {
	allocs   []metrics.Sample
	released uint64 // heap allocated, in bytes, at the last release
	// again: the last tick released; the next one releases once more.
	again bool
	count int // releases made, for the tests
}

func newMemory() *memory {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	return &memory{allocs: []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}}
}

// release hands the heap the config load and the apply just freed back
// to the OS at once: after the first apply and after a reload, the only
// times that much is freed. Both peak far above what an idle daemon
// holds (1000 services of 100 backends: some 200 MiB against 30), and
// the runtime's background scavenger returns such a peak over minutes,
// a few MiB a second, so an idle daemon would look several times its
// size until it had. It costs one collection and a pass over the free
// pages.
func (m *memory) release() {
	debug.FreeOSMemory()
	m.released = m.allocated()
	m.count++
}

// releaseWithCode releases the heap, and the pages of halb's own binary
// that the daemon has mapped (releaseCode): after the first apply and
// after a reload, whose config load and apply run code that an idle
// daemon does not. The next tick releases the heap once more, as after a
// release at a tick: the answers to the neighbour solicitations of the
// apply come as it ends, and the re-apply they start may hold several
// MiB while the collection runs and let them go after, having allocated
// less than releaseAfter since (BenchmarkIdleRSS 1000 x 100: one run
// idled at 31.5 MiB anonymous with no collection after the first
// release, against 22.3-23.2 in three others).
func (m *memory) releaseWithCode(log *slog.Logger) {
	m.release()
	m.again = true
	if err := releaseCode(); err != nil {
		log.Debug("the binary's pages stay mapped", "err", err)
	}
}

// releaseCode pages out halb's code and constant data (the binary's
// read-only mappings: .text, .rodata, .gopclntab), which the kernel keeps
// mapped into the process for good once touched, 64 KiB around each page
// touched: everything a start ran (the config load, the eBPF objects'
// load, the first apply, the package inits of GoBGP and gRPC) would
// otherwise stay resident in an idle daemon, some 20 MiB at 1000
// services of 100 backends, where idling maps 9 to 12 again
// (BenchmarkIdleRSS: 8.8 MiB after 60 s idle with no collection, 11.6
// with those of the ticks). What the daemon runs next comes back from the
// page cache or the disk at its first use, as it would once the kernel
// had reclaimed those pages. The first takeover after a page-out was
// measured for that (BENCHMARKS.md, "The first takeover after the
// page-out"): a BACKUP that idled past a resync tick, its master killed,
// the binary on a file system with a Raspberry Pi's 128 KiB read-ahead
// and its page cache dropped but for what the daemon maps. By the time
// the VIP was on the link, median 0 major faults (at most 1 in 10 runs at
// 100 ms adverts, at most 7, once, in 10 at 1 s), against 0 with the
// page-out switched off; the advert and the VIP as soon after the master
// down timer either way. Within the second after, median 4 and 5.5 (0
// without), none of them VRRP's: the route watcher reading the routes
// the VIP's address brought and the map write it makes, an nftables
// decoder, the collector's stack unwinder. On an SD card, computed at 2
// to 6 ms a 128 KiB read, that is 0 ms before the VIP moves and some 8
// to 42 ms of work beside it after; kept. The kernel keeps a page
// another process maps too, and refuses (EINVAL) before Linux 5.4, which
// leaves it all mapped. Writable mappings (.data, .bss) are left alone.
func releaseCode() error {
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &self); err != nil {
		return fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return err
	}
	var errs []error
	for line := range strings.SplitSeq(string(maps), "\n") {
		lo, hi, ok := codeMapping(line, self.Dev, self.Ino)
		if !ok {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_PAGEOUT); e != 0 {
			errs = append(errs, fmt.Errorf("madvise %x-%x MADV_PAGEOUT: %w", lo, hi, e))
		}
	}
	return errors.Join(errs...)
}

// codeMapping reads a line of /proc/self/maps, "00400000-01007000 r-xp
// 00000000 fd:01 1234 /usr/sbin/halb", and returns the range it maps when
// it maps the file of device dev and inode ino read-only.
func codeMapping(line string, dev, ino uint64) (lo, hi uintptr, ok bool) {
	f := strings.Fields(line)
	if len(f) < 6 || len(f[1]) < 2 || f[1][1] != '-' || f[4] != strconv.FormatUint(ino, 10) ||
		f[3] != fmt.Sprintf("%02x:%02x", unix.Major(dev), unix.Minor(dev)) {
		return 0, 0, false
	}
	a, b, _ := strings.Cut(f[0], "-")
	l, err1 := strconv.ParseUint(a, 16, 64)
	h, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil || h <= l {
		return 0, 0, false
	}
	return uintptr(l), uintptr(h), true
}

// releaseIfGrown releases, at a resync tick, when the heap allocated
// releaseAfter since the last release: the refreshes of the data path
// (a neighbour answer re-applies every service that has a backend
// behind it), status queries and scrapes free what they allocate, but an
// idle daemon runs no collection that would find it for two minutes (the
// runtime's forced one), and the scavenger returns only what a
// collection freed. At most one collection a tick (10 s; some 10 ms for
// 1000 services of 100 backends), and none when nothing was allocated:
// an idle daemon stays idle.
//
// The tick after a release releases once more: what outlived the first
// collection without being held (the buffers of a status reply still
// being written, objects that wait for a finalizer) is free by then, and
// nothing allocates to find it (BenchmarkIdleRSS 1000 × 100: 71 MiB idle
// without that second pass, 55 with it).
func (m *memory) releaseIfGrown() {
	grown := m.allocated()-m.released >= releaseAfter
	if grown || m.again {
		m.release()
	}
	m.again = grown
}

func (m *memory) allocated() uint64 {
	metrics.Read(m.allocs)
	return m.allocs[0].Value.Uint64()
}
