package vrrp

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// These tests run Instance.Run itself over the fake link, without root:
// what it waits for when it ends, which of the link's changes wake it,
// and what it does on its way out.

// running is an instance whose Run a test started.
type running struct {
	*Instance
	fake   *fakeLink
	cancel context.CancelFunc
	ran    chan error
}

// startRun runs an instance over f until the test stops it (or ends).
func startRun(t *testing.T, cfg config.Instance, f *fakeLink, run runProgramFunc) *running {
	t.Helper()
	return startTuned(t, cfg, f, run, nil)
}

// startTuned is startRun with tune, when not nil, given the instance
// before Run starts.
func startTuned(t *testing.T, cfg config.Instance, f *fakeLink, run runProgramFunc, tune func(*Instance)) *running {
	t.Helper()
	in := newInstance(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), f, run)
	if tune != nil {
		tune(in)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Instance: in, fake: f, cancel: cancel, ran: make(chan error, 1)}
	go func() { r.ran <- in.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends Run and waits until it has returned.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.ran:
		if ok && err != nil {
			t.Errorf("Run: %v", err)
		}
		if ok {
			close(r.ran)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30 s of its context's end")
	}
}

// waitState waits until the instance's status shows state s.
func (r *running) waitState(t *testing.T, s State) {
	t.Helper()
	waitFor(t, s.String(), func() *State {
		if got := r.Status().State; got == s {
			return &got
		}
		return nil
	})
}

// lingerFor is how long each fake goroutine goes on after the context
// ends: long enough that a Run which did not wait for it returns first.
const lingerFor = 300 * time.Millisecond

// Run returns only after every goroutine it started has ended, however
// long they take once the context is over: the readers of both sockets
// (base and VMAC), the track scripts, and the notifier's STOP call. In
// each case one kind of fake goroutine goes on lingerFor after the end
// (the others end at once, so that they cannot hold Run for it) and only
// then sets its flag; the flags are read the moment Run has returned.
// Nothing is timed: only the order matters.
func TestRunWaitsForItsGoroutines(t *testing.T) {
	for _, lingering := range []string{"readers", "scripts", "notifier"} {
		t.Run(lingering, func(t *testing.T) { runAndLinger(t, lingering) })
	}
}

// runAndLinger runs an instance with a VMAC, two track scripts and a
// notify script, the lingering kind of goroutine lingering, and checks
// that Run waited for it.
func runAndLinger(t *testing.T, lingering string) {
	cfg := baseConfig()
	cfg.UseVMAC = true
	cfg.Notify = "/bin/notify"
	cfg.TrackScripts = []config.TrackScript{
		{Command: []string{"/bin/check-a"}, Weight: -10, Rise: 1, Fall: 1, Interval: 10 * time.Millisecond, Timeout: time.Minute},
		{Command: []string{"/bin/check-b"}, Weight: -10, Rise: 1, Fall: 1, Interval: 10 * time.Millisecond, Timeout: time.Minute},
	}
	f := upLAN(cfg)
	linger := func(kind string) {
		if kind == lingering {
			time.Sleep(lingerFor)
		}
	}
	if lingering == "readers" {
		f.linger = lingerFor
	}
	var mu sync.Mutex
	scriptsEnded := map[string]bool{} // by command, once it returned after the end
	var started atomic.Int32          // script runs that are waiting for the end
	var stopCalled, stopEnded atomic.Bool
	run := func(ctx context.Context, _ time.Duration, argv, _ []string) (string, error) {
		if argv[0] == cfg.Notify {
			if slices.Contains(argv, "STOP") {
				stopCalled.Store(true)
				linger("notifier")
				stopEnded.Store(true)
			}
			return "", nil
		}
		// A track script that runs until the instance stops, and
		// perhaps a while after.
		started.Add(1)
		<-ctx.Done()
		linger("scripts")
		mu.Lock()
		scriptsEnded[argv[0]] = true
		mu.Unlock()
		return "", ctx.Err()
	}
	r := startRun(t, cfg, f, run)
	r.waitState(t, Backup)
	waitFor(t, "both track scripts running", func() *int32 {
		if n := started.Load(); n == 2 {
			return &n
		}
		return nil
	})
	conns := waitFor(t, "both sockets read", func() *[]*fakeConn {
		c := f.openConns()
		if len(c) == 2 && c[0].read.Load() && c[1].read.Load() {
			return &c
		}
		return nil
	})

	r.stop(t)
	for _, c := range *conns {
		if !c.ended.Load() {
			t.Errorf("Run returned before the reader of the socket on ifindex %d ended", c.index)
		}
	}
	mu.Lock()
	for _, ts := range cfg.TrackScripts {
		if !scriptsEnded[ts.Command[0]] {
			t.Errorf("Run returned before track script %s ended", ts.Command[0])
		}
	}
	mu.Unlock()
	if !stopCalled.Load() || !stopEnded.Load() {
		t.Errorf("Run returned before the notifier's STOP call ended (called %v)", stopCalled.Load())
	}
}

// wakeCase is one change of the link that must make a Run in FAULT look
// again (evaluate): unicast_src has come meanwhile, unannounced.
type wakeCase struct {
	name  string
	setup func(cfg *config.Instance, f *fakeLink) // before Run
	event func(in *Instance, f *fakeLink) change
}

// The instance leaves FAULT when unicast_src appears at boot (the case
// keepalived fails, which halb exists to fix) because the link's changes
// that concern it wake Run: an address on its interface, an address on
// its VMAC, a lost subscription (changes were missed), a tracked
// interface's link event, its own link's. A change on another interface
// wakes nothing: the instance stays in FAULT though the address is there.
func TestLinkEventsWakeTheInstance(t *testing.T) {
	cases := []wakeCase{
		{"an address on the interface", nil, func(in *Instance, f *fakeLink) change {
			ifc, _ := f.lookup("lan0")
			return change{index: ifc.Index, addr: true}
		}},
		{"an address on the interface, with a VMAC", func(cfg *config.Instance, f *fakeLink) { cfg.UseVMAC = true }, func(in *Instance, f *fakeLink) change {
			ifc, _ := f.lookup("lan0")
			return change{index: ifc.Index, addr: true}
		}},
		{"an address on the VMAC", func(cfg *config.Instance, f *fakeLink) { cfg.UseVMAC = true }, func(in *Instance, f *fakeLink) change {
			ifc, _ := f.lookup("lan0")
			vm, err := f.lookup(vmacName(in.cfg.VRID, false, ifc.Index))
			if err != nil {
				panic("no VMAC: " + err.Error())
			}
			return change{index: vm.Index, addr: true}
		}},
		{"a lost subscription", nil, func(*Instance, *fakeLink) change { return change{lost: true} }},
		{"a tracked interface's link", func(cfg *config.Instance, f *fakeLink) {
			cfg.TrackInterfaces = []config.TrackInterface{{Name: "uplink0", Weight: -10}}
			f.addIface("uplink0", true)
		}, func(_ *Instance, f *fakeLink) change {
			up, _ := f.lookup("uplink0")
			return change{name: "uplink0", index: up.Index}
		}},
		{"the interface's own link", nil, func(_ *Instance, f *fakeLink) change {
			ifc, _ := f.lookup("lan0")
			return change{name: "lan0", index: ifc.Index}
		}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			cfg := baseConfig()
			cfg.UnicastSrc = ownA
			cfg.UnicastPeers = []netip.Addr{peerA}
			f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
			f.addIface("lan0", true, "192.0.2.7/24") // not unicast_src
			other := f.addIface("other0", true, "198.51.100.1/24")
			if c.setup != nil {
				c.setup(&cfg, f)
			}
			r := startRun(t, cfg, f, nil)
			r.waitState(t, Fault)
			if got := r.Status().Faults; !slices.Equal(got, []string{"unicast_src 192.0.2.1 not on lan0"}) {
				t.Fatalf("faults %q at boot without unicast_src", got)
			}

			// unicast_src comes; first only another interface's
			// changes are reported.
			f.addAddr("lan0", "192.0.2.1/24")
			ctx := context.Background()
			f.notify(ctx, change{index: other.Index, addr: true})
			f.notify(ctx, change{name: other.Name, index: other.Index})
			// Once the second is taken, Run is done with the first.
			waitFor(t, "the changes taken", func() *int {
				if n := r.fake.pendingChanges(); n == 0 {
					return &n
				}
				return nil
			})
			if s := r.Status(); s.State != Fault {
				t.Fatalf("a change on another interface woke the instance: state %s, faults %q", s.State, s.Faults)
			}

			f.notify(ctx, c.event(r.Instance, f))
			r.waitState(t, Backup)
			if got := r.Status().Faults; len(got) != 0 {
				t.Errorf("faults %q after %s", got, c.name)
			}
		})
	}
}

// When Run ends, a Master tells the backups with a priority-0 advert,
// gives the VIPs up and closes its sockets; the notify script learns
// each transition, in order, and last the STOP.
func TestRunShutdownAndNotify(t *testing.T) {
	cfg := baseConfig()
	cfg.AdvertInterval = 100 * time.Millisecond
	cfg.Notify = "/bin/notify"
	f := upLAN(cfg)
	var mu sync.Mutex
	var calls []string
	run := func(_ context.Context, _ time.Duration, argv, env []string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, strings.Join(argv, " "))
		return "", nil
	}
	r := startRun(t, cfg, f, run)
	r.waitState(t, Master)
	waitFor(t, "the VIP added", func() *bool {
		if on, halb := f.has("lan0", vipA.Addr()); on && halb {
			return &on
		}
		return nil
	})
	r.stop(t)

	if on, _ := f.has("lan0", vipA.Addr()); on {
		t.Error("the VIP is still on lan0 after Run returned")
	}
	a := f.sentAdverts()
	if len(a) < 2 || a[len(a)-1].priority != PriorityStop || slices.ContainsFunc(a[:len(a)-1], func(s sentAdvert) bool { return s.priority == PriorityStop }) {
		t.Errorf("adverts %+v, want the last one (and only it) at priority 0", a)
	}
	if n := len(f.openConns()); n != 0 {
		t.Errorf("%d sockets open after Run returned", n)
	}
	if s := r.Status(); s.State != Initialize {
		t.Errorf("state %s after Run returned, want INIT", s.State)
	}
	mu.Lock()
	defer mu.Unlock()
	// BACKUP may be superseded by MASTER before it runs (the notifier
	// keeps only the latest pending call); MASTER and STOP must come, in
	// that order, and last.
	want := []string{"/bin/notify INSTANCE VI_T BACKUP 100", "/bin/notify INSTANCE VI_T MASTER 100", "/bin/notify INSTANCE VI_T STOP 100"}
	if len(calls) < 2 || len(calls) > 3 || !slices.Equal(calls, want[len(want)-len(calls):]) {
		t.Errorf("notify calls %q, want %q (BACKUP may be dropped)", calls, want)
	}
}
