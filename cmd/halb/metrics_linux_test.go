package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// documentedMetrics reads the README's metrics table: each metric's name
// and the condition under which it is present.
func documentedMetrics(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(halb_[a-z_]+)` \\|[^|]*\\|[^|]*\\| ([^|]+) \\|$")
	metrics := map[string]string{}
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			metrics[m[1]] = strings.TrimSpace(m[2])
		}
	}
	if len(metrics) < 20 {
		t.Fatalf("README's metrics table: %d rows read, want them all", len(metrics))
	}
	return metrics
}

// metricsBody is a scrape's body, less the HTTP response's head.
func metricsBody(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	resp := scrape(t, ns, addr)
	_, body, ok := strings.Cut(resp, "\r\n\r\n")
	if !ok || !strings.HasPrefix(resp, "HTTP/1.0 200") && !strings.HasPrefix(resp, "HTTP/1.1 200") {
		t.Fatalf("scrape:\n%s", resp)
	}
	return body
}

// promtool runs `promtool check metrics` on a scrape; it prints nothing
// and exits 0 when the exposition has no problem.
func promtool(t *testing.T, body string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		netnstest.SkipOrFail(t, "promtool is not installed (Debian: apt-get install prometheus)")
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// A running daemon, with a VRRP instance and a service on the eBPF data
// path, serves from its first scrape every metric the README documents
// for that setup, and promtool finds no problem in the scrape. A reload
// of a bad file says so in halb_config_last_reload_successful and keeps
// the time of the last good one; a good one sets both.
func TestMetricsDocumented(t *testing.T) {
	documented := documentedMetrics(t)
	ns, _, fs := lbNS(t)
	cfg := filepath.Join(t.TempDir(), "halb.yaml")
	addr := halbtest.FreeAddr(t)
	good := []byte(`control: {socket: ` + filepath.Join(t.TempDir(), "halb.sock") + `, metrics: "` + addr + `"}
datapath: {mode: xdp, interfaces: [eth0], bpffs: ` + filepath.Join(fs, "halb") + `}
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, virtual_ips: [192.0.2.100/24]}
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}, {address: 198.51.100.12}]
    health_check: {type: tcp, interval: 2s, timeout: 1s}
`)
	if err := os.WriteFile(cfg, good, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalbIn(t, ns, "run", "-c", cfg)
	p.waitForAll(t, "services programmed", "metrics", "to=BACKUP")
	body := metricsBody(t, ns, addr)
	promtool(t, body)
	for name, when := range documented {
		switch when {
		case "always", "with vrrp instances", "with services", "with services, eBPF data path":
		default:
			continue // IPVS, BGP, accept: false, NAT: not this setup
		}
		if !regexp.MustCompile(`(?m)^` + name + `(_bucket)?[{ ]`).MatchString(body) {
			t.Errorf("%s (documented %q) is not in the first scrape", name, when)
		}
	}
	if !strings.Contains(body, "halb_config_last_reload_successful 1\n") {
		t.Errorf("halb_config_last_reload_successful is not 1 after a good start")
	}
	started := reloadTime(t, body)

	if err := os.WriteFile(cfg, bytes.Replace(good, []byte("vrid: 51"), []byte("vrid: 0"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config rejected")
	body = scrapeUntil(t, ns, addr, "halb_config_last_reload_successful 0\n")
	if !strings.Contains(body, "halb_config_last_reload_successful 0\n") || reloadTime(t, body) != started {
		t.Errorf("after a refused reload: want successful 0 and the start's time %s:\n%s", started, grepLines(body, "halb_config_"))
	}
	if err := os.WriteFile(cfg, good, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitFor(t, "config reloaded")
	body = scrapeUntil(t, ns, addr, "halb_config_last_reload_successful 1\n")
	if !strings.Contains(body, "halb_config_last_reload_successful 1\n") || reloadTime(t, body) == started {
		t.Errorf("after a good reload: want successful 1 and a later time than %s:\n%s", started, grepLines(body, "halb_config_"))
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	if code := p.exitCode(t); code != exitOK {
		t.Errorf("exit status %d", code)
	}
}

// scrapeUntil scrapes until the body has want: the reload's outcome is
// recorded just after its log line.
func scrapeUntil(t *testing.T, ns *netnstest.NS, addr, want string) string {
	t.Helper()
	body := metricsBody(t, ns, addr)
	for start := time.Now(); !strings.Contains(body, want) && time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		body = metricsBody(t, ns, addr)
	}
	return body
}

func reloadTime(t *testing.T, body string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^halb_config_last_reload_success_timestamp_seconds (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no halb_config_last_reload_success_timestamp_seconds:\n%s", body)
	}
	return m[1]
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
