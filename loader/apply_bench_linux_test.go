package loader

import (
	"context"
	"errors"
	"fmt"
	"github.com/halb-lb/halb/internal/halbtest"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// BenchmarkApply measures the control plane: what Datapath.Apply costs in
// time, in Go heap and in kernel memory for the eBPF maps, at the default
// Maglev table size (65537 slots) and conntrack size.
//
//	SxN                  the first Apply of S services of N backends each
//	                     to a fresh Datapath: every service gets an ID, a
//	                     record and a Maglev table, every backend an ID
//	                     and a record.
//	SxN-no-change        a second Apply of the same services (the daemon
//	                     does one at a reload or a health change; the
//	                     data path itself every safetyInterval).
//	one-backend-change-1000
//	                     one service of 1000 backends, one of which goes
//	                     from weight 1 to weight 2: its table is rebuilt.
//	one-backend-remove-1000
//	                     the same service, one backend removed.
//
// The last two also report slots-changed, the slots of the table that
// name another backend ID after the Apply than before it, and
// slots-dangling, the slots that name an ID the service no longer has.
//
// Every backend of every service takes a backend record: 1000x100 needs
// datapath.max_backends 100001 (the default, 4096, holds 4095), which the
// shapes above the default set, as `halb check` asks. Were the maps too
// small, Apply would place what fits and refuse the rest: the lines report
// backends-placed and backends-refused, and log the first refusal.
//
// The backends are DR, on halb0's link with permanent neighbour entries,
// so that every placed backend is live at once and in its table: no
// packet leaves the namespace. Services are on VIPs 198.51.100.10 and up,
// 100 ports each; backends are 192.0.2.100-199 on the service's port (the
// 1000-backend service: 10 ports of each address).
//
// Metrics: apply-ms, the wall time of the one Apply measured, which moves
// with the machine's load (the tables are built on all cores, written
// through memory mappings, and swapped into halb_maglev in one batch
// update, which waits for RCU grace periods), so each line logs the load
// average too; alloc-MiB,
// what the Go heap allocated during it (runtime.MemStats.TotalAlloc);
// heap-MiB, the heap in use after it and a GC (HeapInuse; the test
// binary's own takes part of it) and heap-delta-MiB, the part that Apply
// added and keeps; maps-MiB, the kernel memory of the program's maps and
// of every Maglev table, the sum of each map's memlock as the kernel
// reports it in /proc/self/fdinfo (ebpf.MapInfo.Memlock, which on this
// kernel is the map's own memory-usage estimate). ns/op is suppressed: b.N
// is ignored, each line is one Apply; run with -benchtime 1x.
func BenchmarkApply(b *testing.B) {
	for _, sh := range []applyShape{{1000, 100}} {
		b.Run(sh.String(), func(b *testing.B) {
			ab := newApplyBench(b, sh.maxBackends())
			ab.report(b, ab.apply(b, sh.services()), sh.services())
		})
		b.Run(sh.String()+"-no-change", func(b *testing.B) {
			ab := newApplyBench(b, sh.maxBackends())
			svcs := sh.services()
			ab.apply(b, svcs)
			ab.report(b, ab.apply(b, svcs), svcs)
		})
	}
	b.Run("one-backend-change-1000", func(b *testing.B) {
		benchOneBackend(b, func(s *service.Service) { s.Backends[500].Weight = 2 })
	})
	b.Run("one-backend-remove-1000", func(b *testing.B) {
		benchOneBackend(b, func(s *service.Service) {
			s.Backends = append(s.Backends[:500:500], s.Backends[501:]...)
		})
	})
}

// benchOneBackend applies a service of 1000 backends, changes it with
// change and applies it again, and reports the second Apply and how many
// slots of the Maglev table name another backend after it.
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
	before, err := ab.dp.lb.MaglevTable(id)
	if err != nil {
		b.Fatal(err)
	}
	changed := s
	changed.Backends = append([]service.Backend(nil), s.Backends...)
	change(&changed)
	c := ab.apply(b, []service.Service{changed})
	after, err := ab.dp.lb.MaglevTable(id)
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
	ab.report(b, c, []service.Service{changed})
	b.ReportMetric(ms(first.took), "first-apply-ms")
	b.ReportMetric(float64(moved), "slots-changed")
	b.ReportMetric(float64(dangling), "slots-dangling")
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

func newApplyBench(b *testing.B, maxBackends int) *applyBench {
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
	alloc      uint64 // bytes the Go heap allocated during it
	heap, kept uint64 // bytes of heap in use after it and a GC, and what it added to that
	err        error
}

// apply runs one Apply of services and measures it.
func (ab *applyBench) apply(b *testing.B, services []service.Service) applyCost {
	b.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := ab.dp.Apply(context.Background(), services)
	c := applyCost{took: time.Since(start), err: err}
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
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("maglev table size %d, conntrack entries %d; the maps hold %d services and %d backends; %d maps; load average %s",
		ab.dp.lb.MaglevTableSize(), ab.dp.lb.objs.HalbCt.MaxEntries(), ab.dp.lb.MaxServices(), ab.dp.lb.MaxBackends()-1, maps,
		strings.Join(strings.Fields(string(load))[:3], " "))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(c.took), "apply-ms")
	b.ReportMetric(mib(c.alloc), "alloc-MiB")
	b.ReportMetric(mib(c.heap), "heap-MiB")
	b.ReportMetric(mib(c.kept), "heap-delta-MiB")
	b.ReportMetric(mib(mem), "maps-MiB")
	b.ReportMetric(float64(placed), "backends-placed")
	b.ReportMetric(float64(want-placed), "backends-refused")
}

// mapMemory sums the memlock of the maps the programs use and of the
// Maglev tables in halb_maglev, and counts them.
func (ab *applyBench) mapMemory() (uint64, int, error) {
	ids := map[ebpf.MapID]bool{}
	for _, p := range []*ebpf.Program{ab.dp.lb.Program(), ab.dp.lb.TCProgram()} {
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
	var slot, inner uint32
	it := ab.dp.lb.objs.HalbMaglev.Iterate()
	for it.Next(&slot, &inner) {
		ids[ebpf.MapID(inner)] = true
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", halbMapHalbMaglev, err)
	}
	var sum uint64
	for id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return 0, 0, fmt.Errorf("open map %d: %w", id, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("map %d info: %w", id, err)
		}
		n, ok := info.Memlock()
		if !ok {
			return 0, 0, fmt.Errorf("map %d (%s): the kernel reports no memlock", id, info.Name)
		}
		sum += n
	}
	return sum, len(ids), nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
