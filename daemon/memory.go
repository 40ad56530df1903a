package daemon

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
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
