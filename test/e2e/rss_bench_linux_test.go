package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/maglev"
)

// BenchmarkIdleRSS runs `halb run` (XDP native, DR) with S services of N
// backends each, health_check none, and measures the daemon once it is
// programmed and idle:
//
//	programmed-s   from starting the process to its "services programmed"
//	               log line: config load, program load, the first Apply.
//	started-s      of which, to its "halb starting" line: the binary read
//	               and started, the configuration loaded and checked.
//	open-s         from there to "data path attached": the locks, the
//	               program and maps loaded, pins adopted, the attach.
//	apply-s        from there to "services programmed": the first
//	               Apply. These three are read from the time stamps of
//	               the daemon's log lines (to the millisecond).
//	load-s         config.Load of the same file, in this process.
//	builds-s       the Maglev tables of its services built one after the
//	               other on one goroutine, in this process, as the
//	               loader builds them (maglev.Build, backends keyed by
//	               address:port, the default table size).
//	x-budget       programmed-s / (load-s + builds-s): issue 16's target
//	               is at most 1.5. Machines differ by 2x and more, so the
//	               two sides are measured in the same run.
//	live-s         from starting it until the maps it pinned hold every
//	               backend live (their MACs resolved by ARP), read from
//	               halb_backends every 20 ms (loader.LiveBackends).
//	live-after-s   live-s less programmed-s (target: at most 2 s).
//	status-s       one `halb status --json` once idle, which says the
//	               same as the maps and reads each backend's counters
//	               too: at this size it takes seconds, which is why the
//	               wait for live-s does not ask it.
//	rss-MiB        VmRSS after 60 s idle (the eBPF data path applies
//	               nothing again while nothing changes: no resync).
//	               Target: under 40 MiB.
//	rss-anon-MiB   of which the process's own memory: the Go heap, its
//	               metadata, the stacks.
//	rss-file-MiB   of which the pages of the binary it has mapped: those
//	               idling touches, since the daemon pages out what its
//	               start ran (daemon/memory.go, releaseCode).
//	rss-pmd-MiB    of those, the ones mapped 2 MiB at a time
//	               (FilePmdMapped of /proc/PID/smaps_rollup): 0 with the
//	               binary's page cache dropped, below.
//	hwm-MiB        VmHWM, the peak: the config load and the first
//	               Apply.
//	idle-cpu-%     the CPU time (user and system) the daemon used in the
//	               60 idle seconds, as a share of one CPU (target: under
//	               1 %).
//
// The figures are those of a daemon installed and started after a boot:
// the binary the benchmark builds has its page cache dropped before the
// daemon starts (rssColdBinary), so that they do not depend on how the
// file came to be cached. A binary just written may sit in the page cache
// in large folios, which the kernel maps whole, 2 MiB at a time, resident
// whether used or not: `halb run` with the packaged idle configuration
// (configs/deb/halb.yaml), built with cgo (linked by the system's linker),
// held 30.0 MiB just built, 14.3 MiB of it mapped so, and 24.3 MiB with
// its page cache dropped (kernel 6.18, ext4). The static build this
// benchmark makes, as the release does, showed no such mapping either
// way (1000 x 100: rss-file-MiB 20.6 just built, 20.5 dropped).
//
// The balancer's eth0 (192.0.2.2/24) is a veth whose peer, in a namespace
// of its own, holds the backends' addresses 192.0.2.100-199 and answers
// ARP for them; nothing else is sent. Services are on VIPs 198.51.100.10
// and up, 100 ports each (8000-8099); every service has backends
// 192.0.2.100 and up on its port.
//
// Every backend of every service takes a record in the eBPF maps: the
// configuration sets datapath.max_backends to one more than the backends
// when they exceed the default's 4095, as `halb check` asks. Should the
// daemon exit before it is programmed because the maps are full anyway,
// the line reports exited-s, when it did, and logs what it said. ns/op is
// suppressed: b.N is ignored, each line is one daemon; run with
// -benchtime 1x.
func BenchmarkIdleRSS(b *testing.B) {
	netnstest.Require(b)
	bin := halbtest.Build(b)
	for _, sh := range []struct{ services, backends int }{{1000, 100}} {
		b.Run(fmt.Sprintf("%dx%d", sh.services, sh.backends), func(b *testing.B) {
			idleRSS(b, bin, sh.services, sh.backends)
		})
	}
}

// The idle wait, and the bounds of the waits before it.
const (
	rssIdle        = 60 * time.Second
	rssProgrammed  = 5 * time.Minute
	rssLive        = time.Minute
	rssStopTimeout = time.Minute
)

func idleRSS(b *testing.B, bin string, services, backends int) {
	lb, peers := netnstest.New(b), netnstest.New(b)
	h := lb.Netlink(b)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
		b.Fatalf("add veth: %v", err)
	}
	peer, err := h.LinkByName("eth0p")
	if err != nil {
		b.Fatal(err)
	}
	if err := h.LinkSetNsFd(peer, int(peers.Handle())); err != nil {
		b.Fatalf("move eth0p: %v", err)
	}
	rssUp(b, h, "eth0", "192.0.2.2/24")
	addrs := make([]string, 0, 100)
	for i := range min(backends, 100) {
		addrs = append(addrs, fmt.Sprintf("192.0.2.%d/24", 100+i))
	}
	rssUp(b, peers.Netlink(b), "eth0p", addrs...)

	dir := b.TempDir()
	fs := halbtest.BPFFS(b)
	sock := filepath.Join(dir, "halb.sock")
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, rssConfig(sock, filepath.Join(fs, "halb"), services, backends), 0o600); err != nil {
		b.Fatal(err)
	}
	checkStart := time.Now()
	if out, err := exec.Command(bin, "check", "-c", cfg).CombinedOutput(); err != nil {
		b.Fatalf("halb check refuses the %dx%d config: %v\n%.2000s", services, backends, err, out)
	}
	b.Logf("halb check accepts the config in %s", time.Since(checkStart).Round(time.Millisecond))
	load, builds := rssBudget(b, cfg)

	rssColdBinary(b, bin)
	// Its log is shown by the benchmark, cut to size, not whole.
	start := time.Now()
	proc := halbtest.Start(b, lb, exec.Command(bin, "run", "--cleanup", "-c", cfg), halbtest.Options{Log: &halbtest.Log{}})
	out, exited := proc.Log, proc.Done()
	b.Cleanup(func() {
		if proc.Exited() {
			return
		}
		if err := proc.Stop(syscall.SIGTERM, rssStopTimeout); errors.Is(err, halbtest.ErrStillRunning) {
			b.Errorf("halb did not stop within %s of SIGTERM", rssStopTimeout)
		}
	})

	at, ok := rssWait(b, exited, rssProgrammed, func() bool { return strings.Contains(out.String(), "services programmed") })
	if !ok {
		rssExited(b, out.String(), time.Since(start), services, backends)
		return
	}
	programmed := at.Sub(start)
	pins := filepath.Join(fs, "halb")
	at, ok = rssWait(b, exited, rssLive, func() bool {
		n, err := loader.LiveBackends(pins)
		return err == nil && n == services*backends
	})
	if !ok {
		b.Fatalf("halb exited before every backend was live:\n%.4000s", out.String())
	}
	live := at.Sub(start)

	cpu0 := rssCPU(b, proc.Pid())
	select {
	case <-exited:
		b.Fatalf("halb exited while idle:\n%.4000s", out.String())
	case <-time.After(rssIdle):
	}
	cpu := rssCPU(b, proc.Pid()) - cpu0
	rss, hwm := rssField(b, proc.Pid(), "VmRSS"), rssField(b, proc.Pid(), "VmHWM")
	// What the RSS is made of: the process's own memory (the Go heap,
	// its metadata, stacks) and the pages of the binary it has mapped.
	anon, file := rssField(b, proc.Pid(), "RssAnon"), rssField(b, proc.Pid(), "RssFile")
	pmd, err := halbtest.ProcKiB(strconv.Itoa(proc.Pid()), "smaps_rollup", "FilePmdMapped")
	if err != nil {
		b.Fatal(err)
	}
	statusStart := time.Now()
	shown, err := rssStatusLive(bin, sock)
	status := time.Since(statusStart)
	switch {
	case err != nil:
		// Its client gives up after 5 s, which a loaded machine
		// reaches at this size: the time is the figure then.
		b.Logf("halb status failed after %s: %v", status.Round(time.Millisecond), err)
	case shown != services*backends:
		b.Errorf("halb status shows %d backends live, want the %d the maps hold live", shown, services*backends)
	}

	loadavg, _ := os.ReadFile("/proc/loadavg")
	b.Logf("programmed after %s (config load %s, table builds %s), every backend live after %s; load average %s",
		programmed.Round(time.Millisecond), load.Round(time.Millisecond), builds.Round(time.Millisecond),
		live.Round(time.Millisecond), strings.Join(strings.Fields(string(loadavg))[:3], " "))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(programmed.Seconds(), "programmed-s")
	rssStages(b, out.String(), start)
	b.ReportMetric(load.Seconds(), "load-s")
	b.ReportMetric(builds.Seconds(), "builds-s")
	b.ReportMetric(programmed.Seconds()/(load+builds).Seconds(), "x-budget")
	b.ReportMetric(live.Seconds(), "live-s")
	b.ReportMetric((live - programmed).Seconds(), "live-after-s")
	b.ReportMetric(status.Seconds(), "status-s")
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(float64(hwm)/1024, "hwm-MiB")
	b.ReportMetric(float64(anon)/1024, "rss-anon-MiB")
	b.ReportMetric(float64(file)/1024, "rss-file-MiB")
	b.ReportMetric(float64(pmd)/1024, "rss-pmd-MiB")
	b.ReportMetric(100*cpu.Seconds()/rssIdle.Seconds(), "idle-cpu-%")
}

// rssColdBinary drops the page cache of the binary at path, and of that
// file alone, as a boot would: written out first (fsync), so that the
// kernel can let every page go. The daemon then reads the pages it
// touches from the disk as it touches them.
func rssColdBinary(b *testing.B, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatalf("fsync %s: %v", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatalf("drop the page cache of %s: %v", path, err)
	}
}

// rssStages reports where the way to "services programmed" went, from the
// time stamps of the daemon's log lines: started-s, open-s and apply-s.
func rssStages(b *testing.B, log string, start time.Time) {
	b.Helper()
	var at []time.Time
	for _, msg := range []string{"halb starting", "data path attached", "services programmed"} {
		t, err := logTime(log, msg)
		if err != nil {
			b.Fatal(err)
		}
		at = append(at, t)
	}
	b.ReportMetric(at[0].Sub(start).Seconds(), "started-s")
	b.ReportMetric(at[1].Sub(at[0]).Seconds(), "open-s")
	b.ReportMetric(at[2].Sub(at[1]).Seconds(), "apply-s")
}

// logTime is the time stamp of the first line of log, in the text format,
// with message msg.
func logTime(log, msg string) (time.Time, error) {
	if at, ok := logTimeAfter(log, time.Time{}, ` msg="`+msg+`"`); ok {
		return at, nil
	}
	return time.Time{}, fmt.Errorf("no %q line in the log", msg)
}

// rssBudget is the other side of x-budget: config.Load of the file at
// path, and the Maglev tables of its services built one after another on
// this goroutine, each from its backends as the loader keys them
// (address:port), at the table size the daemon uses.
func rssBudget(b *testing.B, path string) (load, builds time.Duration) {
	b.Helper()
	runtime.GC()
	start := time.Now()
	cfg, err := config.Load(path)
	load = time.Since(start)
	if err != nil {
		b.Fatalf("config.Load: %v", err)
	}
	size := cfg.Datapath.MaglevTableSize
	if size == 0 {
		size = loader.DefaultMaglevTableSize
	}
	tables := make([][]maglev.Backend, len(cfg.Services))
	for i, s := range cfg.Services {
		for _, be := range s.Backends {
			port := be.Port
			if port == 0 {
				port = s.Port
			}
			key := netip.AddrPortFrom(be.Address, uint16(port)).String()
			tables[i] = append(tables[i], maglev.Backend{Key: key, Weight: uint32(max(be.Weight, 1))})
		}
	}
	cfg = nil
	runtime.GC()
	start = time.Now()
	for _, t := range tables {
		if _, err := maglev.Build(t, size); err != nil {
			b.Fatal(err)
		}
	}
	return load, time.Since(start)
}

// rssConfig is the configuration of S services of N backends each.
func rssConfig(sock, pins string, services, backends int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s}\n", sock)
	fmt.Fprintf(&b, "datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0], bpffs: %s, max_backends: %d}\n",
		pins, max(4096, services*backends+1))
	b.WriteString("services:\n")
	for i := range services {
		fmt.Fprintf(&b, "  - name: svc%d\n    vip: 198.51.100.%d\n    port: %d\n    health_check: {type: none}\n    backends:\n", i, 10+i/100, 8000+i%100)
		for j := range backends {
			fmt.Fprintf(&b, "      - {address: 192.0.2.%d}\n", 100+j%100)
		}
	}
	return []byte(b.String())
}

// rssWait polls ok every 20 ms until it holds, and returns when it did;
// false when the daemon exited first. It fails b after bound.
func rssWait(b *testing.B, exited <-chan struct{}, bound time.Duration, ok func() bool) (time.Time, bool) {
	b.Helper()
	start := time.Now()
	for !ok() {
		select {
		case <-exited:
			return time.Time{}, false
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(start) > bound {
			b.Fatalf("not within %s", bound)
		}
	}
	return time.Now(), true
}

// rssExited reports a daemon that exited before it was programmed, after
// took: when the maps had no room for the backends, the limit the
// 1000x100 line documents, the line says so (exited-s, and
// backends-refused, the refusals in its error); else b fails.
func rssExited(b *testing.B, out string, took time.Duration, services, backends int) {
	b.Helper()
	full := strings.Count(out, "all are in use")
	if full == 0 {
		b.Fatalf("halb exited before it was programmed:\n%.4000s", out)
	}
	line := out
	if i := strings.Index(out, "program services"); i >= 0 {
		line = out[strings.LastIndexByte(out[:i], '\n')+1:]
	}
	line, _, _ = strings.Cut(line, "\n")
	b.Logf("halb exited %s after it started, before it was programmed: %d of %d backends found the maps full; its error begins: %.400s",
		took.Round(time.Millisecond), full, services*backends, line)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(took.Seconds(), "exited-s")
	b.ReportMetric(float64(full), "backends-refused")
}

// rssStatusLive is how many backends `halb status` shows live.
func rssStatusLive(bin, sock string) (int, error) {
	out, err := exec.Command(bin, "status", "--json", "-s", sock).Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return 0, fmt.Errorf("%w: %.400s", err, ee.Stderr)
	} else if err != nil {
		return 0, err
	}
	var st struct {
		Services []struct {
			Backends []statusBackend `json:"backends"`
		} `json:"services"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return 0, err
	}
	live := 0
	for _, s := range st.Services {
		for _, be := range s.Backends {
			if be.Live {
				live++
			}
		}
	}
	return live, nil
}

// rssCPU is the user and system time process pid has used.
func rssCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 14th and 15th of the line.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	// USER_HZ is 100 on every Linux architecture halb builds for.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// rssField reads a "Name:  1234 kB" line of /proc/PID/status, in KiB.
func rssField(b *testing.B, pid int, name string) int64 {
	b.Helper()
	kb, err := halbtest.ProcStatusKiB(strconv.Itoa(pid), name)
	if err != nil {
		b.Fatal(err)
	}
	return kb
}

// rssUp gives interface name addrs and brings it up.
func rssUp(b *testing.B, h *netlink.Handle, name string, addrs ...string) {
	b.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			b.Fatal(err)
		}
		if err := h.AddrAdd(l, addr); err != nil {
			b.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		b.Fatal(err)
	}
}
