package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/vrrp"
)

// waitExit reads halb's log to its end (halb blocks on a full pipe
// otherwise) and returns its exit status and the log; bound only catches a
// hang: it is no measurement.
func (p *daemonProc) waitExit(t *testing.T, bound time.Duration) (int, string) {
	t.Helper()
	var log strings.Builder
	deadline := time.After(bound)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return p.exitCode(t), log.String()
			}
			log.WriteString(line)
			log.WriteByte('\n')
		case <-deadline:
			t.Fatalf("halb still running %s later; its log:\n%s", bound, log.String())
		}
	}
}

// vrrpOnlyConfig is a config whose one instance waits in FAULT for an
// interface that does not exist: the daemon's life without a data path.
func vrrpOnlyConfig(t *testing.T, dir, extra string) string {
	t.Helper()
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+filepath.Join(dir, "halb.sock")+`}
vrrp:
  instances:
    - name: VI_L
      interface: lan9
      vrid: 9
      virtual_ips: [192.0.2.9/24]
`+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// 100 SIGHUPs 0.5 ms apart, then SIGTERM: halb stops cleanly, every time.
// The HUPs coalesce; the TERM never drops behind them. The config has
// many instances so that each read takes a while, as a real one does.
func TestRunTermAfterHUPBurst(t *testing.T) {
	var more strings.Builder
	for i := range 60 {
		fmt.Fprintf(&more, "    - {name: VI_%d, interface: lan%d, vrid: %d, virtual_ips: [192.0.2.%d/24]}\n", i, i, i+10, i+10)
	}
	for try := range 3 {
		cfg := vrrpOnlyConfig(t, t.TempDir(), more.String())
		p := startHalb(t, "run", "-c", cfg)
		p.waitFor(t, "halb starting")
		for range 100 {
			_ = p.cmd.Process.Signal(syscall.SIGHUP)
			time.Sleep(500 * time.Microsecond)
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		code, log := p.waitExit(t, 10*time.Second)
		if code != exitOK || !strings.Contains(log, `msg="halb stopping" signal=terminated`) {
			t.Fatalf("try %d: exit %d after 100 HUPs and a TERM; log:\n%s", try, code, log)
		}
		t.Logf("try %d: %d reloads for 100 HUPs", try, strings.Count(log, `msg="config reloaded"`))
	}
}

// A config file that blocks its reader (here a FIFO nobody writes) stalls
// no SIGTERM: the read is off the daemon's loop.
func TestRunTermDuringBlockedReload(t *testing.T) {
	dir := t.TempDir()
	notify := listenNotify(t, dir)
	cfg := vrrpOnlyConfig(t, dir, "")
	p := startHalb(t, "run", "-c", cfg)
	notify.expect(t, "READY=1")
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	notify.expect(t, "RELOADING=1")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code, log := p.waitExit(t, 10*time.Second); code != exitOK {
		t.Errorf("exit %d; log:\n%s", code, log)
	}
}

// A reload that restarts an instance whose notify script is slow leaves
// the loop free: a SIGTERM right after it is honoured, and the shutdown is
// bounded however long the script sleeps.
func TestRunTermWhileInstanceRestarts(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "notify.sh")
	running := filepath.Join(dir, "running")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho $$ >> "+running+"\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The scripts halb started and left sleeping go with the test.
	t.Cleanup(func() {
		data, _ := os.ReadFile(running)
		for _, f := range strings.Fields(string(data)) {
			pid, err := strconv.Atoi(f)
			if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.HasPrefix(string(cmdline), "sleep\x0030") {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cfg := vrrpOnlyConfig(t, dir, "      notify: "+script+"\n")
	p := startHalb(t, "run", "-c", cfg)
	p.waitFor(t, "to=FAULT")
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(running); err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the notify script never ran")
		}
	}
	// priority 90: a changed instance, stopped and started anew.
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(data), "vrid: 9", "vrid: 9\n      priority: 90", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config reloaded")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	begin := time.Now()
	code, log := p.waitExit(t, 60*time.Second)
	took := time.Since(begin)
	t.Logf("stopped %s after SIGTERM", took.Round(time.Millisecond))
	if code != exitOK {
		t.Errorf("exit %d; log:\n%s", code, log)
	}
	if took > 15*time.Second {
		t.Errorf("SIGTERM took %s with a slow notify script, want a bounded stop (well within 15s); log:\n%s", took, log)
	}
}

// notifyListener is a NOTIFY_SOCKET for one halb.
type notifyListener struct{ conn *net.UnixConn }

func listenNotify(t *testing.T, dir string) *notifyListener {
	t.Helper()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	return &notifyListener{conn: conn}
}

// expect reads notifications until one starts with want.
func (n *notifyListener) expect(t *testing.T, want string) {
	t.Helper()
	buf := make([]byte, 256)
	for {
		_ = n.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		k, err := n.conn.Read(buf)
		if err != nil {
			t.Fatalf("no %s notification: %v", want, err)
		}
		if strings.HasPrefix(string(buf[:k]), want) {
			return
		}
	}
}

// A control socket in a directory others can write is refused by halb
// check and by halb run, which then touches nothing: no socket, no lock.
func TestSocketDirectoryOthersCanWrite(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+filepath.Join(open, "halb.sock")+`}
vrrp:
  instances:
    - {name: VI_L, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	want := "control.socket: " + open + " is writable by group or others (mode 0777)"
	code, _, errs := run(t, "check", "-c", cfg)
	if code != exitBadConfig || !strings.Contains(errs, want) || !strings.Contains(errs, "chmod go-w "+open) {
		t.Errorf("halb check: exit %d, want %d with %q and the fix:\n%s", code, exitBadConfig, want, errs)
	}
	p := startHalb(t, "run", "-c", cfg)
	code, log := p.waitExit(t, 20*time.Second)
	if code != exitBadConfig || !strings.Contains(log, want) {
		t.Errorf("halb run: exit %d, want %d with %q:\n%s", code, exitBadConfig, want, log)
	}
	if entries, err := os.ReadDir(open); err != nil || len(entries) != 0 {
		t.Errorf("halb run left %v in %s (%v)", entries, open, err)
	}
}

// lbNS is a namespace with eth0 (198.51.100.1/24, its peer eth1) for a
// halb that programs XDP and holds a VIP, the MACs of the backends
// 198.51.100.11 and .12 as ARP would have learnt them, and a bpffs of the
// test's own.
func lbNS(t *testing.T) (ns *netnstest.NS, h *netlink.Handle, fs string) {
	t.Helper()
	ns = netnstest.New(t)
	h = ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"eth0", "eth1"} {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	eth0, _ := h.LinkByName("eth0")
	addr, _ := netlink.ParseAddr("198.51.100.1/24")
	if err := h.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	for i, ip := range []string{"198.51.100.11", "198.51.100.12"} {
		if err := h.NeighAdd(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip), HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, byte(0x11 + i)}}); err != nil {
			t.Fatal(err)
		}
	}
	return ns, h, bpffsOfTest(t)
}

// removePins removes what halb pinned in fs, before its unmount.
func removePins(fs string) {
	entries, _ := os.ReadDir(fs)
	for _, e := range entries {
		_ = loader.RemovePinned(filepath.Join(fs, e.Name()))
	}
}

// lbConfig writes a config for a halb on lbNS: a service through XDP on
// eth0 and a v3 instance for its VIP whose accept_mode filter is on.
func lbConfig(t *testing.T, socket, pins, metrics string, priority int) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`control: {socket: %s, metrics: %q}
datapath: {mode: xdp, interfaces: [eth0], bpffs: %s}
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [192.0.2.100/24]}
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
    health_check: {type: none}
`, socket, metrics, pins, priority)), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// vipOn reports whether 192.0.2.100 is on eth0.
func vipOn(t *testing.T, h *netlink.Handle) bool {
	t.Helper()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.Equal(net.ParseIP("192.0.2.100")) {
			return true
		}
	}
	return false
}

// A second halb on the same control socket or the same bpffs path exits 1
// naming the first one's pid, having changed nothing: the first one's
// VIP, accept_mode table, pins and socket are intact, and it still
// answers. A halb killed with SIGKILL leaves lock files that block nobody.
func TestRunSecondHalbRefused(t *testing.T) {
	ns, h, fs := lbNS(t)
	dir := t.TempDir()
	sock, pins := filepath.Join(dir, "halb.sock"), filepath.Join(fs, "halb")
	cfg := lbConfig(t, sock, pins, "", 200)
	first := startHalbIn(t, ns, "run", "-c", cfg)
	first.waitFor(t, "services programmed")
	var firstLog syncLog
	go func() { // keep its pipe flowing, and its log for a failure
		for line := range first.lines {
			firstLog.add(line)
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the first halb's log:\n%s", firstLog.String())
		}
	})
	master := func() bool {
		code, out, _ := run(t, "status", "--json", "-s", sock)
		var st struct {
			Instances []struct{ State string } `json:"instances"`
		}
		return code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Instances) == 1 && st.Instances[0].State == "MASTER"
	}
	for start := time.Now(); !master(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the first halb never became MASTER")
		}
	}
	table, err := vrrp.OpenAcceptTable(int(ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	pinned := func() []string {
		entries, _ := os.ReadDir(pins)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	wantPins := pinned()
	intact := func(after string) {
		t.Helper()
		if !vipOn(t, h) {
			t.Errorf("after %s: the first halb's VIP is gone from eth0", after)
		}
		if !table.Installed() {
			t.Errorf("after %s: the first halb's accept_mode table is gone", after)
		}
		if got := pinned(); !slices.Equal(got, wantPins) || len(got) == 0 {
			t.Errorf("after %s: pins %v, want %v", after, got, wantPins)
		}
		if info, err := os.Stat(sock); err != nil || info.Mode()&os.ModeSocket == 0 {
			t.Errorf("after %s: the first halb's socket: %v", after, err)
		}
		if !master() {
			t.Errorf("after %s: the first halb no longer answers as MASTER", after)
		}
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	for _, tc := range []struct {
		what, socket, pins, want string
	}{
		{"the same config", sock, pins, "control socket " + sock + " is in use by halb pid " + pid},
		{"the same socket", sock, filepath.Join(fs, "other"), "control socket " + sock + " is in use by halb pid " + pid},
		{"the same bpffs", filepath.Join(dir, "other.sock"), pins, "datapath.bpffs " + pins + " is in use by halb pid " + pid},
	} {
		// Priority 255: on old halbs, the second one took the VIP at
		// once, then gave it up on its way out.
		second := startHalbIn(t, ns, "run", "-c", lbConfig(t, tc.socket, tc.pins, "", 255))
		code, log := second.waitExit(t, 20*time.Second)
		if code != exitFailure || !strings.Contains(log, tc.want) {
			t.Errorf("a second halb on %s: exit %d, want 1 with %q:\n%s", tc.what, code, tc.want, log)
		}
		intact("a second halb on " + tc.what)
	}

	// Killed, the first one leaves its lock files behind; they do not
	// keep the next halb out.
	first.Kill()
	for _, lock := range []string{sock + ".lock"} {
		if _, err := os.Stat(lock); err != nil {
			t.Errorf("no stale lock file to test with: %v", err)
		}
	}
	next := startHalbIn(t, ns, "run", "-c", cfg)
	next.waitFor(t, "services programmed")
	for start := time.Now(); !master(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("a halb after a killed one never became MASTER")
		}
	}
	_ = next.cmd.Process.Signal(syscall.SIGTERM)
	if code, log := next.waitExit(t, 20*time.Second); code != exitOK {
		t.Errorf("exit %d:\n%s", code, log)
	}
	for _, lock := range []string{sock + ".lock"} {
		if _, err := os.Stat(lock); !os.IsNotExist(err) {
			t.Errorf("%s left after a clean stop: %v", lock, err)
		}
	}
}

// A start that fails late changes nothing: with the metrics port taken,
// halb exits 1 naming it, and its VIP (priority 255: Master at once) was
// never added, nor its accept_mode table made.
func TestRunMetricsPortInUse(t *testing.T) {
	ns, h, fs := lbNS(t)
	var taken net.Listener
	if err := ns.Do(func() (err error) {
		taken, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	// Every address added in the namespace, for as long as halb runs.
	updates := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	handle := ns.Handle()
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{Namespace: &handle}); err != nil {
		t.Fatal(err)
	}
	vipAdded := func() bool {
		for {
			select {
			case u := <-updates:
				if u.NewAddr && u.LinkAddress.IP.Equal(net.ParseIP("192.0.2.100")) {
					return true
				}
			default:
				return false
			}
		}
	}
	dir := t.TempDir()
	sock, pins := filepath.Join(dir, "halb.sock"), filepath.Join(fs, "halb")
	addr := taken.Addr().String()
	table, err := vrrp.OpenAcceptTable(int(ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	for try := range 3 {
		p := startHalbIn(t, ns, "run", "-c", lbConfig(t, sock, pins, addr, 255))
		code, log := p.waitExit(t, 20*time.Second)
		if code != exitFailure || !strings.Contains(log, "control.metrics "+addr) {
			t.Errorf("try %d: exit %d, want 1 naming control.metrics %s:\n%s", try, code, addr, log)
		}
		if vipAdded() || vipOn(t, h) {
			t.Errorf("try %d: the VIP was added to eth0 by a start that failed", try)
		}
		if table.Installed() {
			t.Errorf("try %d: the accept_mode table is there after a start that failed", try)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("try %d: the control socket is left: %v", try, err)
		}
	}

	// The same halb with a free port adds the VIP, and the watch above
	// sees it: it would have seen the failed starts' too.
	p := startHalbIn(t, ns, "run", "-c", lbConfig(t, sock, pins, halbtest.FreeAddr(t), 255))
	p.waitFor(t, "services programmed")
	for start := time.Now(); !vipOn(t, h); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("halb with a free metrics port never added its VIP")
		}
	}
	for start := time.Now(); !vipAdded(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the address watch missed the VIP being added")
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitExit(t, 20*time.Second)
}

// syncLog is a log one goroutine writes and the test reads.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(line)
	l.b.WriteByte('\n')
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A start that fails once the data path is programmed takes back the data
// path it made: more services than the eBPF maps hold, and halb exits 1
// with no program left on eth0 and nothing pinned.
func TestRunFailedStartRemovesItsDataPath(t *testing.T) {
	ns, h, fs := lbNS(t)
	pins := filepath.Join(fs, "halb")
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s}\ndatapath: {mode: xdp, interfaces: [eth0], bpffs: %s, maglev_table_size: 251}\nservices:\n",
		filepath.Join(t.TempDir(), "halb.sock"), pins)
	for port := 1; port <= 1025; port++ { // the maps hold 1024
		fmt.Fprintf(&b, "  - {name: s%d, vip: 192.0.2.100, port: %d, backends: [{address: 198.51.100.11}], health_check: {type: none}}\n", port, port)
	}
	cfg := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalbIn(t, ns, "run", "-c", cfg)
	code, log := p.waitExit(t, 120*time.Second)
	if code != exitFailure || !strings.Contains(log, "all are in use") {
		t.Fatalf("exit %d, want 1 for want of room in the maps:\n%.3000s", code, log)
	}
	if !strings.Contains(log, `msg="data path removed" datapath=xdp reason="the start failed"`) {
		t.Errorf("the undo is not logged:\n%.3000s", log)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("%s is left after a failed start: %v", pins, err)
	}
	if eth0, err := h.LinkByName("eth0"); err != nil || eth0.Attrs().Xdp != nil && eth0.Attrs().Xdp.Attached {
		t.Errorf("XDP still attached to eth0 after a failed start (%v)", err)
	}

	// A data path an earlier halb left forwarding is not this start's to
	// take away: it stays, attached and pinned.
	earlier := startHalbIn(t, ns, "run", "-c", lbConfig(t, filepath.Join(t.TempDir(), "halb.sock"), pins, "", 100))
	earlier.waitFor(t, "services programmed")
	_ = earlier.cmd.Process.Signal(syscall.SIGTERM)
	if code, log := earlier.waitExit(t, 20*time.Second); code != exitOK {
		t.Fatalf("exit %d:\n%s", code, log)
	}
	p = startHalbIn(t, ns, "run", "-c", cfg)
	if code, log := p.waitExit(t, 120*time.Second); code != exitFailure || strings.Contains(log, "data path removed") {
		t.Errorf("exit %d, want 1 and the adopted data path left alone:\n%.3000s", code, log)
	}
	if _, err := os.Stat(filepath.Join(pins, "halb_xdp_lb_eth0")); err != nil {
		t.Errorf("the adopted link pin is gone after a failed start: %v", err)
	}
	if eth0, err := h.LinkByName("eth0"); err != nil || eth0.Attrs().Xdp == nil || !eth0.Attrs().Xdp.Attached {
		t.Errorf("the adopted program is off eth0 after a failed start (%v)", err)
	}
}

// control.socket naming the config file itself (a typo, or
// HALB_CONTROL_SOCKET): halb check and halb run refuse it, naming the
// path and what is there, and the file is left as it was.
func TestControlSocketIsTheConfig(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "halb.yaml")
	body := `control: {socket: ` + cfg + `}
vrrp:
  instances:
    - {name: VI_L, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
`
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	want := "control.socket: " + cfg + " is a regular file"
	code, _, errs := run(t, "check", "-c", cfg)
	if code != exitBadConfig || !strings.Contains(errs, want) {
		t.Errorf("halb check: exit %d, want %d with %q:\n%s", code, exitBadConfig, want, errs)
	}
	p := startHalb(t, "run", "-c", cfg)
	code, log := p.waitExit(t, 20*time.Second)
	if code != exitBadConfig || !strings.Contains(log, want) {
		t.Errorf("halb run: exit %d, want %d with %q:\n%s", code, exitBadConfig, want, log)
	}
	if got, err := os.ReadFile(cfg); err != nil || string(got) != body {
		t.Errorf("the config file is now %q (%v)", got, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("halb left %v in %s", entries, dir)
	}
}

// A second halb with a control socket and bpffs of its own but the first
// one's virtual router (interface, VRID, family) exits 1 naming the first
// one's pid, and the first keeps its VIP and stays MASTER; a running halb
// that a reload gives that virtual router keeps running without it,
// saying why. On 4ff18e6 the second took the VIP as a second MASTER.
func TestRunSameVirtualRouterRefused(t *testing.T) {
	ns, h, fs := lbNS(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "halb.sock")
	first := startHalbIn(t, ns, "run", "-c", lbConfig(t, sock, filepath.Join(fs, "halb"), "", 200))
	first.waitFor(t, "services programmed")
	var firstLog syncLog
	go func() {
		for line := range first.lines {
			firstLog.add(line)
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the first halb's log:\n%s", firstLog.String())
		}
	})
	states := func(sock string) []string {
		code, out, _ := run(t, "status", "--json", "-s", sock)
		var st struct {
			Instances []struct{ Name, State string } `json:"instances"`
		}
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil {
			return nil
		}
		var s []string
		for _, in := range st.Instances {
			s = append(s, in.Name+" "+in.State)
		}
		return s
	}
	master := func() bool { return slices.Equal(states(sock), []string{"VI_1 MASTER"}) }
	for start := time.Now(); !master(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the first halb never became MASTER")
		}
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	want := "vrrp instance VI_1 (interface eth0, vrid 51, IPv4) is in use by halb pid " + pid

	second := startHalbIn(t, ns, "run", "-c", lbConfig(t, filepath.Join(dir, "second.sock"), filepath.Join(fs, "second"), "", 255))
	code, log := second.waitExit(t, 20*time.Second)
	if code != exitFailure || !strings.Contains(log, want) {
		t.Errorf("a second halb on the same virtual router: exit %d, want 1 with %q:\n%s", code, want, log)
	}
	if !vipOn(t, h) || !master() {
		t.Errorf("after the second halb: VIP on eth0 %v, first halb's instances %v, want the VIP and VI_1 MASTER", vipOn(t, h), states(sock))
	}

	// A third halb runs another virtual router, then a reload asks it for
	// the first one's too.
	third := filepath.Join(dir, "third.yaml")
	thirdSock := filepath.Join(dir, "third.sock")
	conf := func(extra string) {
		t.Helper()
		if err := os.WriteFile(third, []byte(`control: {socket: `+thirdSock+`}
vrrp:
  instances:
    - {name: VI_2, interface: eth0, vrid: 52, priority: 100, virtual_ips: [192.0.2.102/24]}
`+extra), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf("")
	p := startHalbIn(t, ns, "run", "-c", third)
	for start := time.Now(); len(states(thirdSock)) != 1; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the third halb never answered")
		}
	}
	conf("    - {name: VI_1, interface: eth0, vrid: 51, version: 3, priority: 255, advert_interval: 100ms, virtual_ips: [192.0.2.100/24]}\n")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	line := p.waitFor(t, "vrrp instance not started")
	if !strings.Contains(line, "instance=VI_1") || !strings.Contains(line, want) {
		t.Errorf("the reload's refusal: %s, want VI_1 and %q", line, want)
	}
	p.waitFor(t, "config reloaded")
	if got := states(thirdSock); len(got) != 1 || !strings.HasPrefix(got[0], "VI_2 ") {
		t.Errorf("the third halb after the reload runs %v, want VI_2 alone", got)
	}
	if !vipOn(t, h) || !master() {
		t.Errorf("after the reload: VIP on eth0 %v, first halb's instances %v, want the VIP and VI_1 MASTER", vipOn(t, h), states(sock))
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code, log := p.waitExit(t, 20*time.Second); code != exitOK {
		t.Errorf("the third halb: exit %d:\n%s", code, log)
	}
	if !vipOn(t, h) || !master() {
		t.Errorf("after the third halb stopped: VIP on eth0 %v, first halb's instances %v", vipOn(t, h), states(sock))
	}
	_ = first.Signal(syscall.SIGTERM)
	<-first.Done()
}

// The accept_mode table that `nft flush ruleset` (nftables.service's start
// and reload) removes under a running halb comes back at the next resync,
// with a log line; and it is the first halb's alone: a second halb in the
// namespace (its own socket, bpffs and VRID) that needs a filter exits 1
// naming the first, whose table stays. On 4ff18e6 the table never came
// back, and the second halb replaced it.
func TestAcceptFilterFlushedAndOwned(t *testing.T) {
	ns, _, fs := lbNS(t)
	dir := t.TempDir()
	first := startHalbIn(t, ns, "run", "-c", lbConfig(t, filepath.Join(dir, "halb.sock"), filepath.Join(fs, "halb"), "", 200))
	first.waitFor(t, "accept_mode filter installed")
	table, err := vrrp.OpenAcceptTable(int(ns.Handle()))
	if err != nil {
		t.Fatal(err)
	}
	if !table.Installed() {
		t.Fatal("no accept_mode table after halb logged it installed")
	}

	second := filepath.Join(dir, "second.yaml")
	if err := os.WriteFile(second, []byte(`control: {socket: `+filepath.Join(dir, "second.sock")+`}
vrrp:
  instances:
    - {name: VI_2, interface: eth0, vrid: 52, version: 3, priority: 200, virtual_ips: [192.0.2.102/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalbIn(t, ns, "run", "-c", second)
	code, log := p.waitExit(t, 20*time.Second)
	want := "accept_mode filter (nftables table inet halb_accept) is in use by halb pid " + strconv.Itoa(first.cmd.Process.Pid)
	if code != exitFailure || !strings.Contains(log, want) {
		t.Errorf("a second halb needing the filter: exit %d, want 1 with %q:\n%s", code, want, log)
	}
	if !table.Installed() {
		t.Error("the first halb's table is gone after the second halb")
	}

	if err := ns.Do(func() error {
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		conn.FlushRuleset()
		return conn.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	if table.Installed() {
		t.Fatal("the table survived nft flush ruleset")
	}
	// The resync runs every 10 s; waitFor's 20 s covers one.
	line := first.waitFor(t, "accept_mode filter changed or removed outside halb; reinstalling")
	if !strings.Contains(line, `found="the table is gone"`) {
		t.Errorf("the log line does not say what was found: %s", line)
	}
	first.waitFor(t, "accept_mode filter installed")
	if !table.Installed() {
		t.Error("the table is not back after halb logged it reinstalled")
	}
	_ = first.cmd.Process.Signal(syscall.SIGTERM)
	if code, log := first.waitExit(t, 20*time.Second); code != exitOK {
		t.Errorf("exit %d:\n%s", code, log)
	}
	if table.Installed() {
		t.Error("the table is left after halb stopped")
	}
}
