package vrrp

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

var (
	self  = netip.MustParseAddr("192.0.2.10")
	lower = netip.MustParseAddr("192.0.2.5")
	upper = netip.MustParseAddr("192.0.2.20")
)

// step is one input to the machine and what must come out of it.
type step struct {
	do        func(m *Machine) []Action
	actions   string // the actions, joined with "; "
	state     State
	deadline  time.Duration // from t0; -1 = no timer
	skipCheck bool          // only drive the machine
}

func start(d time.Duration) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.Start(at(d)) }
}
func tick(d time.Duration) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.Tick(at(d)) }
}
func recv(d time.Duration, prio uint8, interval time.Duration, src netip.Addr) func(*Machine) []Action {
	return func(m *Machine) []Action {
		return m.Receive(at(d), Received{Priority: prio, Interval: interval, Src: src})
	}
}
func shutdown(d time.Duration) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.Shutdown(at(d)) }
}
func fault(d time.Duration, why string) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.SetFault(at(d), why) }
}
func clear(d time.Duration, why string) func(*Machine) []Action {
	return func(m *Machine) []Action { return m.ClearFault(at(d), why) }
}

func joinActions(acts []Action) string {
	s := make([]string, len(acts))
	for i, a := range acts {
		s[i] = a.String()
	}
	return strings.Join(s, "; ")
}

const (
	sec = time.Second
	ms  = time.Millisecond
)

// v3 at priority 100, 1s adverts: Skew_Time = 156/256 s = 609.375ms,
// Master_Down_Interval = 3.609375s.
const skew100 = 609375 * time.Microsecond
const down100 = 3*sec + skew100

func TestMachine(t *testing.T) {
	v3 := Params{Version: 3, Priority: 100, AdvertInterval: sec, Preempt: true, Primary: self}
	noPreempt := v3
	noPreempt.Preempt = false
	delayed := v3
	delayed.PreemptDelay = 5 * sec
	owner := v3
	owner.Priority = 255
	v2 := v3
	v2.Version = 2

	tests := []struct {
		name   string
		params Params
		steps  []step
	}{
		{"startup as backup (§6.4.1)", v3, []step{
			{do: start(0), actions: "INIT -> BACKUP (startup)", state: Backup, deadline: down100},
		}},
		{"address owner starts as master (§6.4.1)", owner, []step{
			{do: start(0), actions: "send advert priority 255; take over; INIT -> MASTER (startup, address owner)", state: Master, deadline: sec},
		}},
		{"master down timer makes the backup master (§6.4.2)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100 - ms), actions: "", state: Backup, deadline: down100},
			{do: tick(down100), actions: "send advert priority 100; take over; BACKUP -> MASTER (master down timer)", state: Master, deadline: down100 + sec},
		}},
		{"a higher-priority advert resets the master down timer", v3, []step{
			{do: start(0), skipCheck: true},
			{do: recv(2*sec, 200, sec, upper), actions: "", state: Backup, deadline: 2*sec + down100},
		}},
		{"preempt: a lower-priority master is ignored, then replaced", v3, []step{
			{do: start(0), skipCheck: true},
			{do: recv(2*sec, 50, sec, upper), actions: "", state: Backup, deadline: down100},
			{do: tick(down100), actions: "send advert priority 100; take over; BACKUP -> MASTER (master down timer)", state: Master, deadline: down100 + sec},
		}},
		{"no preempt: a lower-priority master keeps its role", noPreempt, []step{
			{do: start(0), skipCheck: true},
			{do: recv(3*sec, 50, sec, lower), actions: "", state: Backup, deadline: 3*sec + down100},
			{do: tick(3*sec + down100 - ms), actions: "", state: Backup, deadline: 3*sec + down100},
		}},
		{"priority 0 from the master: take over after skew time (§6.4.2)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: recv(sec, 0, sec, upper), actions: "", state: Backup, deadline: sec + skew100},
			{do: tick(sec + skew100), actions: "send advert priority 100; take over; BACKUP -> MASTER (master down timer)", state: Master, deadline: sec + skew100 + sec},
		}},
		{"preempt_delay: follow a weaker master until the delay has passed", delayed, []step{
			{do: start(0), skipCheck: true},
			{do: recv(1*sec, 50, sec, lower), actions: "", state: Backup, deadline: 1*sec + down100},
			{do: recv(5*sec, 50, sec, lower), actions: "", state: Backup, deadline: 5*sec + down100},
			{do: recv(6*sec, 50, sec, lower), actions: "", state: Backup, deadline: 5*sec + down100},
			{do: tick(5*sec + down100), actions: "send advert priority 100; take over; BACKUP -> MASTER (master down timer)", state: Master, deadline: 6*sec + down100},
		}},
		{"v3 learns Master_Adver_Interval from the master (§6.4.2)", v3, []step{
			{do: start(0), skipCheck: true},
			// 100ms adverts at priority 200: down = 300ms + 156/256 × 100ms.
			{do: recv(sec, 200, 100*ms, upper), actions: "", state: Backup, deadline: sec + 300*ms + 60937500},
		}},
		{"v2 counts skew in seconds and learns nothing (RFC 3768 §6.1)", v2, []step{
			{do: start(0), skipCheck: true},
			{do: recv(sec, 200, 100*ms, upper), actions: "", state: Backup, deadline: sec + down100},
		}},
		{"master sends adverts on its timer (§6.4.3)", owner, []step{
			{do: start(0), skipCheck: true},
			{do: tick(sec), actions: "send advert priority 255", state: Master, deadline: 2 * sec},
			{do: tick(2 * sec), actions: "send advert priority 255", state: Master, deadline: 3 * sec},
		}},
		{"master yields to a higher priority (§6.4.3)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: recv(5*sec, 150, 2*sec, upper), actions: "give up; MASTER -> BACKUP (higher priority 150 from 192.0.2.20)", state: Backup,
				// learned 2s interval: 6s + 156/256 × 2s
				deadline: 5*sec + 6*sec + 2*skew100},
		}},
		{"a master hearing a weaker master answers at once and reannounces", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: recv(4*sec, 99, sec, upper), actions: "send advert priority 100; reannounce", state: Master, deadline: 5 * sec},
		}},
		{"equal priority: the higher primary address wins (§6.4.3)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: recv(4*sec, 100, sec, lower), actions: "send advert priority 100; reannounce", state: Master, deadline: 5 * sec},
			{do: recv(4*sec, 100, sec, upper), actions: "give up; MASTER -> BACKUP (equal priority 100 from higher address 192.0.2.20)", state: Backup, deadline: 4*sec + down100},
		}},
		{"master answers a priority-0 advert at once (§6.4.3)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: recv(4*sec, 0, sec, upper), actions: "send advert priority 100", state: Master, deadline: 5 * sec},
		}},
		{"master shutdown sends priority 0 (§6.4.3)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: shutdown(5 * sec), actions: "send advert priority 0; give up; MASTER -> INIT (shutdown)", state: Initialize, deadline: -1},
		}},
		{"backup shutdown is quiet (§6.4.2)", v3, []step{
			{do: start(0), skipCheck: true},
			{do: shutdown(sec), actions: "BACKUP -> INIT (shutdown)", state: Initialize, deadline: -1},
		}},
		{"fault from master says goodbye, and clears by itself", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: fault(5*sec, "eth0 down"), actions: "send advert priority 0; give up; MASTER -> FAULT (eth0 down)", state: Fault, deadline: -1},
			{do: recv(6*sec, 50, sec, lower), actions: "", state: Fault, deadline: -1},
			{do: tick(20 * sec), actions: "", state: Fault, deadline: -1},
			{do: clear(30*sec, "eth0 down"), actions: "FAULT -> BACKUP (fault cleared: eth0 down)", state: Backup, deadline: 30*sec + down100},
		}},
		{"fault before start: start goes to fault; faults must all clear", v3, []step{
			{do: fault(0, "no interface eth0"), actions: "", state: Initialize, deadline: -1},
			{do: start(0), actions: "INIT -> FAULT (no interface eth0)", state: Fault, deadline: -1},
			{do: fault(sec, "no address 192.0.2.10"), actions: "", state: Fault, deadline: -1},
			{do: clear(2*sec, "no interface eth0"), actions: "", state: Fault, deadline: -1},
			{do: clear(3*sec, "no address 192.0.2.10"), actions: "FAULT -> BACKUP (fault cleared: no address 192.0.2.10)", state: Backup, deadline: 3*sec + down100},
		}},
		{"an owner leaving fault becomes master at once", owner, []step{
			{do: start(0), skipCheck: true},
			{do: fault(sec, "eth0 down"), skipCheck: true},
			{do: clear(2*sec, "eth0 down"), actions: "send advert priority 255; take over; FAULT -> MASTER (fault cleared: eth0 down, address owner)", state: Master, deadline: 3 * sec},
		}},
		{"a master whose priority changes advertises it at once", v3, []step{
			{do: start(0), skipCheck: true},
			{do: tick(down100), skipCheck: true},
			{do: func(m *Machine) []Action { return m.SetPriority(at(4*sec), 80) }, actions: "send advert priority 80", state: Master, deadline: 5 * sec},
			{do: recv(4500*ms, 90, sec, lower), actions: "give up; MASTER -> BACKUP (higher priority 90 from 192.0.2.5)", state: Backup, deadline: 4500*ms + 3*sec + 176*sec/256},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, NewMachine(tt.params), tt.steps)
		})
	}
}

// runSteps drives m through steps, checking each one's actions, state and
// deadline.
func runSteps(t *testing.T, m *Machine, steps []step) {
	t.Helper()
	for i, s := range steps {
		got := joinActions(s.do(m))
		if s.skipCheck {
			continue
		}
		if got != s.actions {
			t.Errorf("step %d: actions\n got %q\nwant %q", i, got, s.actions)
		}
		if m.State() != s.state {
			t.Errorf("step %d: state %s, want %s", i, m.State(), s.state)
		}
		var want time.Time
		if s.deadline >= 0 {
			want = at(s.deadline)
		}
		if !m.Deadline().Equal(want) {
			t.Errorf("step %d: deadline %v, want %v", i, m.Deadline().Sub(t0), s.deadline)
		}
	}
}

func TestSkewAndDownInterval(t *testing.T) {
	for _, tt := range []struct {
		version  int
		priority uint8
		interval time.Duration
		down     time.Duration
	}{
		{3, 100, sec, down100},
		{3, 254, sec, 3*sec + 2*sec/256},
		{3, 1, 10 * ms, 30*ms + 255*10*ms/256},
		{2, 100, sec, down100},
		{2, 100, 3 * sec, 9*sec + skew100},
	} {
		m := NewMachine(Params{Version: tt.version, Priority: tt.priority, AdvertInterval: tt.interval})
		if got := m.MasterDownInterval(); got != tt.down {
			t.Errorf("v%d priority %d interval %v: master down %v, want %v", tt.version, tt.priority, tt.interval, got, tt.down)
		}
	}
}
