package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
)

// Event is one change of a backend's state.
type Event struct {
	Key
	Check    string // the health_check type
	From, To State
	// Reason says why, in words fit for a log line: "3 consecutive
	// failures: connect: connection refused", "2 consecutive successes",
	// "first check failed: ...".
	Reason string
	// Err is the last check's error; nil when the backend came back.
	Err error
	// Latency is how long the last check took.
	Latency time.Duration
	Time    time.Time // when the last check ended
}

// Attrs are the event's structured log keys, for
// log.Info("backend health changed", ev.Attrs()...).
func (e Event) Attrs() []any {
	return []any{
		"service", e.Service,
		"backend", e.Backend.String(),
		"check", e.Check,
		"from", e.From.String(),
		"to", e.To.String(),
		"reason", e.Reason,
		"latency", e.Latency,
	}
}

// Result is one finished check, for a latency histogram.
type Result struct {
	Key
	Check   string // the health_check type
	Err     error  // nil: healthy
	Latency time.Duration
	Time    time.Time // when the check started
}

// Status is what a Monitor knows about one backend.
type Status struct {
	Key
	Check string
	State State
	// Confirmed is false until a check result has decided State (see
	// the package comment: the state at startup is presumed).
	Confirmed bool
	Successes int // consecutive
	Failures  int // consecutive
	// Last is the latest result; its Time is zero before the first.
	Last Result
}

// Options are a Monitor's callbacks. Both are called from the goroutine
// that checks the backend concerned: calls for one backend come in order,
// calls for different backends concurrently. They must not block for long:
// a blocked callback delays that backend's next check.
type Options struct {
	// OnChange receives every change of state, once.
	OnChange func(Event)
	// OnResult receives every finished check.
	OnResult func(Result)
}

// Monitor checks the backends of every service whose health_check is not
// none, each on its own schedule.
type Monitor struct {
	opts       Options
	newChecker func(config.HealthCheck) (Checker, error)

	mu      sync.Mutex
	ctx     context.Context // Run's; nil before Run
	stopped bool            // Run is returning: start nothing more
	wg      sync.WaitGroup
	probers map[Key]*prober
}

// prober checks one backend. Its status is guarded by Monitor.mu.
type prober struct {
	key    Key
	hc     config.HealthCheck
	check  Checker
	prev   *prober // the prober it replaced: it must end before this starts
	cancel context.CancelFunc
	done   chan struct{}
	status Status
	track  tracker
}

// NewMonitor makes a Monitor with nothing to check; Update gives it the
// services and Run starts it.
func NewMonitor(opts Options) *Monitor {
	return &Monitor{opts: opts, newChecker: NewChecker, probers: map[Key]*prober{}}
}

// Update makes the monitored backends those of services, changing only
// what differs, so that a reload keeps the state and the rhythm of every
// backend whose check did not change. A backend whose check changed keeps
// its state, unconfirmed until the new check's first result; a new
// backend starts presumed healthy; a removed one is forgotten. It may be
// called before Run and while Run runs.
//
// A check that cannot be built (which a validated configuration rules out)
// is reported, and its backends are not monitored: they stay healthy.
func (m *Monitor) Update(services []config.Service) error {
	type want struct {
		hc    config.HealthCheck
		check Checker
	}
	wanted := map[Key]want{}
	var errs []error
	for _, s := range services {
		if s.HealthCheck.Type == TypeNone {
			continue
		}
		check, err := m.newChecker(s.HealthCheck)
		if err == nil {
			err = checkTiming(s.HealthCheck)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s: health_check: %w", s.Name, err))
			continue
		}
		for _, b := range s.Backends {
			k := Key{Service: s.Name, Backend: netip.AddrPortFrom(b.Address, uint16(b.Port))}
			wanted[k] = want{hc: s.HealthCheck, check: check}
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	replaced := map[Key]*prober{}
	for k, p := range m.probers {
		if w, ok := wanted[k]; ok && sameCheck(w.hc, p.hc) {
			delete(wanted, k) // unchanged: keeps running
			continue
		}
		p.stop()
		delete(m.probers, k)
		replaced[k] = p
	}
	for k, w := range wanted {
		np := newProber(k, w.hc, w.check)
		if old, ok := replaced[k]; ok {
			np.prev = old
			np.track = old.track
			np.track.confirmed = false
			np.track.successes, np.track.failures = 0, 0
			np.status.Last = old.status.Last
			np.sync()
		}
		m.probers[k] = np
	}
	if m.ctx != nil && !m.stopped {
		for _, p := range m.probers {
			m.start(p)
		}
	}
	return errors.Join(errs...)
}

// Run checks until ctx ends, then waits for the checks under way to stop.
// It returns nil then; an error only when called twice.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ctx != nil {
		m.mu.Unlock()
		return errors.New("monitor already ran")
	}
	m.ctx = ctx
	for _, p := range m.probers {
		m.start(p)
	}
	m.mu.Unlock()

	<-ctx.Done()
	m.mu.Lock()
	m.stopped = true // no wg.Add after this, so Wait cannot race one
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// States is every monitored backend's state, for Backends. A backend that
// is not in it (health_check none, or not monitored yet) counts as healthy.
func (m *Monitor) States() map[Key]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[Key]State, len(m.probers))
	for k, p := range m.probers {
		out[k] = p.track.state
	}
	return out
}

// Snapshot is the status of every monitored backend, by service and
// backend, for `halb status`.
func (m *Monitor) Snapshot() []Status {
	m.mu.Lock()
	out := make([]Status, 0, len(m.probers))
	for _, p := range m.probers {
		out = append(out, p.status)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), a.Backend.Compare(b.Backend))
	})
	return out
}

func newProber(k Key, hc config.HealthCheck, check Checker) *prober {
	p := &prober{key: k, hc: hc, check: check, track: newTracker(), done: make(chan struct{})}
	p.sync()
	return p
}

// sync copies the tracker into the status. Called with Monitor.mu held.
func (p *prober) sync() {
	p.status.Key = p.key
	p.status.Check = p.hc.Type
	p.status.State = p.track.state
	p.status.Confirmed = p.track.confirmed
	p.status.Successes = p.track.successes
	p.status.Failures = p.track.failures
}

// stop cancels a started prober, or marks an unstarted one done. Called
// with Monitor.mu held.
func (p *prober) stop() {
	if p.cancel != nil {
		p.cancel()
		return
	}
	p.cancel = func() {}
	close(p.done)
}

// start starts p unless it has started. Called with m.mu held.
func (m *Monitor) start(p *prober) {
	if p.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	p.cancel = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(p.done)
		m.probe(ctx, p)
	}()
}

// probe is the life of one prober: the first check at an offset within the
// interval that is fixed for the backend, then one check per interval plus
// a little jitter.
func (m *Monitor) probe(ctx context.Context, p *prober) {
	if p.prev != nil {
		// The replaced prober may be inside a check; its result is
		// dropped, but it must not report after this one has.
		select {
		case <-p.prev.done:
		case <-ctx.Done():
			return
		}
		p.prev = nil
	}
	timer := time.NewTimer(firstDelay(p.key, p.hc.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, p.hc.Timeout)
		err := p.check.Check(cctx, p.key)
		cancel()
		if ctx.Err() != nil {
			return // stopped or replaced: the result means nothing
		}
		r := Result{Key: p.key, Check: p.hc.Type, Err: err, Latency: time.Since(start), Time: start}
		ev, changed := m.record(p, r)
		if m.opts.OnResult != nil {
			m.opts.OnResult(r)
		}
		if changed && m.opts.OnChange != nil {
			m.opts.OnChange(ev)
		}
		timer.Reset(time.Until(start.Add(nextDelay(p.hc.Interval))))
	}
}

// record feeds a result to p's tracker.
func (m *Monitor) record(p *prober, r Result) (Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.probers[p.key] != p {
		return Event{}, false // replaced or removed meanwhile
	}
	from := p.track.state
	reason := p.track.observe(r.Err, p.hc.Rise, p.hc.Fall)
	p.status.Last = r
	p.sync()
	if reason == "" {
		return Event{}, false
	}
	return Event{
		Key: p.key, Check: p.hc.Type,
		From: from, To: p.track.state,
		Reason: reason, Err: r.Err, Latency: r.Latency, Time: r.Time.Add(r.Latency),
	}, true
}

func checkTiming(hc config.HealthCheck) error {
	switch {
	case hc.Interval <= 0:
		return fmt.Errorf("interval %s must be positive", hc.Interval)
	case hc.Timeout <= 0:
		return fmt.Errorf("timeout %s must be positive", hc.Timeout)
	case hc.Rise < 1 || hc.Fall < 1:
		return fmt.Errorf("rise %d and fall %d must be at least 1", hc.Rise, hc.Fall)
	}
	return nil
}

// sameCheck compares every field, so that a key added to health_check
// (port, source, urls) restarts the check when a reload changes it.
func sameCheck(a, b config.HealthCheck) bool {
	return reflect.DeepEqual(a, b)
}

// firstDelay is when a backend's first check comes: at an offset within
// the interval taken from a hash of the backend, so that a hundred backends
// configured together are not probed in one burst, and a restarted daemon
// probes each backend at the same phase as before.
func firstDelay(k Key, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(k.Service))
	h.Write([]byte{0})
	b, _ := k.Backend.MarshalBinary()
	h.Write(b)
	return time.Duration(mix64(h.Sum64()) % uint64(interval))
}

// mix64 is splitmix64's finalizer: FNV's low bits follow the last input
// byte too closely for addresses that differ only there.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// nextDelay is the time from one check's start to the next: the interval
// plus up to a tenth of it at random, never less, so that backends whose
// first checks fell close together drift apart.
func nextDelay(interval time.Duration) time.Duration {
	if j := interval / 10; j > 0 {
		return interval + rand.N(j)
	}
	return interval
}
