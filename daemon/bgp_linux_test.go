package daemon

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// inNetnsEnv marks the child process of inNetns.
const inNetnsEnv = "HALB_DAEMON_TEST_IN_NETNS"

// inNetns runs the calling test again in a child process that lives in a
// fresh network namespace (its loopback alone), and reports true there:
// the test goes on. In the parent it returns false once the child
// passed. GoBGP opens its sockets on whatever thread its goroutines run,
// so only a whole process keeps them out of the host's namespace.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) != "" {
		return true
	}
	ns := netnstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := ns.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil || !strings.Contains(out.String(), "--- PASS: "+t.Name()) {
		t.Fatalf("in its namespace the test failed (%v):\n%s", err, out.String())
	}
	return false
}

// The BGP speaker is the daemon's to stop: a start with a bgp: section,
// a reload that removes it, one that adds it again, one that changes a
// peer, a status request and a drain through the control socket, then a
// stop, leave nothing running once Run has returned. The peer is one no
// route leads to: the session is a state that retries, never an error.
func TestRunWithBGPLeavesNoGoroutine(t *testing.T) {
	if !inNetns(t) {
		return
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before := halbtest.Running()
	d, path, _ := newTestDaemon(t)
	var logs halbtest.Log
	d.log = NewLogger(&logs, "text", &d.level)
	d.dp = countingDatapath{applied: make(chan struct{}, 1)}
	sock := filepath.Join(filepath.Dir(path), "halb.sock")
	withBGP := func(bgp string) string {
		return goodConfig + "control: {socket: " + sock + "}\ndatapath: {interfaces: [halbnone0]}\n" + `services:
  - name: web
    vip: 192.0.2.80
    port: 80
    backends: [{address: 198.51.100.11}]
    health_check: {type: none}
    announce: ` + map[bool]string{true: "always", false: "never"}[bgp != ""] + "\n" + bgp
	}
	peer := func(hold string) string {
		return "bgp: {asn: 65001, router_id: 192.0.2.1, drain_time: 0s, peers: [{address: 203.0.113.254, asn: 65000, hold_time: " + hold + "}]}\n"
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(withBGP(peer("9s")))
	if err := d.Reload(); err != nil { // as New would have read it
		t.Fatal(err)
	}
	d.boot = d.cfg
	stop, reload := make(chan os.Signal, 1), make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background(), stop, reload) }()
	waitLogged(t, &logs, `msg="bgp speaker started"`)
	waitLogged(t, &logs, `msg="service announced over bgp" service=web prefix=192.0.2.80/32`)

	for _, step := range []struct{ cfg, logged string }{
		{withBGP(""), `msg="bgp speaker removed by a reload`},
		{withBGP(peer("9s")), `msg="bgp speaker added by a reload"`},
		{withBGP(peer("12s")), `msg="bgp peer changed: resetting its session"`},
	} {
		logs.Reset()
		write(step.cfg)
		reload <- syscall.SIGHUP
		waitLogged(t, &logs, step.logged)
	}

	client := controlClient(sock)
	for _, req := range []struct{ method, url string }{
		{http.MethodGet, "http://halb/v1/status"}, {http.MethodPost, "http://halb/v1/bgp/drain"}, {http.MethodPost, "http://halb/v1/bgp/undrain"},
	} {
		r, _ := http.NewRequest(req.method, req.url, nil)
		resp, err := client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %s", req.method, req.url, resp.Status)
		}
	}

	stop <- syscall.SIGTERM
	runReturns(t, done, 20*time.Second, "of SIGTERM", &logs)
	if left := halbtest.Left(before, "github.com/"); len(left) > 0 {
		t.Errorf("%d goroutines the daemon started still run after Run returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
