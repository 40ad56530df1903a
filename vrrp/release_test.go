package vrrp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func release(d time.Duration, force bool, wantErr error) func(*Machine) []Action {
	return func(m *Machine) []Action {
		acts, err := m.ReleaseMastership(at(d), force)
		if !errors.Is(err, wantErr) {
			panic("release: " + errString(err) + ", want " + errString(wantErr))
		}
		return acts
	}
}

func resume(d time.Duration) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.Resume(at(d)) }
}

// released checks Machine.Released, as the instance's status shows it.
func released(want bool) func(*Machine) []Action {
	return func(m *Machine) []Action {
		if m.Released() != want {
			panic(fmt.Sprintf("released: %v, want %v", m.Released(), want))
		}
		return nil
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// `halb vrrp release` and `resume` as the machine sees them: priority 0,
// the VIPs kept until a new master's advert (make before break), then
// Backup held until resume; refused on a Backup that heard nobody, ended
// on a Master no peer answered (its VIPs never left), and with preempt
// the VIPs come back after resume.
func TestRelease(t *testing.T) {
	v3 := Params{Version: 3, Priority: 100, AdvertInterval: sec, Preempt: true, Primary: self}
	master := func() []step { // master at down100, as in TestMachine
		return []step{{do: start(0), skipCheck: true}, {do: tick(down100), skipCheck: true}}
	}
	const m0 = down100 // when it became Master
	tests := []struct {
		name  string
		steps []step
	}{
		{"a master says priority 0 and keeps its VIPs until the new master's advert, then holds backup while the peer advertises", append(master(),
			step{do: release(m0+sec, false, nil), actions: "send advert priority 0", state: Master, deadline: m0 + 2*sec},
			step{do: released(true), actions: "", state: Master, deadline: m0 + 2*sec},
			// The peer took over after its skew time: its first advert
			// takes the VIPs from here, whatever its priority.
			step{do: recv(m0+sec+skew100, 50, sec, lower), actions: "give up; MASTER -> BACKUP (released by the operator: 192.0.2.5 took over at priority 50)", state: Backup, deadline: m0 + sec + skew100 + down100},
			step{do: recv(m0+2*sec+skew100, 50, sec, lower), actions: "", state: Backup, deadline: m0 + 2*sec + skew100 + down100},
			// A weaker master, preempt on: released, the machine follows it.
			step{do: tick(m0 + 2*sec + skew100 + down100), actions: "", state: Backup, deadline: m0 + 2*sec + skew100 + 2*down100},
			step{do: released(true), actions: "", state: Backup, deadline: m0 + 2*sec + skew100 + 2*down100},
		)},
		{"resume with preempt takes the VIPs back from the weaker master", append(master(),
			step{do: release(m0+sec, false, nil), skipCheck: true},
			step{do: recv(m0+2*sec, 50, sec, lower), skipCheck: true},
			step{do: resume(m0 + 3*sec), actions: "", state: Backup, deadline: m0 + 2*sec + down100},
			step{do: recv(m0+4*sec, 50, sec, lower), actions: "", state: Backup, deadline: m0 + 2*sec + down100}, // discarded: preempt
			step{do: tick(m0 + 2*sec + down100), actions: "send advert priority 100; take over; BACKUP -> MASTER (master down timer)", state: Master, deadline: m0 + 3*sec + down100},
		)},
		{"no peer takes over: the master keeps its VIPs, says priority 0 each interval, and advertises again after three", append(master(),
			step{do: release(m0+sec, false, nil), skipCheck: true},
			step{do: tick(m0 + 2*sec), actions: "send advert priority 0", state: Master, deadline: m0 + 3*sec},
			// A tracked priority change says nothing: a priority would
			// withdraw the offer.
			step{do: func(m *Machine) []Action { return m.SetPriority(at(m0+2*sec), 90) }, actions: "", state: Master, deadline: m0 + 3*sec},
			// Another master leaving is no taker.
			step{do: recv(m0+2*sec+ms, 0, sec, lower), actions: "", state: Master, deadline: m0 + 3*sec},
			step{do: tick(m0 + 3*sec), actions: "send advert priority 0", state: Master, deadline: m0 + 4*sec},
			step{do: tick(m0 + 4*sec - ms), actions: "", state: Master, deadline: m0 + 4*sec},
			step{do: tick(m0 + 4*sec), actions: "send advert priority 90", state: Master, deadline: m0 + 5*sec},
			step{do: released(false), actions: "", state: Master, deadline: m0 + 5*sec},
			step{do: tick(m0 + 5*sec), actions: "send advert priority 90", state: Master, deadline: m0 + 6*sec},
		)},
		{"resume while a released master waits for a taker: its own priority again at once", append(master(),
			step{do: release(m0+sec, false, nil), skipCheck: true},
			step{do: resume(m0 + sec + ms), actions: "", state: Master, deadline: m0 + sec + ms},
			step{do: tick(m0 + sec + ms), actions: "send advert priority 100", state: Master, deadline: m0 + 2*sec + ms},
			step{do: recv(m0+2*sec, 50, sec, lower), actions: "send advert priority 100; reannounce", state: Master, deadline: m0 + 3*sec},
		)},
		{"--force: released even when no peer answers", append(master(),
			step{do: release(m0+sec, true, nil), actions: "send advert priority 0; give up; MASTER -> BACKUP (released by the operator)", state: Backup, deadline: m0 + sec + down100},
			step{do: tick(m0 + sec + down100), actions: "", state: Backup, deadline: m0 + sec + 2*down100},
		)},
		{"a backup that heard no master is refused without --force", []step{
			{do: start(0), skipCheck: true},
			{do: release(sec, false, ErrNoPeer), actions: "", state: Backup, deadline: down100},
			{do: release(sec, true, nil), actions: "", state: Backup, deadline: down100},
			{do: tick(down100), actions: "", state: Backup, deadline: 2 * down100},
		}},
		{"a backup that hears its master holds, and does not pre-empt a weaker one", []step{
			{do: start(0), skipCheck: true},
			{do: recv(sec, 200, sec, upper), skipCheck: true},
			{do: release(2*sec, false, nil), actions: "", state: Backup, deadline: sec + down100},
			{do: recv(3*sec, 50, sec, upper), actions: "", state: Backup, deadline: 3*sec + down100},
			{do: recv(4*sec, 0, sec, upper), actions: "", state: Backup, deadline: 4*sec + skew100},
			{do: tick(4*sec + skew100), actions: "", state: Backup, deadline: 4*sec + skew100 + down100},
		}},
		{"a released member does not follow its sync group to Master", []step{
			{do: start(0), skipCheck: true},
			{do: recv(sec, 200, sec, upper), skipCheck: true},
			{do: release(2*sec, false, nil), skipCheck: true},
			{do: func(m *Machine) []Action { return m.Follow(at(3*sec), Master, "group") }, actions: "", state: Backup, deadline: sec + down100},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, NewMachine(v3), tt.steps)
		})
	}
}

// Instance.Release reaches the Run loop while it runs, even asked as Run
// starts (under -race, reading Run's ctx from here was a data race), and
// once Run has returned, answers at once that the instance is stopping
// rather than waiting for a loop that is gone (the caller's context never
// ends here).
func TestOperatorCmdAfterRun(t *testing.T) {
	cfg := baseConfig()
	r := startRun(t, cfg, upLAN(cfg), nil)
	if err := r.Release(context.Background(), true); err != nil {
		t.Fatalf("release of a running instance: %v", err)
	}
	r.waitState(t, Backup)
	r.stop(t)
	err := r.Resume(context.Background())
	if err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("resume after Run returned: %v, want the instance is stopping", err)
	}
}

// A released address owner (priority 255) whose fault clears starts
// again in Backup, held there like any released machine, not as Master:
// only resume ends a release.
func TestReleasedOwnerAfterFault(t *testing.T) {
	m := NewMachine(Params{Version: 3, Priority: OwnerPriority, AdvertInterval: sec, Primary: self})
	m.Start(at(0))
	if _, err := m.ReleaseMastership(at(sec), true); err != nil || m.State() != Backup {
		t.Fatalf("forced release of the owner: %v, state %s, want Backup", err, m.State())
	}
	m.SetFault(at(2*sec), "link down")
	m.ClearFault(at(3*sec), "link down")
	if m.State() != Backup || !m.Released() {
		t.Fatalf("after the fault cleared: %s, released %v; want Backup, still released", m.State(), m.Released())
	}
	m.Tick(m.Deadline())
	if m.State() != Backup {
		t.Fatalf("at the master down timer: %s, want Backup (held)", m.State())
	}
	m.Resume(at(10 * sec))
	m.Tick(m.Deadline())
	if m.State() != Master {
		t.Fatalf("after resume, at the master down timer: %s, want Master", m.State())
	}
}

// A released Master that faults while it waits for a taker gives its VIPs
// up (Fault), and once the fault clears holds Backup: the wait it gave up
// no longer sets its next deadline, which would be in the past and wake
// the Run loop at once, again and again.
func TestReleasedMasterAfterFault(t *testing.T) {
	m := NewMachine(Params{Version: 3, Priority: 100, AdvertInterval: sec, Preempt: true, Primary: self})
	m.Start(at(0))
	m.Tick(m.Deadline())
	if m.State() != Master {
		t.Fatalf("at the master down timer: %s, want Master", m.State())
	}
	now := m.Deadline().Add(-sec / 2)
	if _, err := m.ReleaseMastership(now, false); err != nil {
		t.Fatal(err)
	}
	m.SetFault(now.Add(sec/10), "link down")
	now = now.Add(10 * sec) // past the three intervals the wait had
	m.ClearFault(now, "link down")
	if m.State() != Backup || !m.Released() {
		t.Fatalf("after the fault cleared: %s, released %v; want Backup, still released", m.State(), m.Released())
	}
	if d := m.Deadline(); !d.After(now) {
		t.Fatalf("deadline %v, not after now (%v): the Run loop would spin", d.Sub(now), now.Sub(at(0)))
	}
}
