package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/service"
	"github.com/halb-lb/halb/vrrp"
)

// A reload that changes a key the running daemon does not apply again
// says so, one warning per key with both values; keys it applies draw no
// such warning.
func TestReloadWarnsRestartKeys(t *testing.T) {
	d, path, logs := newTestDaemon(t)
	dir := filepath.Dir(path)
	changed := goodConfig + `control: {socket: ` + filepath.Join(dir, "other.sock") + `, metrics: "127.0.0.1:9555"}
datapath:
  mode: xdp
  interfaces: [eth9, eth8]
  xdp_mode: generic
  bpffs: /sys/fs/bpf/other
  conntrack_entries: 1024
  maglev_table_size: 251
  max_backends: 128
`
	changed = strings.Replace(changed, "log: {level: info}", "log: {level: debug, format: json}", 1)
	if err := os.WriteFile(path, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"log.format":                 {"text", "json"},
		"control.socket":             {filepath.Join(dir, "halb.sock"), filepath.Join(dir, "other.sock")},
		"control.metrics":            {"", "127.0.0.1:9555"},
		"datapath.mode":              {"auto", "xdp"},
		"datapath.interfaces":        {"[]", "[eth9, eth8]"},
		"datapath.xdp_mode":          {"auto", "generic"},
		"datapath.bpffs":             {"/sys/fs/bpf/halb", "/sys/fs/bpf/other"},
		"datapath.conntrack_entries": {"65536", "1024"},
		"datapath.maglev_table_size": {"65537", "251"},
		"datapath.max_backends":      {"4096", "128"},
	}
	got := map[string]int{}
	line := regexp.MustCompile(`level=WARN msg="changes at the next restart" key=(\S+) running=("[^"]*"|\S*) configured=("[^"]*"|\S*)`)
	for _, m := range line.FindAllStringSubmatch(logs.String(), -1) {
		key := m[1]
		got[key]++
		w, ok := want[key]
		if !ok {
			t.Errorf("warning for %s, which a reload applies", key)
			continue
		}
		if unquote(m[2]) != w[0] || unquote(m[3]) != w[1] {
			t.Errorf("%s: running %s configured %s, want %q and %q", key, m[2], m[3], w[0], w[1])
		}
	}
	for key := range want {
		if got[key] != 1 {
			t.Errorf("%s: %d warnings, want 1\n%s", key, got[key], logs)
		}
	}
	if !strings.Contains(logs.String(), `msg="config reloaded"`) {
		t.Errorf("no config reloaded line:\n%s", logs)
	}

	// The same file again: the keys still differ from what runs, so the
	// warnings come again; the level, which a reload applies, does not
	// warn.
	logs.Reset()
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := len(line.FindAllString(logs.String(), -1)); n != len(want) {
		t.Errorf("second reload: %d warnings, want %d", n, len(want))
	}
}

func unquote(s string) string { return strings.Trim(s, `"`) }

// Every key of the sections the daemon reads once at start is in
// restartKeys, but log.level, which a reload applies: a key added to one
// of them later must be sorted into one kind or the other.
func TestRestartKeysCoverStartOnlySections(t *testing.T) {
	listed := map[string]bool{}
	for _, k := range restartKeys {
		listed[k.key] = true
	}
	applied := map[string]bool{"log.level": true}
	for section, v := range map[string]any{"log": config.Log{}, "control": config.Control{}, "datapath": config.Datapath{}} {
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			key := section + "." + typ.Field(i).Tag.Get("mapstructure")
			if !listed[key] && !applied[key] {
				t.Errorf("%s is neither applied by a reload nor in restartKeys", key)
			}
			delete(listed, key)
		}
	}
	for key := range listed {
		t.Errorf("restartKeys lists %s, which is no key", key)
	}
}

// countingDatapath counts applies, so that a test sees the loop at work.
type countingDatapath struct {
	nopDatapath
	applied chan struct{}
}

func (c countingDatapath) Name() string { return "counting" }
func (c countingDatapath) Apply(context.Context, []service.Service) error {
	select {
	case c.applied <- struct{}{}:
	default:
	}
	return nil
}

// A config read that blocks (a file on a hung mount) stalls neither the
// health-driven re-apply nor SIGTERM; many SIGHUPs meanwhile make one
// read more, not one each.
func TestRunLoopDuringBlockedRead(t *testing.T) {
	d, _, _ := newTestDaemon(t)
	var logs halbtest.Log
	d.log = NewLogger(&logs, "text", &d.level)
	dp := countingDatapath{applied: make(chan struct{}, 1)}
	d.dp = dp
	reading := make(chan struct{}, 10)
	release := make(chan struct{})
	defer close(release)
	var reads sync.WaitGroup
	d.load = func(path string) (*config.Config, []config.Problem, error) {
		reads.Add(1)
		defer reads.Done()
		reading <- struct{}{}
		<-release
		return config.LoadWithWarnings(path)
	}
	stop, reload := make(chan os.Signal, 1), make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background(), stop, reload) }()
	within := func(what string, c <-chan struct{}) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: nothing within 10s\n%s", what, logs.String())
		}
	}
	within("the start's apply", dp.applied)

	reload <- syscall.SIGHUP
	within("the read", reading)
	for range 20 {
		reload <- syscall.SIGHUP // each one waits for the loop to take the last
	}
	d.healthChanged <- struct{}{}
	within("the apply a health change asks for, with the read blocked", dp.applied)

	stop <- syscall.SIGTERM
	runReturns(t, done, 10*time.Second, "of SIGTERM while a config read blocked", &logs)
	select {
	case <-reading:
		t.Error("a second read started while the first was still blocked")
	default:
	}
	if !strings.Contains(logs.String(), `msg="halb stopping" signal=terminated`) {
		t.Errorf("logs:\n%s", logs.String())
	}
}

// A reload that restarts an instance returns at once, however long the old
// one takes to stop; the new one starts only once the old one has stopped
// (given its VIPs up); and at shutdown an instance that never stops is
// given up on at the deadline, by name.
func TestVRRPSetNeverWaitsOnTheLoop(t *testing.T) {
	var logs halbtest.Log
	var level slog.LevelVar
	s := newVRRPSet(NewLogger(&logs, "text", &level), t.TempDir())
	events := make(chan string, 10)
	release := make(chan struct{}) // lets stopping instances finish
	s.run = func(ctx context.Context, in *vrrp.Instance) error {
		st := in.Status()
		events <- fmt.Sprintf("start %s %d", st.Name, st.Priority)
		<-ctx.Done()
		<-release // as a slow notify script would hold it
		events <- "stop " + st.Name
		return nil
	}
	next := func() string {
		t.Helper()
		select {
		case e := <-events:
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no instance started or stopped within 10s")
			return ""
		}
	}
	ic := config.Instance{Name: "VI_1", Interface: "halbnone0", VRID: 7, Version: 2, Priority: 100}
	s.apply(config.VRRP{Instances: []config.Instance{ic}})
	if e := next(); e != "start VI_1 100" {
		t.Fatal(e)
	}

	ic.Priority = 90
	applied := make(chan struct{})
	go func() {
		s.apply(config.VRRP{Instances: []config.Instance{ic}})
		close(applied)
	}()
	select {
	case <-applied:
	case <-time.After(10 * time.Second):
		t.Fatal("apply waited for the changed instance to stop")
	}
	close(release)
	if e1, e2 := next(), next(); e1 != "stop VI_1" || e2 != "start VI_1 90" {
		t.Errorf("after the change: %q then %q, want the old one stopped before the new one starts", e1, e2)
	}

	// One that never stops is left behind at the deadline.
	s.run = func(ctx context.Context, in *vrrp.Instance) error {
		<-ctx.Done()
		select {} // blocks for ever
	}
	s.apply(config.VRRP{Instances: []config.Instance{ic, {Name: "VI_STUCK", Interface: "halbnone0", VRID: 8, Version: 2, Priority: 100}}})
	begin := time.Now()
	s.stopAll(time.Now().Add(200 * time.Millisecond))
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("stopAll took %s with a 200ms deadline", took)
	}
	if !strings.Contains(logs.String(), `msg="vrrp instances did not stop in time; exiting without them" instances=VI_STUCK`) {
		t.Errorf("the stuck instance is not named:\n%s", logs.String())
	}
	if e := next(); e != "stop VI_1" {
		t.Errorf("VI_1 at shutdown: %q", e)
	}
}

// Every goroutine the daemon starts is its own to stop: a start, a
// reload that restarts an instance and replaces a health check, a status
// request and a scrape, then a stop, leave none running once Run has
// returned.
func TestRunLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before := halbtest.Running()
	d, path, _ := newTestDaemon(t)
	var logs halbtest.Log
	d.log = NewLogger(&logs, "text", &d.level)
	d.dp = countingDatapath{applied: make(chan struct{}, 1)}
	dir := filepath.Dir(path)
	sock := filepath.Join(dir, "halb.sock")
	metrics := halbtest.FreeAddr(t)
	// Backends no check reaches during the test: the first check of each
	// comes at an offset within the interval, of an hour and more.
	withChecks := func(priority int) string {
		return strings.Replace(goodConfig, "vrid: 7,", fmt.Sprintf("vrid: 7, priority: %d,", priority), 1) +
			"control: {socket: " + sock + ", metrics: \"" + metrics + "\"}\n" +
			"datapath: {interfaces: [halbnone0]}\n" + `services:
  - name: web
    vip: 192.0.2.80
    port: 80
    backends: [{address: 198.51.100.11}, {address: 198.51.100.12}]
    health_check: {type: tcp, interval: ` + fmt.Sprint(priority) + `m, timeout: 1s}
`
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(withChecks(100))
	if err := d.Reload(); err != nil { // as New would have read it
		t.Fatal(err)
	}
	d.boot = d.cfg
	stop, reload := make(chan os.Signal, 1), make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- d.Run(context.Background(), stop, reload) }()
	waitLogged(t, &logs, `msg="services programmed"`)

	logs.Reset()
	write(withChecks(90)) // a new priority restarts VI_1; a new interval, both checks
	reload <- syscall.SIGHUP
	waitLogged(t, &logs, `msg="config reloaded"`)

	client := controlClient(sock)
	for _, url := range []string{"http://halb/v1/status", "http://" + metrics + "/metrics"} {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", url, resp.Status)
		}
	}

	stop <- syscall.SIGTERM
	runReturns(t, done, 20*time.Second, "of SIGTERM", &logs)
	if left := halbtest.Left(before, "github.com/halb-lb/halb/"); len(left) > 0 {
		t.Errorf("%d goroutines the daemon started still run after Run returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
