package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
