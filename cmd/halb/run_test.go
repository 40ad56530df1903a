package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// The test binary doubles as halb: with HALB_TEST_MAIN=1 it runs main, so
// `halb run` is tested as a real process receiving real signals.
func TestMain(m *testing.M) {
	if os.Getenv("HALB_TEST_MAIN") == "1" {
		main()
		return
	}
	if sock := os.Getenv("HALB_TEST_FAKE_STATUS"); sock != "" {
		serveFakeStatus(sock)
		return
	}
	os.Exit(m.Run())
}

type daemonProc struct {
	*halbtest.Proc
	cmd   *exec.Cmd
	lines <-chan string
}

// startHalb starts halb in a network namespace of its own: the daemon
// opens VRRP sockets, and those must never reach the host's links.
func startHalb(t *testing.T, args ...string) *daemonProc {
	t.Helper()
	return startHalbIn(t, netnstest.New(t), args...)
}

func startHalbIn(t *testing.T, ns *netnstest.NS, args ...string) *daemonProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "HALB_TEST_MAIN=1")
	proc := halbtest.Start(t, ns, cmd, halbtest.Options{Lines: true})
	return &daemonProc{Proc: proc, cmd: cmd, lines: proc.Lines()}
}

// waitFor reads log lines until one contains want; the deadline is generous
// because it only bounds a hang, it measures nothing.
func (p *daemonProc) waitFor(t *testing.T, want string) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("halb exited before logging %q", want)
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-deadline:
			t.Fatalf("halb did not log %q", want)
		}
	}
}

// waitForAll reads log lines until each of wants has appeared, in any
// order: what goroutines log may interleave.
func (p *daemonProc) waitForAll(t *testing.T, wants ...string) {
	t.Helper()
	left := slices.Clone(wants)
	deadline := time.After(20 * time.Second)
	for len(left) > 0 {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("halb exited before logging %q", left)
			}
			left = slices.DeleteFunc(left, func(w string) bool { return strings.Contains(line, w) })
		case <-deadline:
			t.Fatalf("halb did not log %q", left)
		}
	}
}

func (p *daemonProc) exitCode(t *testing.T) int {
	t.Helper()
	err := p.Err()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func TestRunRefusesBadConfig(t *testing.T) {
	p := startHalb(t, "run", "-c", "../../config/testdata/broken/vrid-256.yaml")
	p.waitFor(t, "vrrp.instances[0].vrid")
	if code := p.exitCode(t); code != exitBadConfig {
		t.Errorf("exit status %d, want %d", code, exitBadConfig)
	}
}

// A bad file on SIGHUP is refused and the old config keeps running; a good
// one is taken, its log level included; SIGTERM stops cleanly.
func TestRunReloadAndStop(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "halb.yaml")
	// VRRP only: the data paths have tests of their own, and this one
	// is about the daemon's life.
	good := []byte(`log:
  level: info
control: {socket: ` + filepath.Join(dir, "halb.sock") + `}
vrrp:
  instances:
    - name: VI_PI
      interface: eth0
      vrid: 42
      virtual_ips: [192.0.2.30/24]
`)
	write := func(data string) {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(string(good))

	p := startHalb(t, "run", "-c", path)
	p.waitFor(t, "halb starting")

	write(strings.Replace(string(good), "vrid: 42", "vrid: 420", 1))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	line := p.waitFor(t, "config rejected")
	if !strings.Contains(line, "vrrp.instances[0].vrid") {
		t.Errorf("rejection does not name the field: %s", line)
	}

	write(strings.Replace(string(good), "level: info", "level: debug", 1))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config reloaded")

	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	if code := p.exitCode(t); code != exitOK {
		t.Errorf("exit status after SIGTERM = %d, want 0", code)
	}
}

// halb run with datapath.mode: xdp attaches the program to the configured
// interface, programs the service and pins it all under datapath.bpffs;
// health checks that fail take backends out of the Maglev table; stopping
// leaves the pins (and so the forwarding) in place.
func TestRunProgramsXDP(t *testing.T) {
	ns, h, fs := lbNS(t)
	pins := filepath.Join(fs, "halb")
	cfg := filepath.Join(t.TempDir(), "halb.yaml")
	metrics := halbtest.FreeAddr(t)
	sock := filepath.Join(t.TempDir(), "halb.sock")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+sock+`, metrics: "`+metrics+`"}
datapath:
  mode: xdp
  interfaces: [eth0]
  bpffs: `+pins+`
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}, {address: 198.51.100.12}]
    # Nothing answers at either backend: the first check takes them out,
    # a second after start, long after the services are first programmed.
    health_check: {type: tcp, interval: 2s, timeout: 1s}
`), 0o600); err != nil {
		t.Fatal(err)
	}

	p := startHalbIn(t, ns, "run", "-c", cfg)
	// Health drives the data path: a failed backend leaves the table.
	p.waitForAll(t, "services programmed", "backend health", "maglev table rebuilt")
	// halb status shows the data path's view: both backends drained once
	// each has had its first check (spread over the interval).
	type backend struct {
		Backend string `json:"backend"`
		Weight  uint32 `json:"weight"`
		Live    bool   `json:"live"`
	}
	var backends []backend
	drained := func() bool {
		code, out, _ := run(t, "status", "--json", "-s", sock)
		var st struct {
			Services []struct {
				Backends []backend `json:"backends"`
			} `json:"services"`
		}
		if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || len(st.Services) != 1 {
			return false
		}
		backends = st.Services[0].Backends
		for _, b := range backends {
			if b.Live || b.Weight != 0 {
				return false
			}
		}
		return len(backends) == 2
	}
	for start := time.Now(); !drained(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 15*time.Second {
			t.Fatalf("backends in halb status: %+v, want both drained after failing their checks", backends)
		}
	}
	if code, out, _ := run(t, "status", "-s", sock); code != exitOK || !strings.Contains(out, "(drained)") {
		t.Errorf("the status table does not show the drained backends:\n%s", out)
	} else if !strings.Contains(out, "eth0: xdp generic") {
		// auto on a veth whose peer (eth1) has no XDP program: native
		// XDP would lose what it forwards there, so generic.
		t.Errorf("the status table does not say how the program is attached:\n%s", out)
	}
	body := scrape(t, ns, metrics)
	for _, want := range []string{
		`halb_backend_healthy{backend="198.51.100.11:80",service="web"} 0`,
		`halb_datapath_service_new_flows_total{service="web"} 0`,
		`halb_datapath_packets_total{backend="198.51.100.12:80",service="web"} 0`,
		`halb_datapath_service_bytes_total{service="web"} 0`,
		`halb_datapath_bytes_total{backend="198.51.100.11:80",service="web"} 0`,
		// Every reason has a sample, zero until a drop.
		`halb_datapath_drops_total{reason="no-backend"} `,
		`halb_datapath_drops_total{reason="malformed"} `,
		`halb_health_check_seconds_count{check="tcp",service="web"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, pin := range []string{"halb_xdp_lb", "halb_xdp_lb_eth0", "halb_services", "halb_backends", "halb_ct", "halb_maglev"} {
		if _, err := os.Stat(filepath.Join(pins, pin)); err != nil {
			t.Errorf("pin %s: %v", pin, err)
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	if code := p.exitCode(t); code != exitOK {
		t.Errorf("exit status %d", code)
	}
	if _, err := os.Stat(filepath.Join(pins, "halb_xdp_lb_eth0")); err != nil {
		t.Errorf("the link pin is gone after a clean stop; forwarding would stop with halb: %v", err)
	}

	// Started again it adopts what is pinned; with --cleanup it removes
	// it all on the way out.
	p = startHalbIn(t, ns, "run", "--cleanup", "-c", cfg)
	p.waitFor(t, "services programmed")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "data path removed")
	if code := p.exitCode(t); code != exitOK {
		t.Errorf("exit status %d with --cleanup", code)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("%s still there after --cleanup: %v", pins, err)
	}
	if link, err := h.LinkByName("eth0"); err != nil || link.Attrs().Xdp != nil && link.Attrs().Xdp.Attached {
		t.Errorf("XDP still attached to eth0 after --cleanup")
	}
}

// Under systemd (Type=notify) halb says READY=1 when it runs, RELOADING=1
// and READY=1 around a reload, and STOPPING=1 on the way out.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte("control: {socket: "+filepath.Join(dir, "halb.sock")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalb(t, "run", "-c", cfg)
	read := func() string {
		t.Helper()
		buf := make([]byte, 256)
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	if got := read(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("on SIGHUP %q, want RELOADING=1 with MONOTONIC_USEC", got)
	}
	if got := read(); got != "READY=1" {
		t.Errorf("after the reload %q, want READY=1", got)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if got := read(); got != "STOPPING=1" {
		t.Errorf("on SIGTERM %q, want STOPPING=1", got)
	}
	if code := p.exitCode(t); code != exitOK {
		t.Errorf("exit status %d", code)
	}
}

// make install stages the binary, the unit, the modules-load.d file and
// the example config, and never overwrites a config that is there.
func TestMakeInstall(t *testing.T) {
	dest := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dest, "etc/halb"), 0o755); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dest, "etc/halb/halb.yaml")
	if err := os.WriteFile(mine, []byte("# mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "BINDIR="+t.TempDir()).CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/bin/halb", "etc/systemd/system/halb.service", "etc/modules-load.d/halb.conf"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("%s not installed: %v", f, err)
		}
	}
	if data, _ := os.ReadFile(mine); string(data) != "# mine\n" {
		t.Errorf("make install overwrote the existing config")
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "etc/systemd/system/halb.service"))
	for _, want := range []string{"Type=notify", "After=network-online.target", "Wants=network-online.target", "ExecStartPre=/usr/local/bin/halb check", "ExecReload=", "CapabilityBoundingSet="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}

	// Where there is no config yet, the example goes in, readable by
	// root alone: it may come to hold auth_pass.
	fresh := t.TempDir()
	if out, err := exec.Command("make", "-C", "../..", "install", "DESTDIR="+fresh, "BINDIR="+t.TempDir()).CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	example, err := os.ReadFile("../../configs/halb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	installed := filepath.Join(fresh, "etc/halb/halb.yaml")
	if data, err := os.ReadFile(installed); err != nil || string(data) != string(example) {
		t.Errorf("%s is not configs/halb.yaml: %v", installed, err)
	}
	if info, err := os.Stat(installed); err != nil {
		t.Error(err)
	} else if info.Mode().Perm() != 0o600 {
		t.Errorf("installed config mode %v, want 0600", info.Mode().Perm())
	}
}

// A reload applies VRRP changes in place: an unchanged instance keeps
// running in its state, a new one starts, a changed one restarts, a
// removed one stops.
func TestRunReloadVRRP(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "halb.yaml")
	sock := filepath.Join(dir, "halb.sock")
	write := func(instances string) {
		if err := os.WriteFile(cfg, []byte("control: {socket: "+sock+"}\nvrrp:\n  instances:\n"+instances), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	type instance struct {
		Name     string    `json:"name"`
		State    string    `json:"state"`
		Priority int       `json:"priority"`
		Since    time.Time `json:"since"`
	}
	// status waits until halb status lists n instances and returns them.
	status := func(n int) []instance {
		t.Helper()
		var st struct {
			Instances []instance `json:"instances"`
		}
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
			code, out, _ := run(t, "status", "--json", "-s", sock)
			if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Instances) == n && st.Instances[n-1].State != "INIT" {
				return st.Instances
			}
		}
		t.Fatalf("halb status never listed %d running instances: %+v", n, st.Instances)
		return nil
	}
	const viA = "    - {name: VI_A, interface: lan9, vrid: 1, virtual_ips: [192.0.2.1/24]}\n"
	const viB = "    - {name: VI_B, interface: lan8, vrid: 2, virtual_ips: [192.0.2.2/24]}\n"
	write(viA)
	p := startHalb(t, "run", "-c", cfg)
	first := status(1)[0]

	write(viA + viB)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config reloaded")
	got := status(2)
	if got[0].Name != "VI_A" || !got[0].Since.Equal(first.Since) || got[1].Name != "VI_B" || got[1].State != "FAULT" {
		t.Errorf("after adding VI_B: %+v; VI_A must keep its state since %v", got, first.Since)
	}

	write(strings.Replace(viA, "vrid: 1,", "vrid: 1, priority: 90,", 1))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config reloaded")
	got = status(1)
	if got[0].Name != "VI_A" || got[0].Priority != 90 {
		t.Errorf("after changing VI_A and removing VI_B: %+v, want VI_A alone at priority 90", got)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	p.exitCode(t)
}
