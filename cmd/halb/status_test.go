package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// halb status asks the running daemon: a table by default, JSON with
// --json; with no daemon it exits 1 and says so.
func TestStatus(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "halb.sock")
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+sock+`}
vrrp:
  instances:
    - {name: VI_S, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalb(t, "run", "-c", cfg)

	// The instance reaches FAULT on its own goroutine: ask until it has.
	var st struct {
		Instances []struct {
			Name   string   `json:"name"`
			State  string   `json:"state"`
			Faults []string `json:"faults"`
		} `json:"instances"`
	}
	var code int
	var out, errs string
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		code, out, errs = run(t, "status", "--json", "-s", sock)
		if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Instances) == 1 && st.Instances[0].State != "INIT" {
			break
		}
	}
	if code != exitOK {
		t.Fatalf("halb status --json: exit %d: %s", code, errs)
	}
	if len(st.Instances) != 1 || st.Instances[0].State != "FAULT" || strings.Join(st.Instances[0].Faults, ",") != "interface lan9 missing" {
		t.Errorf("status = %+v, want VI_S in FAULT for want of lan9\n%s", st, out)
	}

	// The table, reading the socket path from the config.
	code, out, errs = run(t, "status", "-c", cfg)
	if code != exitOK || !strings.Contains(out, "VI_S") || !strings.Contains(out, "FAULT") || !strings.Contains(out, "interface lan9 missing") {
		t.Errorf("halb status: exit %d\n%s%s", code, out, errs)
	}
	if info, err := os.Stat(sock); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode: %v %v, want 0600", info.Mode(), err)
	}

	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	p.exitCode(t)
	code, _, errs = run(t, "status", "-s", sock)
	if code != exitFailure || !strings.Contains(errs, "no halb daemon answers") {
		t.Errorf("with no daemon: exit %d, %q", code, errs)
	}
}

// control.metrics serves Prometheus metrics: VRRP state, adverts, backend
// health, data-path counters.
func TestMetrics(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+filepath.Join(dir, "halb.sock")+`, metrics: "`+addr+`"}
vrrp:
  instances:
    - {name: VI_M, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// halb runs in a namespace of its own, with its own loopback: scrape
	// from inside it.
	ns := netnstest.New(t)
	p := startHalbIn(t, ns, "run", "-c", cfg)
	p.waitFor(t, "to=FAULT")
	// The transition is logged just before it is recorded: scrape until
	// it shows.
	var body string
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(20 * time.Millisecond) {
		if body = scrape(t, ns, addr); strings.Contains(body, `halb_vrrp_state{instance="VI_M",state="FAULT"} 1`) {
			break
		}
	}
	for _, want := range []string{
		`halb_vrrp_state{instance="VI_M",state="FAULT"} 1`,
		`halb_vrrp_state{instance="VI_M",state="MASTER"} 0`,
		`halb_vrrp_transitions_total{instance="VI_M"} 1`,
		`halb_vrrp_priority{instance="VI_M"} 100`,
		`halb_vrrp_adverts_sent_total{instance="VI_M"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// scrape reads /metrics from addr inside ns. The socket must be made on
// the namespace's thread, so the request is written by hand rather than
// through http.Client, whose dials run on other goroutines.
func scrape(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	var body string
	err := ns.Do(func() error {
		var last error
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				last = err
				continue
			}
			fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: halb\r\n\r\n")
			b, err := io.ReadAll(c)
			c.Close()
			body = string(b)
			return err
		}
		return last
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
