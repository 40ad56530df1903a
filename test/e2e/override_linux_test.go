package e2e

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestBackendOverride drains be1 of the daemon's web service at run time
// (`halb backend drain`): no new connection goes to it, the connections it
// holds keep exchanging, `halb status` shows the override with who set it;
// a reload that does not touch be1 keeps the override, one that changes
// be1's weight drops it. `halb backend weight` sets a weight; an unknown
// service or backend exits 2; a caller other than root is refused, both by
// the socket's mode and, with the socket opened up, by the daemon itself.
func TestBackendOverride(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	d := n.daemon(t, halb, "lb")
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1})
	d.start(n.lbs["lb"])
	d.waitLive("web", "all three backends live", 3)
	c := &client{ns: n.client, src: clientIP, vip: vip}
	held := c.connectMany(t, 43000, 30)
	var onBe1 []*conn
	for _, cn := range held {
		if cn.backend == "be1" {
			onBe1 = append(onBe1, cn)
		}
	}
	if len(onBe1) == 0 {
		t.Fatalf("none of 30 connections went to be1")
	}

	backend := func(args ...string) (int, string) {
		t.Helper()
		return d.command(append([]string{"backend"}, args...)...)
	}
	if code, out := backend("drain", "web", "192.0.2.11:80"); code != 0 {
		t.Fatalf("halb backend drain: exit %d: %s", code, out)
	}
	d.waitFor("be1 drained", func() bool { return len(d.live("web")) == 2 && d.weight("web", "192.0.2.11:80") == 0 })
	if counts := c.spread(t, 43100, 60); counts["be1"] != 0 || total(counts) != 60 {
		t.Errorf("with be1 drained: %v, want no new connection on be1", counts)
	}
	for _, cn := range onBe1 {
		cn.ping(t, "be1 drained")
	}
	o := d.override("web", "192.0.2.11:80")
	if o == nil || !o.Drained || !strings.Contains(o.By, "uid 0") {
		t.Errorf("halb status --json: be1's override %+v, want drained by uid 0", o)
	}
	if out, err := runOut(halb, "status", "-s", d.sock); err != nil || !regexp.MustCompile(`(?m)^drained +web +192\.0\.2\.11:80 .*uid 0 \(root\)`).MatchString(out) {
		t.Errorf("halb status shows no override: %v\n%s", err, out)
	}
	if !strings.Contains(d.out.String(), `msg="backend override" action=drain service=web backend=192.0.2.11:80`) {
		t.Errorf("the daemon did not log the drain and who asked:\n%s", d.out.String())
	}

	for _, bad := range [][]string{{"drain", "nope", "192.0.2.11:80"}, {"drain", "web", "192.0.2.99:80"}, {"weight", "web", "192.0.2.12:80", "x"}} {
		if code, out := backend(bad...); code != 2 {
			t.Errorf("halb backend %v: exit %d, want 2: %s", bad, code, out)
		}
	}
	nonRoot(t, halb, d.sock)

	// A reload that adds a service leaves be1 of web as it was: drained.
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1, port81: true})
	d.reload()
	d.waitFor("web81 live", func() bool { return len(d.live("web81")) == 3 })
	if w := d.weight("web", "192.0.2.11:80"); w != 0 || d.override("web", "192.0.2.11:80") == nil {
		t.Errorf("after a reload that left be1 alone: weight %d, override %+v; want still drained", w, d.override("web", "192.0.2.11:80"))
	}
	if code, out := backend("weight", "web", "192.0.2.12", "5"); code != 0 {
		t.Fatalf("halb backend weight: exit %d: %s", code, out)
	}
	d.waitFor("be2 at weight 5", func() bool { return d.weight("web", "192.0.2.12:80") == 5 })
	// A reload that changes be1's weight drops its override.
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 3, port81: true})
	d.reload()
	d.waitFor("be1 back at its new weight", func() bool { return d.weight("web", "192.0.2.11:80") == 3 })
	if o := d.override("web", "192.0.2.11:80"); o != nil {
		t.Errorf("after a reload that changed be1: override %+v, want none", o)
	}
	if w := d.weight("web", "192.0.2.12:80"); w != 5 {
		t.Errorf("be2, untouched by the reload: weight %d, want its override's 5", w)
	}
	if counts := c.spread(t, 43200, 60); counts["be1"] == 0 {
		t.Errorf("be1 back: %v, want connections on it", counts)
	}
	d.stop()
}

// command runs halb with args against the daemon's socket and returns
// its exit status and output.
func (d *daemon) command(args ...string) (int, string) {
	d.t.Helper()
	cmd := exec.Command(d.bin, append(args, "-s", d.sock)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		d.t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// statusOverride is a backend's override in `halb status --json`.
type statusOverride struct {
	Drained bool   `json:"drained"`
	Weight  *int   `json:"weight"`
	By      string `json:"by"`
}

// override is the override `halb status --json` shows on backend of
// service svc, nil without one.
func (d *daemon) override(svc, backend string) *statusOverride {
	d.t.Helper()
	out := d.statusJSON()
	var st struct {
		Backends []struct {
			Service  string          `json:"service"`
			Backend  string          `json:"backend"`
			Override *statusOverride `json:"override"`
		} `json:"backends"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		d.t.Fatal(err)
	}
	for _, b := range st.Backends {
		if b.Service == svc && b.Backend == backend {
			return b.Override
		}
	}
	return nil
}

// nonRoot runs `halb backend drain` as nobody: refused by the socket's
// mode, then, with the way to the socket opened to all, by the daemon,
// which names the caller; either way nothing changes.
func nonRoot(t *testing.T, halb, sock string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "halb-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "halb")
	copyFile(t, halb, bin)
	for _, p := range []string{dir, bin} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	asNobody := func() (int, string) {
		cmd := exec.Command(bin, "backend", "drain", "web", "192.0.2.12:80", "-s", sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := asNobody(); code != 1 || !strings.Contains(out, "are you root?") {
		t.Errorf("as nobody, socket mode 0600: exit %d, want 1: %s", code, out)
	}
	// Open the way: the socket's directory (and its parent, the test's)
	// and the socket itself, so that only the daemon's check is left.
	opened := []string{filepath.Dir(filepath.Dir(sock)), filepath.Dir(sock), sock}
	for _, p := range opened {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	code, out := asNobody()
	for _, p := range opened[:2] {
		_ = os.Chmod(p, 0o700)
	}
	_ = os.Chmod(sock, 0o600)
	if code != 1 || !strings.Contains(out, "only root may do this; refused for uid 65534") {
		t.Errorf("as nobody, socket open to all: exit %d, want 1 and the daemon's refusal: %s", code, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
