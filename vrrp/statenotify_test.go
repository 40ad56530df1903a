package vrrp

import (
	"context"
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
