package loader

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/maglev"
	"github.com/halb-lb/halb/service"
)

// BenchmarkApply measures the control plane: what Datapath.Apply costs in
// time, in Go heap and in kernel memory for the eBPF maps, at the default
// Maglev table size (65537 slots) and conntrack size, each time beside a
// baseline measured in the same run (the machine's speed and load move the
// times, much less their ratios). Run with -benchtime 1x: b.N is ignored,
// each line is one Apply.
//
//	SxN                  the first Apply of S services of N backends each
//	                     to a fresh Datapath: every service gets an ID, a
//	                     record and a Maglev table, every backend an ID
//	                     and a record.
//	SxN-no-change        a second Apply of the same services to the same
//	                     Datapath (the daemon does one at a reload or a
//	                     health change; the data path itself every
//	                     safetyInterval).
//	one-backend-change-1000
//	                     one service of 1000 backends, one of which goes
//	                     from weight 1 to weight 2: its table is rebuilt.
//	one-backend-remove-1000
//	                     the same service, one backend removed.
//
// Metrics of every line:
//
//	apply-ms             the wall time of the Apply measured, and
//	apply-cpu-ms         the CPU time the process took meanwhile (user and
//	                     system, all threads: the builders, the GC, the
//	                     system calls).
//	map-writes           the map writes it made (mapWriter's count: one a
//	                     record, counter reset or table batch).
//	outer-map-batches    its batch writes of Maglev tables to halb_maglev:
//	                     1 when it wrote tables (all of them in one), else 0.
//	alloc-MiB            what the Go heap allocated during it
//	                     (runtime.MemStats.TotalAlloc).
//	heap-MiB             the heap in use after it and a GC (HeapInuse; the
//	                     test binary's own takes part of it), and
//	heap-delta-MiB       the part of that the Apply added and keeps.
//	maps-MiB             the kernel memory of the program's maps and of
//	                     every Maglev table: the sum of each map's memlock
//	                     as the kernel reports it in /proc/self/fdinfo
//	                     (ebpf.MapInfo.Memlock, on this kernel the map's
//	                     own memory-usage estimate).
//	maglev-bytes/slot    the memlock of the Maglev tables alone, divided by
//	                     their slots (issue 16's bound: 4.1); the spare
//	                     tables count in it, and in maps-MiB:
//	spare-tables         the tables swapped out and kept to be written
//	                     again (mapWriter.spares, at most maxSpares).
//	backends-placed, backends-refused
//	                     backends with an ID and record, and those the maps
//	                     had no room for (1000x100 needs max_backends
//	                     100001, which the shape sets; were the maps too
//	                     small, Apply would place what fits, refuse the
//	                     rest and the first refusal would be logged).
//
// And of some:
//
//	builds-ms            (SxN) the Go Maglev builds of exactly the tables
//	                     the Apply built (the same backends' keys and
//	                     weights), one after the other on one goroutine,
//	                     timed right after the Apply: what computing the
//	                     tables costs, without writing them.
//	apply/builds         (SxN) apply-ms / builds-ms; issue 16's bound: 1.3.
//	                     The Apply builds on all cores, so on an idle
//	                     machine of C cores it can approach 1/C plus the
//	                     cost of the maps' writes; on a machine whose
//	                     cores are busy with other work it tends to
//	apply-cpu/builds-cpu (SxN) apply-cpu-ms / builds-cpu-ms, the CPU time
//	                     of the builds (builds-cpu-ms) beside that of the
//	                     whole Apply: what it costs beyond computing its
//	                     tables, whatever else the machine runs.
//	first-apply-ms       (no-change and one-backend lines) the first Apply
//	                     of the same Datapath, made before the one measured.
//	no-change/first      (no-change) apply-ms / first-apply-ms; issue 16's
//	                     bound: 0.001.
//	route-lookups        (no-change) the routes the Apply asked the kernel
//	                     for; 0 when reach knows them all (0 writes and 0
//	                     lookups are asserted by TestDatapathNoChangeNoWrite
//	                     and TestDatapathReachCached; here they are shown).
//	build-ms             (one-backend lines) the median of 5 Go builds of
//	                     the service's new table, each right after one of
//	                     5 Applies of the change (the service restored
//	                     between them); apply-ms is the median of those 5
//	                     Applies, the other metrics are the first's.
//	apply/build          (one-backend lines) apply-ms / build-ms; issue 16's
//	                     bound: 2.
//	swap-ms              (one-backend lines) the median of those Applies'
//	                     batch writes to halb_maglev: the kernel returns
//	                     from a write to a map of maps only after an RCU
//	                     grace period (synchronize_rcu, so that no program
//	                     still runs on the table it replaced), which no
//	                     swap of a fresh table can avoid, and
//	apply-swap/build     (apply-ms - swap-ms) / build-ms: the rest of the
//	                     Apply beside the build.
//	slots-changed        (one-backend lines) the slots that name another
//	                     backend ID after the Apply than before it, and
//	slots-dangling       the slots that name an ID the service no longer
//	                     has (0).
//
// The backends are DR, on halb0's link with permanent neighbour entries,
// so that every placed backend is live at once and in its table: no
// packet leaves the namespace. Services are on VIPs 198.51.100.10 and up,
// 100 ports each; backends are 192.0.2.100-199 on the service's port (the
// 1000-backend service: 10 ports of each address). Each line logs the load
// average, which moves apply-ms more than the ratios.
func BenchmarkApply(b *testing.B) {
	sh := applyShape{1000, 100}
	svcs := sh.services()
	// The first two lines share one Datapath: the no-change Apply follows
	// the first.
	var (
		ab    *applyBench
		first applyCost
	)
	firstApply := func(b *testing.B) {
		if ab != nil {
			return
		}
		ab = newApplyBench(b, sh.maxBackends())
		first = ab.apply(b, svcs)
		first.builds, first.buildsCPU = ab.buildTables(b)
	}
	b.Run(sh.String(), func(sb *testing.B) {
		firstApply(b)
		ab.report(sb, first, svcs)
		sb.ReportMetric(ms(first.builds), "builds-ms")
		sb.ReportMetric(float64(first.took)/float64(first.builds), "apply/builds")
		sb.ReportMetric(ms(first.buildsCPU), "builds-cpu-ms")
		sb.ReportMetric(float64(first.cpu)/float64(first.buildsCPU), "apply-cpu/builds-cpu")
	})
	b.Run(sh.String()+"-no-change", func(sb *testing.B) {
		firstApply(b)
		c := ab.apply(sb, svcs)
		ab.report(sb, c, svcs)
		sb.ReportMetric(ms(first.took), "first-apply-ms")
		sb.ReportMetric(float64(c.took)/float64(first.took), "no-change/first")
		sb.ReportMetric(float64(c.lookups), "route-lookups")
	})
	b.Run("one-backend-change-1000", func(b *testing.B) {
		benchOneBackend(b, func(s *service.Service) { s.Backends[500].Weight = 2 })
	})
	b.Run("one-backend-remove-1000", func(b *testing.B) {
		benchOneBackend(b, func(s *service.Service) {
			s.Backends = append(s.Backends[:500:500], s.Backends[501:]...)
		})
	})
}

// buildTables times the Go Maglev builds of the tables of every service
// the Datapath holds, built as Apply builds them, one after the other: the
// sum of their wall times, and the CPU time the process took meanwhile.
func (ab *applyBench) buildTables(b *testing.B) (wall, cpu time.Duration) {
	b.Helper()
	var jobs []tableInputs
	for _, key := range sortedKeys(ab.dp.applied) {
		st := ab.dp.applied[key]
		jobs = append(jobs, liveInputs(st, st.backends.keys()))
	}
	runtime.GC()
	var sum time.Duration
	cpuStart := cpuTime(b)
	for _, j := range jobs {
		mb := j.maglevBackends()
		start := time.Now()
		_, err := maglev.Build(mb, ab.dp.lb.maglevTableSize())
		sum += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
	}
	return sum, cpuTime(b) - cpuStart
}

// cpuTime is the CPU time the process has taken, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchOneBackend applies a service of 1000 backends, changes it with
// change and applies it again, and reports that Apply, the Go build of the
// new table, and how many slots of the Maglev table name another backend
// after it. A single Apply of a few ms is at the mercy of the machine's
// other work, so the change is made oneBackendRounds times (the service
// restored, unmeasured, between them), each Apply followed by one Go build
// of its table, and the medians of both are reported.
func benchOneBackend(b *testing.B, change func(*service.Service)) {
	ab := newApplyBench(b, DefaultMaxBackends)
	s := service.Service{
		Name: "big", Key: service.Key{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Proto: service.TCP},
		Scheduler: "mh", Forward: service.DR,
	}
	for i := range 1000 {
		s.Backends = append(s.Backends, service.Backend{Addr: applyBackend(i % 100), Port: uint16(8000 + i/100), Weight: 1})
	}
	first := ab.apply(b, []service.Service{s})
	if first.err != nil {
		b.Fatalf("first apply: %v", first.err)
	}
	st, err := ab.dp.Status()
	if err != nil || len(st) != 1 {
		b.Fatalf("status: %v %+v", err, st)
	}
	id := st[0].ID
	before, err := ab.dp.lb.maglevTable(id)
	if err != nil {
		b.Fatal(err)
	}
	changed := s
	changed.Backends = append([]service.Backend(nil), s.Backends...)
	change(&changed)
	c := ab.apply(b, []service.Service{changed})
	after, err := ab.dp.lb.maglevTable(id)
	if err != nil {
		b.Fatal(err)
	}
	st, err = ab.dp.Status()
	if err != nil || len(st) != 1 {
		b.Fatalf("status: %v %+v", err, st)
	}
	ids := map[uint32]bool{}
	for _, be := range st[0].Backends {
		ids[be.ID] = true
	}
	moved, dangling := 0, 0
	for i := range before {
		if before[i] != after[i] {
			moved++
		}
		if !ids[after[i]] {
			dangling++
		}
	}
	applies := []time.Duration{c.took}
	swaps := []time.Duration{c.swap}
	builds := []time.Duration{ab.medianBuild(b, 1)}
	for range oneBackendRounds - 1 {
		if r := ab.apply(b, []service.Service{s}); r.err != nil {
			b.Fatalf("restore: %v", r.err)
		}
		r := ab.apply(b, []service.Service{changed})
		if r.err != nil {
			b.Fatalf("apply: %v", r.err)
		}
		applies = append(applies, r.took)
		swaps = append(swaps, r.swap)
		builds = append(builds, ab.medianBuild(b, 1))
	}
	c.took = median(applies)
	swap := median(swaps)
	build := median(builds)
	ab.report(b, c, []service.Service{changed})
	b.ReportMetric(ms(first.took), "first-apply-ms")
	b.ReportMetric(ms(build), "build-ms")
	b.ReportMetric(float64(c.took)/float64(build), "apply/build")
	b.ReportMetric(ms(swap), "swap-ms")
	b.ReportMetric(float64(c.took-swap)/float64(build), "apply-swap/build")
	b.ReportMetric(float64(moved), "slots-changed")
	b.ReportMetric(float64(dangling), "slots-dangling")
}

// oneBackendRounds is how many times the one-backend lines make their
// change.
const oneBackendRounds = 5

// median is the median of ds.
func median(ds []time.Duration) time.Duration {
	ds = slices.Sorted(slices.Values(ds))
	return ds[len(ds)/2]
}

// medianBuild is the median time of n Go builds of the table of the one
// service the Datapath holds.
func (ab *applyBench) medianBuild(b *testing.B, n int) time.Duration {
	b.Helper()
	var times []time.Duration
	for range n {
		if len(ab.dp.applied) != 1 {
			b.Fatalf("%d services applied, want 1", len(ab.dp.applied))
		}
		for _, st := range ab.dp.applied {
			mb := liveInputs(st, st.backends.keys()).maglevBackends()
			start := time.Now()
			_, err := maglev.Build(mb, ab.dp.lb.maglevTableSize())
			times = append(times, time.Since(start))
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	return median(times)
}

// applyShape is S services of N backends each.
type applyShape struct{ nServices, nBackends int }

func (sh applyShape) String() string { return fmt.Sprintf("%dx%d", sh.nServices, sh.nBackends) }

// maxBackends is datapath.max_backends for the shape: the default, or one
// more than its backends (ID 0 is "no backend").
func (sh applyShape) maxBackends() int { return max(DefaultMaxBackends, sh.nServices*sh.nBackends+1) }

// services builds the shape's services: service i is on VIP
// 198.51.100.(10 + i/100), port 8000 + i%100, and its backends are
// 192.0.2.100 and up on that port.
func (sh applyShape) services() []service.Service {
	out := make([]service.Service, sh.nServices)
	for i := range out {
		vip := netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i/100)})
		port := uint16(8000 + i%100)
		s := service.Service{
			Name: fmt.Sprintf("svc%d", i), Key: service.Key{VIP: vip, Port: port, Proto: service.TCP},
			Scheduler: "mh", Forward: service.DR, Backends: make([]service.Backend, sh.nBackends),
		}
		for j := range s.Backends {
			s.Backends[j] = service.Backend{Addr: applyBackend(j), Port: port, Weight: 1}
		}
		out[i] = s
	}
	return out
}

// applyBackend is the i-th backend address, 192.0.2.100 to 192.0.2.199.
func applyBackend(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i%100)}) }

// applyBench is a Datapath with default map sizes on halb0 in a namespace
// of its own, whose backends' MACs are in the neighbour table for good.
type applyBench struct {
	ns *netnstest.NS
	dp *Datapath
}

func newApplyBench(b testing.TB, maxBackends int) *applyBench {
	b.Helper()
	ab := &applyBench{ns: netnstest.New(b)}
	h := ab.ns.Netlink(b)
	// The peer stays in the namespace: nothing is sent, halb0 only needs
	// to be an Ethernet link that XDP attaches to.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halb0", HardwareAddr: halb0MAC}, PeerName: "halb0p"}); err != nil {
		b.Fatalf("add veth: %v", err)
	}
	halb0, err := h.LinkByName("halb0")
	if err != nil {
		b.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := h.AddrAdd(halb0, addr); err != nil {
		b.Fatalf("address halb0: %v", err)
	}
	for _, name := range []string{"halb0", "halb0p"} {
		l, err := h.LinkByName(name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			b.Fatalf("bring %s up: %v", name, err)
		}
	}
	for i := range 100 {
		err := h.NeighAdd(&netlink.Neigh{
			LinkIndex:    halb0.Attrs().Index,
			IP:           applyBackend(i).AsSlice(),
			HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)},
			State:        netlink.NUD_PERMANENT,
		})
		if err != nil {
			b.Fatalf("neighbour %s: %v", applyBackend(i), err)
		}
	}

	root := halbtest.BPFFS(b)
	cfg := config.Datapath{
		Mode:             config.ModeXDP,
		Interfaces:       []string{"halb0"},
		XDPMode:          "native",
		BPFFS:            filepath.Join(root, "halb"),
		MaglevTableSize:  DefaultMaglevTableSize,
		ConntrackEntries: DefaultConntrackEntries,
		MaxBackends:      maxBackends,
	}
	err = ab.ns.Do(func() error {
		var err error
		ab.dp, err = NewDatapath(cfg, config.ModeXDP, slog.New(slog.DiscardHandler))
		return err
	})
	if err != nil {
		b.Fatalf("NewDatapath: %v", err)
	}
	// The Datapath's neighbour watcher pokes its refresher once it has
	// subscribed, and a refresher that finds services applied by then
	// applies them all again, holding the lock a measured Apply needs.
	// Let that poke pass while there is nothing to apply.
	time.Sleep(500 * time.Millisecond)
	// Cleanup, not Close: the Maglev tables of 1000 services hold a
	// quarter of a GiB of kernel memory, which the pins would keep until
	// the bpffs is unmounted.
	b.Cleanup(func() {
		if err := ab.dp.Cleanup(); err != nil {
			b.Errorf("cleanup: %v", err)
		}
	})
	return ab
}

// applyCost is what one Apply cost.
type applyCost struct {
	took       time.Duration
	builds     time.Duration // the Go builds of its tables, one after the other
	cpu        time.Duration // the CPU time the process took during it
	buildsCPU  time.Duration // and during the builds
	alloc      uint64        // bytes the Go heap allocated during it
	heap, kept uint64        // bytes of heap in use after it and a GC, and what it added to that
	// writes, batches and lookups are the map writes, the batch writes
	// of tables to halb_maglev and the route lookups it made.
	writes, batches, lookups int
	// swap is how long its batch write of tables to halb_maglev took (0
	// when it wrote none): the kernel's RCU grace period is most of it.
	swap time.Duration
	err  error
}

// apply runs one Apply of services and measures it.
func (ab *applyBench) apply(b *testing.B, services []service.Service) applyCost {
	b.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	writes, batches, lookups := ab.counts()
	cpuStart, start := cpuTime(b), time.Now()
	err := ab.dp.Apply(context.Background(), services)
	c := applyCost{took: time.Since(start), cpu: cpuTime(b) - cpuStart, err: err}
	w, bt, l := ab.counts()
	c.writes, c.batches, c.lookups = w-writes, bt-batches, l-lookups
	if c.batches > 0 {
		ab.dp.mu.Lock()
		c.swap = ab.dp.maps.lastSwap()
		ab.dp.mu.Unlock()
	}
	runtime.ReadMemStats(&after)
	c.alloc = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	c.heap = after.HeapInuse
	if after.HeapInuse > before.HeapInuse {
		c.kept = after.HeapInuse - before.HeapInuse
	}
	return c
}

// counts are the Datapath's map writes, table batches and route lookups
// so far.
func (ab *applyBench) counts() (writes, batches, lookups int) {
	ab.dp.mu.Lock()
	defer ab.dp.mu.Unlock()
	return ab.dp.maps.writeCount(), ab.dp.maps.tableBatchCount(), routeLookups(ab.dp)
}

// report reports c and what the data path holds after it. An error is
// fatal unless it is only the backend maps being full, which 1000x100 is
// meant to show.
func (ab *applyBench) report(b *testing.B, c applyCost, services []service.Service) {
	b.Helper()
	st, err := ab.dp.Status()
	if err != nil {
		b.Fatal(err)
	}
	want, placed, live := 0, 0, 0
	for _, s := range services {
		want += len(s.Backends)
	}
	for _, s := range st {
		placed += len(s.Backends)
		for _, be := range s.Backends {
			if be.Live {
				live++
			}
		}
	}
	if c.err != nil {
		first, _, _ := strings.Cut(c.err.Error(), "\n")
		if placed == want || !strings.Contains(c.err.Error(), "all are in use") {
			b.Fatalf("apply: %v", c.err)
		}
		b.Logf("%d of %d backends placed; the first refusal: %s", placed, want, first)
	}
	if len(st) != len(services) || live != placed {
		b.Fatalf("%d of %d services, %d of %d placed backends live", len(st), len(services), live, placed)
	}
	mem, maps, err := ab.mapMemory()
	if err != nil {
		b.Fatal(err)
	}
	tables, tableMem, err := ab.tableMemory()
	if err != nil {
		b.Fatal(err)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("maglev table size %d, conntrack entries %d; the maps hold %d services and %d backends; %d maps; load average %s",
		ab.dp.lb.maglevTableSize(), ab.dp.lb.objs.HalbCt.MaxEntries(), ab.dp.lb.maxServices(), ab.dp.lb.maxBackends()-1, maps,
		strings.Join(strings.Fields(string(load))[:3], " "))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(c.took), "apply-ms")
	b.ReportMetric(ms(c.cpu), "apply-cpu-ms")
	b.ReportMetric(mib(c.alloc), "alloc-MiB")
	b.ReportMetric(mib(c.heap), "heap-MiB")
	b.ReportMetric(mib(c.kept), "heap-delta-MiB")
	b.ReportMetric(mib(mem), "maps-MiB")
	b.ReportMetric(float64(tableMem)/float64(tables*ab.dp.lb.maglevTableSize()), "maglev-bytes/slot")
	b.ReportMetric(float64(len(ab.dp.maps.spareTables())), "spare-tables")
	b.ReportMetric(float64(c.writes), "map-writes")
	b.ReportMetric(float64(c.batches), "outer-map-batches")
	b.ReportMetric(float64(placed), "backends-placed")
	b.ReportMetric(float64(want-placed), "backends-refused")
}

// mapMemory sums the memlock of the maps the programs use and of the
// Maglev tables in halb_maglev, and counts them.
func (ab *applyBench) mapMemory() (uint64, int, error) {
	ids := map[ebpf.MapID]bool{}
	for _, p := range ab.dp.lb.loaded() {
		info, err := p.Info()
		if err != nil {
			return 0, 0, fmt.Errorf("program info: %w", err)
		}
		used, ok := info.MapIDs()
		if !ok {
			return 0, 0, errors.New("program info: the kernel names no maps")
		}
		for _, id := range used {
			ids[id] = true
		}
	}
	tables, err := ab.tableIDs()
	if err != nil {
		return 0, 0, err
	}
	for _, id := range tables {
		ids[id] = true
	}
	sum, err := memlock(maps.Keys(ids))
	return sum, len(ids), err
}

// tableMemory counts the Maglev tables in halb_maglev and sums their
// memlock and the spares'.
func (ab *applyBench) tableMemory() (int, uint64, error) {
	ids, err := ab.tableIDs()
	if err != nil {
		return 0, 0, err
	}
	spares := len(ab.dp.maps.spareTables())
	sum, err := memlock(slices.Values(ids))
	return len(ids) - spares, sum, err
}

// tableIDs are the ids of the Maglev tables in halb_maglev and of the
// spare tables.
func (ab *applyBench) tableIDs() ([]ebpf.MapID, error) {
	var (
		slot, inner uint32
		ids         []ebpf.MapID
	)
	it := ab.dp.lb.objs.HalbMaglev.Iterate()
	for it.Next(&slot, &inner) {
		ids = append(ids, ebpf.MapID(inner))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", halbMapHalbMaglev, err)
	}
	for _, m := range ab.dp.maps.spareTables() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("spare table info: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("spare table info: the kernel gives no id")
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// memlock sums the memlock the kernel reports for the maps of ids.
func memlock(ids iter.Seq[ebpf.MapID]) (uint64, error) {
	var sum uint64
	for id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return 0, fmt.Errorf("open map %d: %w", id, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return 0, fmt.Errorf("map %d info: %w", id, err)
		}
		n, ok := info.Memlock()
		if !ok {
			return 0, fmt.Errorf("map %d (%s): the kernel reports no memlock", id, info.Name)
		}
		sum += n
	}
	return sum, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
