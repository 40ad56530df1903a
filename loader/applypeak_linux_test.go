package loader

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
)

// applyPeakOut, when set, makes BenchmarkApplyPeak the child that
// measures: it writes its figures (applyPeak, as JSON) to the file named.
// The peak of one Apply is only known in a process that did little else:
// the parent's other benchmarks leave heap and runtime structures behind.
const applyPeakOut = "HALB_APPLY_PEAK_OUT"

// applyPeak is what the child measured of the first Apply, in KiB.
type applyPeak struct {
	Before int64 // VmRSS just before, with the services built and the maps loaded
	Peak   int64 // VmHWM during the Apply (reset just before it)
	After  int64 // VmRSS after it and a GC returning freed heap to the OS
	Alloc  int64 // the Go heap allocated during it
}

// BenchmarkApplyPeak measures the memory of the first Apply of 1000
// services of 100 backends (BenchmarkApply's shape), not the config
// load's: a child process builds the services in Go, loads the maps,
// resets its peak RSS (/proc/self/clear_refs, 5) and applies them.
// Issue 16's target is an Apply peak under 100 MiB. Each line runs the
// child at a GOGC: the runtime's default, 100, and the daemon's, 50
// (daemon.gcPercent), which trades a few more collections for a peak
// nearer what the Apply holds.
//
//	peak-MiB     VmHWM during the Apply: the process's peak RSS.
//	before-MiB   VmRSS just before it (services, maps loaded, test binary).
//	apply-MiB    peak-MiB less before-MiB: what the Apply itself added.
//	after-MiB    VmRSS after it, once the freed heap went back to the OS.
//	alloc-MiB    Go heap allocated during it (runtime.MemStats.TotalAlloc).
//
// ns/op is suppressed: b.N is ignored; run with -benchtime 1x.
//
//	go test -run '^$' -bench BenchmarkApplyPeak -benchtime 1x ./loader
func BenchmarkApplyPeak(b *testing.B) {
	sh := applyShape{1000, 100}
	if out := os.Getenv(applyPeakOut); out != "" {
		measureApplyPeak(b, sh, out)
		return
	}
	for _, gogc := range []string{"100", "50"} {
		b.Run(sh.String()+"-gogc"+gogc, func(b *testing.B) { applyPeakChild(b, gogc) })
	}
}

// applyPeakChild runs the child with GOGC gogc and reports its figures.
func applyPeakChild(b *testing.B, gogc string) {
	out := filepath.Join(b.TempDir(), "peak.json")
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkApplyPeak$", "-test.benchtime=1x")
	cmd.Env = append(os.Environ(), applyPeakOut+"="+out, "GOGC="+gogc)
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("the child that applies: %v\n%.4000s", err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	var p applyPeak
	if err := json.Unmarshal(data, &p); err != nil {
		b.Fatalf("the child wrote %q: %v", data, err)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(p.Peak)/1024, "peak-MiB")
	b.ReportMetric(float64(p.Before)/1024, "before-MiB")
	b.ReportMetric(float64(p.Peak-p.Before)/1024, "apply-MiB")
	b.ReportMetric(float64(p.After)/1024, "after-MiB")
	b.ReportMetric(float64(p.Alloc)/1024, "alloc-MiB")
}

// measureApplyPeak is the child's side: one first Apply of sh, measured.
func measureApplyPeak(b *testing.B, sh applyShape, out string) {
	ab := newApplyBench(b, sh.maxBackends())
	svcs := sh.services()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset the peak RSS: %v", err)
	}
	var p applyPeak
	p.Before = procStatusKiB(b, "VmRSS")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := ab.dp.Apply(context.Background(), svcs); err != nil {
		b.Fatalf("apply: %v", err)
	}
	runtime.ReadMemStats(&after)
	p.Peak = procStatusKiB(b, "VmHWM")
	p.Alloc = int64(after.TotalAlloc-before.TotalAlloc) / 1024
	debug.FreeOSMemory()
	p.After = procStatusKiB(b, "VmRSS")
	data, err := json.Marshal(p)
	if err == nil {
		err = os.WriteFile(out, data, 0o600)
	}
	if err != nil {
		b.Fatal(err)
	}
}

// procStatusKiB reads a /proc/self/status figure in KiB.
func procStatusKiB(tb testing.TB, name string) int64 {
	tb.Helper()
	kb, err := halbtest.ProcStatusKiB("self", name)
	if err != nil {
		tb.Fatal(err)
	}
	return kb
}

// TestApplyKeepsLittleHeap pins what the loader keeps in Go once an Apply
// is done: for each backend its id, its record and its key, some 200
// bytes; not the Maglev tables it wrote (256 KiB a service at the default
// size, 2.6 KiB a backend here) nor the plans and wants it made. A
// second Apply of the same services keeps nothing more.
func TestApplyKeepsLittleHeap(t *testing.T) {
	ab := newApplyBench(t, DefaultMaxBackends)
	svcs := applyShape{20, 100}.services()
	backends := uint64(20 * 100)
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	if err := ab.dp.Apply(context.Background(), svcs); err != nil {
		t.Fatalf("apply: %v", err)
	}
	first := heap()
	if err := ab.dp.Apply(context.Background(), svcs); err != nil {
		t.Fatalf("apply again: %v", err)
	}
	second := heap()
	kept := int64(first) - int64(before)
	t.Logf("the first Apply of %d backends keeps %d bytes of heap (%d a backend); the second %+d", backends, kept, kept/int64(backends), int64(second)-int64(first))
	if kept > int64(backends)*1024 {
		t.Errorf("the first Apply keeps %d bytes of Go heap, %d a backend: more than 1 KiB a backend", kept, kept/int64(backends))
	}
	if grew := int64(second) - int64(first); grew > int64(backends)*64 {
		t.Errorf("a second Apply of the same services keeps %d bytes more", grew)
	}
}

// TestAddrOf: a queued record leaves its backend's address out, to keep
// an Apply's peak down, and a failed write names the backend by it all
// the same.
func TestAddrOf(t *testing.T) {
	a, b := netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("192.0.2.2:80")
	st := &svcState{backends: map[netip.AddrPort]*beState{a: {id: 1}, b: {id: 2}}}
	if got := st.addrOf(st.backends[b]); got != b {
		t.Errorf("addrOf(backend 2) = %s, want %s", got, b)
	}
	if got := st.addrOf(&beState{id: 3}); got.IsValid() {
		t.Errorf("addrOf(a backend of no service) = %s, want none", got)
	}
}
