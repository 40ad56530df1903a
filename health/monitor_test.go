package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

var errRefused = errors.New("connect: connection refused")

// fast is a check on a test's time scale.
func fast(path string) config.HealthCheck {
	return config.HealthCheck{Type: "tcp", Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 2, Fall: 3, Path: path}
}

func webService(hc config.HealthCheck, backends ...string) config.Service {
	s := config.Service{Name: "web", Quorum: 1, HealthCheck: hc}
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		s.Backends = append(s.Backends, config.Backend{Address: ap.Addr(), Port: int(ap.Port()), Weight: 1})
	}
	return s
}

// recorder collects a Monitor's callbacks.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	results map[Key]int
}

func newRecorder() *recorder { return &recorder{results: map[Key]int{}} }

func (r *recorder) options() Options {
	return Options{
		OnChange: func(e Event) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events = append(r.events, e)
		},
		OnResult: func(res Result) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.results[res.Key]++
		},
	}
}

func (r *recorder) snapshot() ([]Event, map[Key]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := make(map[Key]int, len(r.results))
	for k, v := range r.results {
		res[k] = v
	}
	return slices.Clone(r.events), res
}

// waitFor polls cond for up to 10 seconds: long enough for a loaded CI
// machine, and the assertion is about what happens, not when.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// start runs m until the test ends.
func start(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// scripted returns a checker factory whose checks for backend b follow
// scripts[b] (+ success, - failure), repeating the last result when the
// script is done, and the number of checks each has had.
func scripted(scripts map[string]string) (func(config.HealthCheck) (Checker, error), func(string) int) {
	var mu sync.Mutex
	n := map[string]int{}
	check := CheckerFunc(func(_ context.Context, k Key) error {
		mu.Lock()
		defer mu.Unlock()
		s := scripts[k.Backend.String()]
		i := min(n[k.Backend.String()], len(s)-1)
		n[k.Backend.String()]++
		if s[i] == '-' {
			return errRefused
		}
		return nil
	})
	count := func(b string) int {
		mu.Lock()
		defer mu.Unlock()
		return n[b]
	}
	return func(config.HealthCheck) (Checker, error) { return check, nil }, count
}

func TestMonitorRiseFall(t *testing.T) {
	const a, b = "198.51.100.11:80", "198.51.100.12:80"
	scripts := map[string]string{
		a: "++---+-++", // out after the third failure, back after two successes
		b: "+",         // healthy throughout
	}
	rec := newRecorder()
	m := NewMonitor(rec.options())
	var count func(string) int
	m.newChecker, count = scripted(scripts)
	if err := m.Update([]config.Service{webService(fast(""), a, b)}); err != nil {
		t.Fatal(err)
	}
	start(t, m)
	ka := Key{"web", netip.MustParseAddrPort(a)}
	waitFor(t, "a's script to run", func() bool {
		events, results := rec.snapshot()
		return count(a) >= len(scripts[a]) && results[ka] >= len(scripts[a]) && len(events) >= 2
	})

	events, _ := rec.snapshot()
	var got []string
	for _, e := range events {
		if e.Key != ka {
			t.Errorf("event for %s, whose checks all pass: %+v", e.Key, e)
			continue
		}
		if e.Check != "tcp" || e.Time.IsZero() || e.Latency < 0 {
			t.Errorf("event %+v: want check tcp, a time and a latency", e)
		}
		got = append(got, fmt.Sprintf("%s->%s %s", e.From, e.To, e.Reason))
	}
	want := []string{
		"healthy->unhealthy 3 consecutive failures: connect: connection refused",
		"unhealthy->healthy 2 consecutive successes",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !errors.Is(events[0].Err, errRefused) || events[1].Err != nil {
		t.Errorf("event errors %v, %v: want the check's error, then nil", events[0].Err, events[1].Err)
	}
}

func TestMonitorStartup(t *testing.T) {
	const up, dead = "198.51.100.11:80", "198.51.100.12:80"
	rec := newRecorder()
	m := NewMonitor(rec.options())
	var count func(string) int
	m.newChecker, count = scripted(map[string]string{up: "+", dead: "-"})
	svc := webService(fast(""), up, dead)
	if err := m.Update([]config.Service{svc}); err != nil {
		t.Fatal(err)
	}
	// Before any check, every backend is presumed healthy: traffic flows.
	for k, s := range m.States() {
		if s != Healthy {
			t.Errorf("%s is %s before its first check, want healthy", k, s)
		}
	}
	if got := render(Backends(svc, m.States())); !slices.Equal(got, []string{up + "=1", dead + "=1"}) {
		t.Errorf("weights before the first checks: %q", got)
	}
	for _, st := range m.Snapshot() {
		if st.Confirmed || !st.Last.Time.IsZero() {
			t.Errorf("%s: confirmed or checked before Run: %+v", st.Key, st)
		}
	}

	start(t, m)
	// The dead backend goes out on its first failure, not after fall (3).
	waitFor(t, "the dead backend's first check", func() bool { return count(dead) >= 1 && count(up) >= 1 })
	waitFor(t, "the state to be recorded", func() bool {
		events, _ := rec.snapshot()
		return len(events) >= 1
	})
	events, _ := rec.snapshot()
	if len(events) != 1 || events[0].Backend.String() != dead || events[0].To != Unhealthy || !strings.HasPrefix(events[0].Reason, "first check failed: ") {
		t.Fatalf("events %+v, want one: %s unhealthy, first check failed", events, dead)
	}
	if got := render(Backends(svc, m.States())); !slices.Equal(got, []string{up + "=1", dead + "=0"}) {
		t.Errorf("weights after the first checks: %q", got)
	}
	waitFor(t, "more checks", func() bool { return count(dead) >= 4 })
	if events, _ := rec.snapshot(); len(events) != 1 {
		t.Errorf("%d events, want 1: further failures change nothing", len(events))
	}
	for _, st := range m.Snapshot() {
		if !st.Confirmed || st.Last.Time.IsZero() {
			t.Errorf("%s: not confirmed after checks: %+v", st.Key, st)
		}
		if st.Backend.String() == dead && (st.Failures < 1 || st.Successes != 0 || st.Last.Err == nil) {
			t.Errorf("%s: %+v, want failures counted and the last error", st.Key, st)
		}
	}
}

// TestMonitorUpdate: a reload keeps what did not change, carries the state
// of a backend whose check changed, and forgets a removed backend.
func TestMonitorUpdate(t *testing.T) {
	const a, b, c = "198.51.100.11:80", "198.51.100.12:80", "198.51.100.13:80"
	rec := newRecorder()
	m := NewMonitor(rec.options())
	// The fake reads the check's path as the list of backends that fail.
	var mu sync.Mutex
	checks := map[Key]int{}
	m.newChecker = func(hc config.HealthCheck) (Checker, error) {
		failing := strings.Fields(hc.Path)
		return CheckerFunc(func(_ context.Context, k Key) error {
			mu.Lock()
			checks[k]++
			mu.Unlock()
			if slices.Contains(failing, k.Backend.String()) {
				return errRefused
			}
			return nil
		}), nil
	}
	count := func(b string) int {
		mu.Lock()
		defer mu.Unlock()
		return checks[Key{"web", netip.MustParseAddrPort(b)}]
	}
	key := func(b string) Key { return Key{"web", netip.MustParseAddrPort(b)} }
	eventsFor := func(b string) []Event {
		events, _ := rec.snapshot()
		var out []Event
		for _, e := range events {
			if e.Key == key(b) {
				out = append(out, e)
			}
		}
		return out
	}

	if err := m.Update([]config.Service{webService(fast(a), a, b)}); err != nil {
		t.Fatal(err)
	}
	start(t, m)
	waitFor(t, "a to go down", func() bool { return len(eventsFor(a)) == 1 })

	// Same check, b removed, c added: a keeps its state and its prober.
	if err := m.Update([]config.Service{webService(fast(a), a, c)}); err != nil {
		t.Fatal(err)
	}
	st := m.States()
	if _, ok := st[key(b)]; ok || st[key(a)] != Unhealthy || st[key(c)] != Healthy || len(st) != 2 {
		t.Errorf("states after removing b and adding c: %v", st)
	}
	before := count(b)
	waitFor(t, "c's checks", func() bool { return count(c) >= 3 && count(a) >= 3 })
	if after := count(b); after > before+1 { // one check may have been under way
		t.Errorf("b checked %d times after its removal", after-before)
	}
	for _, s := range m.Snapshot() {
		if s.Key == key(a) && !s.Confirmed {
			t.Errorf("a lost its confirmation though its check did not change: %+v", s)
		}
	}

	// A changed check (a now passes it): a's state carries over, and the
	// new check's first result decides at once, without waiting for rise.
	hc := fast("")
	hc.Rise = 1000
	if err := m.Update([]config.Service{webService(hc, a, c)}); err != nil {
		t.Fatal(err)
	}
	if s := m.States()[key(a)]; s != Unhealthy {
		t.Errorf("a is %s right after its check changed, want the carried unhealthy", s)
	}
	waitFor(t, "a to come back", func() bool { return len(eventsFor(a)) == 2 })
	if e := eventsFor(a)[1]; e.From != Unhealthy || e.To != Healthy || e.Reason != "first check succeeded" {
		t.Errorf("a's second event %+v, want unhealthy->healthy, first check succeeded", e)
	}
	for _, b := range []string{b, c} {
		if len(eventsFor(b)) != 0 {
			t.Errorf("events for %s, whose checks all passed: %+v", b, eventsFor(b))
		}
	}

	// health_check none: nothing is monitored.
	none := webService(config.HealthCheck{Type: "none"}, a, c)
	if err := m.Update([]config.Service{none}); err != nil {
		t.Fatal(err)
	}
	if st := m.States(); len(st) != 0 {
		t.Errorf("states with health_check none: %v", st)
	}
}

func TestMonitorErrors(t *testing.T) {
	m := NewMonitor(Options{})
	bad := []config.Service{
		webService(config.HealthCheck{Type: "icmp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}, "198.51.100.11:80"),
		webService(config.HealthCheck{Type: "tcp", Timeout: time.Second, Rise: 1, Fall: 1}, "198.51.100.12:80"),
		webService(config.HealthCheck{Type: "tcp", Interval: time.Second, Timeout: time.Second}, "198.51.100.13:80"),
	}
	err := m.Update(bad)
	if err == nil {
		t.Fatal("Update with bad checks succeeded")
	}
	for _, want := range []string{`"icmp" is not a health check type`, "interval 0s must be positive", "rise 0 and fall 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if st := m.States(); len(st) != 0 {
		t.Errorf("backends with bad checks are monitored: %v", st)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := m.Run(ctx); err == nil {
		t.Error("second Run succeeded")
	}
}

// TestMonitorRealTCP runs the whole path once with the real tcp checker: a
// port nobody listens on is out after the first check.
func TestMonitorRealTCP(t *testing.T) {
	ap := closedPort(t, "tcp")
	rec := newRecorder()
	m := NewMonitor(rec.options())
	hc := fast("")
	hc.Fall = 2
	if err := m.Update([]config.Service{webService(hc, ap.String())}); err != nil {
		t.Fatal(err)
	}
	start(t, m)
	waitFor(t, "the event", func() bool { events, _ := rec.snapshot(); return len(events) == 1 })
	events, _ := rec.snapshot()
	e := events[0]
	if e.To != Unhealthy || !errors.Is(e.Err, syscall.ECONNREFUSED) || e.Reason != "first check failed: connect: connection refused" {
		t.Errorf("event %+v", e)
	}
	attrs := fmt.Sprint(e.Attrs()...)
	if !strings.Contains(attrs, ap.String()) || !strings.Contains(attrs, "unhealthy") {
		t.Errorf("Attrs() = %s", attrs)
	}
}

// TestFirstDelaySpread: a hundred backends configured together have their
// first checks spread over the interval, not in one burst.
func TestFirstDelaySpread(t *testing.T) {
	const interval = 2 * time.Second
	var buckets [10]int
	for i := range 100 {
		k := Key{"web", netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), 80)}
		d := firstDelay(k, interval)
		if d < 0 || d >= interval {
			t.Fatalf("first delay of %s is %s, outside [0, %s)", k, d, interval)
		}
		if d != firstDelay(k, interval) {
			t.Fatalf("first delay of %s is not deterministic", k)
		}
		buckets[d*10/interval]++
	}
	// Uniform would put 10 in each tenth: allow a lot of chance, forbid
	// bursts and holes.
	for i, n := range buckets {
		if n == 0 || n > 30 {
			t.Errorf("tenth %d of the interval holds %d of 100 first checks: %v", i, n, buckets)
		}
	}
	// The same backend in two services is checked at different phases.
	k1 := Key{"web", netip.MustParseAddrPort("198.51.100.1:80")}
	k2 := Key{"web2", k1.Backend}
	if firstDelay(k1, interval) == firstDelay(k2, interval) {
		t.Error("two services' checks of one backend are in phase")
	}
}

func TestNextDelay(t *testing.T) {
	const interval = time.Second
	var sum time.Duration
	const n = 1000
	for range n {
		d := nextDelay(interval)
		if d < interval || d > interval+interval/10 {
			t.Fatalf("next delay %s outside [%s, %s]", d, interval, interval+interval/10)
		}
		sum += d
	}
	if mean := sum / n; mean < interval {
		t.Errorf("mean delay %s is below the interval", mean)
	}
}
