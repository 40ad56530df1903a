package vrrp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// The per-state notify scripts run in the order of the transitions, each
// before notify (keepalived's order), with no added arguments, over Run
// and the fake link: MASTER, BACKUP (a better peer), FAULT (the link
// down), STOP (the end of Run).
func TestStateNotifyOrder(t *testing.T) {
	cfg := baseConfig()
	cfg.AdvertInterval = 100 * time.Millisecond
	cfg.Preempt = false
	cfg.Notify = "/bin/notify"
	cfg.NotifyMaster = []string{"/bin/promote", "--fast"}
	cfg.NotifyBackup = []string{"/bin/demote"}
	cfg.NotifyFault = []string{"/bin/fault"}
	cfg.NotifyStop = []string{"/bin/stop"}
	var mu sync.Mutex
	var calls []string
	run := func(_ context.Context, _ time.Duration, argv, env []string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		state := ""
		for _, e := range env {
			if s, ok := strings.CutPrefix(e, "HALB_STATE="); ok {
				state = s
			}
		}
		calls = append(calls, strings.Join(argv, " ")+" ("+state+")")
		return "", nil
	}
	throughStates(t, cfg, run, func(state string) bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) > 0 && calls[len(calls)-1] == "/bin/notify INSTANCE VI_T "+state+" 100 ("+state+")"
	})
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"/bin/demote (BACKUP)", "/bin/notify INSTANCE VI_T BACKUP 100 (BACKUP)", // at start; may be superseded
		"/bin/promote --fast (MASTER)", "/bin/notify INSTANCE VI_T MASTER 100 (MASTER)",
		"/bin/demote (BACKUP)", "/bin/notify INSTANCE VI_T BACKUP 100 (BACKUP)",
		"/bin/fault (FAULT)", "/bin/notify INSTANCE VI_T FAULT 100 (FAULT)",
		"/bin/stop (STOP)", "/bin/notify INSTANCE VI_T STOP 100 (STOP)",
	}
	if !slices.Equal(calls, want) && !slices.Equal(calls, want[2:]) {
		t.Errorf("calls:\n%s\nwant:\n%s\n(the first two may be missing)", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
}

// throughStates runs an instance over the fake link with run for its
// scripts, through MASTER (no peer), BACKUP (a better peer), FAULT (the
// link down) and STOP (the end of Run), each once ran says the state's
// scripts were the last to run.
func throughStates(t *testing.T, cfg config.Instance, run runProgramFunc, ran func(state string) bool) {
	t.Helper()
	f := upLAN(cfg)
	r := startRun(t, cfg, f, run)
	wait := func(s State) {
		t.Helper()
		r.waitState(t, s)
		waitFor(t, s.String()+"'s scripts", func() *bool {
			if ok := ran(s.String()); ok {
				return &ok
			}
			return nil
		})
	}
	wait(Master)
	conn := waitFor(t, "the advert socket", func() *fakeConn {
		if c := f.openConns(); len(c) == 1 {
			return c[0]
		}
		return nil
	})
	conn.in <- fakeRead{p: advertFrom(t, cfg, peerA, 200)}
	wait(Backup)
	f.setUp("lan0", false)
	ifc, _ := f.lookup("lan0")
	f.notify(context.Background(), change{name: "lan0", index: ifc.Index})
	wait(Fault)
	r.stop(t)
}

// A state with a script of its own and no notify runs that script alone;
// a state with neither runs nothing, and an instance with no script at
// all has no notifier.
func TestStateNotifyAlone(t *testing.T) {
	cfg := baseConfig()
	if newNotifier(cfg, nil, nil) != nil {
		t.Error("a notifier for an instance with no notify script")
	}
	cfg.NotifyMaster = []string{"/bin/promote"}
	n := newNotifier(cfg, nil, nil)
	if n == nil {
		t.Fatal("no notifier with notify_master")
	}
	n.notify(Backup, 100)
	if n.pending != nil {
		t.Errorf("a call for BACKUP, which has no script: %+v", n.pending)
	}
	n.notify(Master, 100)
	if n.pending == nil || len(n.pending.argvs) != 1 || !slices.Equal(n.pending.argvs[0], []string{"/bin/promote"}) {
		t.Errorf("call for MASTER %+v, want /bin/promote alone", n.pending)
	}
}

// A sync group's own scripts run when the group as a whole changes
// state: MASTER once both members are, FAULT when one faults, MASTER
// again, STOP when both have stopped; each with the group's name, over
// Run and two fake links.
func TestGroupNotify(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	run := func(_ context.Context, _ time.Duration, argv, env []string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, strings.Join(argv, " ")+" ("+strings.Join(env, " ")+")")
		return "", nil
	}
	g := newSyncGroup(config.SyncGroup{Name: "G", Instances: []string{"a", "b"},
		NotifyMaster: []string{"/bin/g", "master"}, NotifyBackup: []string{"/bin/g", "backup"},
		NotifyFault: []string{"/bin/g", "fault"}, NotifyStop: []string{"/bin/g", "stop"}}, slog.New(slog.NewTextHandler(io.Discard, nil)), run)
	start := func(name, ifname, vip string) *running {
		cfg := baseConfig()
		cfg.Name, cfg.Interface, cfg.AdvertInterval = name, ifname, 100*time.Millisecond
		cfg.VirtualIPs = config.PlainVIPs(netip.MustParsePrefix(vip))
		f := newFakeLink(cfg.VRID, false, cfg.AdvertPrefixes())
		f.addIface(ifname, true, "192.0.2.1/24")
		return startTuned(t, cfg, f, nil, func(in *Instance) { in.JoinGroup(g) })
	}
	a, b := start("a", "out0", "192.0.2.100/24"), start("b", "in0", "192.0.2.200/24")
	last := func(want string) {
		t.Helper()
		waitFor(t, want, func() *bool {
			mu.Lock()
			defer mu.Unlock()
			if ok := len(calls) > 0 && calls[len(calls)-1] == want; ok {
				return &ok
			}
			return nil
		})
	}
	a.waitState(t, Master)
	b.waitState(t, Master)
	last("/bin/g master (HALB_GROUP=G HALB_STATE=MASTER)")
	b.fake.setUp("in0", false)
	ifc, _ := b.fake.lookup("in0")
	b.fake.notify(context.Background(), change{name: "in0", index: ifc.Index})
	b.waitState(t, Fault)
	last("/bin/g fault (HALB_GROUP=G HALB_STATE=FAULT)")
	b.fake.setUp("in0", true)
	b.fake.notify(context.Background(), change{name: "in0", index: ifc.Index})
	a.waitState(t, Master)
	b.waitState(t, Master)
	last("/bin/g master (HALB_GROUP=G HALB_STATE=MASTER)")
	a.stop(t)
	b.stop(t)

	mu.Lock()
	defer mu.Unlock()
	// BACKUP may come between (both Backup at start, and after the
	// fault), or be superseded; the others come in this order, STOP last.
	var got []string
	for _, c := range calls {
		if !strings.Contains(c, "backup") {
			got = append(got, strings.Fields(c)[1])
		}
	}
	if want := []string{"master", "fault", "master", "stop"}; !slices.Equal(got, want) {
		t.Errorf("group calls %q, want %q with BACKUP anywhere:\n%s", got, want, strings.Join(calls, "\n"))
	}
}

func TestGroupState(t *testing.T) {
	for _, c := range []struct {
		members []State
		was     State
		want    State
		ok      bool
	}{
		{[]State{Initialize, Initialize}, Initialize, Initialize, true},
		{[]State{Backup, Initialize}, Initialize, Initialize, false},
		{[]State{Backup, Backup}, Initialize, Backup, true},
		{[]State{Master, Backup}, Backup, Backup, false},
		{[]State{Master, Master}, Backup, Master, true},
		{[]State{Master, Fault}, Master, Fault, true},
		{[]State{Initialize, Fault}, Fault, Fault, true},
		{[]State{Initialize, Master}, Master, Master, false},
		{[]State{Initialize, Initialize}, Master, Initialize, true},
	} {
		g := &Group{state: c.was}
		for i, s := range c.members {
			g.members = append(g.members, &member{name: fmt.Sprint(i), state: s})
		}
		if s, ok := g.groupState(); s != c.want || ok != c.ok {
			t.Errorf("members %v (was %s): %s, %v; want %s, %v", c.members, c.was, s, ok, c.want, c.ok)
		}
	}
}
