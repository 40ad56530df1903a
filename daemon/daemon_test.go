package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/loader"
)

const goodConfig = `
log: {level: info}
vrrp:
  instances:
    # An interface that does not exist: the instance waits in FAULT and
    # sends nothing, so this in-process test never touches a real link.
    - {name: VI_1, interface: halbnone0, vrid: 7, virtual_ips: [192.0.2.7/24]}
`

func newTestDaemon(t *testing.T) (*Daemon, string, *bytes.Buffer) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(path, []byte(goodConfig+"control: {socket: "+filepath.Join(dir, "halb.sock")+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d, err := New(path, &logs, loader.Host{Root: t.TempDir(), Kernel: halbtest.NoKernel{}})
	if err != nil {
		t.Fatal(err)
	}
	return d, path, &logs
}

func TestReloadKeepsRunningConfigOnBadFile(t *testing.T) {
	d, path, logs := newTestDaemon(t)
	before := d.Config()
	if err := os.WriteFile(path, []byte(strings.Replace(goodConfig, "vrid: 7", "vrid: 0", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err == nil {
		t.Fatal("a bad file was accepted")
	}
	if d.Config() != before {
		t.Error("the running config changed after a rejected reload")
	}
	if !strings.Contains(logs.String(), "vrrp.instances[0].vrid") {
		t.Errorf("the rejection log does not name the field:\n%s", logs)
	}
}

func TestReloadAppliesLevel(t *testing.T) {
	d, path, _ := newTestDaemon(t)
	if err := os.WriteFile(path, []byte(strings.Replace(goodConfig, "level: info", "level: debug", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if d.level.Level() != slog.LevelDebug || d.Config().Log.Level != "debug" {
		t.Errorf("level after reload = %v", d.level.Level())
	}
}

func TestRunStopsOnSIGTERM(t *testing.T) {
	d, _, logs := newTestDaemon(t)
	stop := make(chan os.Signal, 1)
	stop <- syscall.SIGTERM
	if err := d.Run(context.Background(), stop, nil); err != nil {
		t.Fatal(err)
	}
	// With no BTF in the probed tree the decision is IPVS, and it is logged.
	if !strings.Contains(logs.String(), "datapath=ipvs") || !strings.Contains(logs.String(), "halb stopping") {
		t.Errorf("logs:\n%s", logs)
	}
}

// A service's quorum is logged when it is lost and when it is regained,
// one line each time, and not at every apply in between.
func TestLogQuorum(t *testing.T) {
	var logs bytes.Buffer
	var level slog.LevelVar
	svc := config.Service{Name: "web", Quorum: 2, SorryBackend: netip.MustParseAddrPort("198.51.100.99:80"),
		HealthCheck: config.HealthCheck{Type: "tcp"}}
	var keys []health.Key
	for _, a := range []string{"198.51.100.11", "198.51.100.12", "198.51.100.13"} {
		svc.Backends = append(svc.Backends, config.Backend{Address: netip.MustParseAddr(a), Port: 80, Weight: 1})
		keys = append(keys, health.Key{Service: "web", Backend: netip.AddrPortFrom(netip.MustParseAddr(a), 80)})
	}
	d := &Daemon{cfg: &config.Config{Services: []config.Service{svc}}, log: NewLogger(&logs, "text", &level)}
	down := func(n int) map[health.Key]health.State {
		m := map[health.Key]health.State{}
		for i, k := range keys {
			m[k] = health.Healthy
			if i < n {
				m[k] = health.Unhealthy
			}
		}
		return m
	}
	for _, step := range []struct {
		down int
		want string // the line logged; "" for none
	}{
		{0, ""},
		{1, ""},
		{2, `level=WARN msg="service quorum lost" service=web healthy=1 quorum=2 sorry_backend=198.51.100.99:80`},
		{3, ""},
		{2, ""},
		{1, `level=INFO msg="service quorum regained" service=web healthy=2 quorum=2 sorry_backend=198.51.100.99:80`},
		{0, ""},
	} {
		logs.Reset()
		d.logQuorum(d.cfg.Services, down(step.down))
		got := strings.TrimSpace(logs.String())
		if _, line, _ := strings.Cut(got, " "); line != step.want { // past the time
			t.Errorf("%d backends down: logged %q, want %q", step.down, got, step.want)
		}
	}
}

// TestMain keeps the in-process daemons' locks out of the host's
// /run/halb: their instances would otherwise lock halbnone0's virtual
// router host-wide, against any halb a test elsewhere runs.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "halb-locks-")
	if err != nil {
		panic(err)
	}
	LockDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
