package vrrp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

func TestScriptRiseAndFall(t *testing.T) {
	ts := config.TrackScript{Rise: 2, Fall: 3}
	s := scriptState{ok: true}
	fail, pass := errors.New("exit status 1"), error(nil)
	steps := []struct {
		err     error
		changed bool
		ok      bool
	}{
		{fail, false, true}, {fail, false, true}, {pass, false, true}, // a success resets the count
		{fail, false, true}, {fail, false, true}, {fail, true, false}, // third failure in a row
		{fail, false, false}, {pass, false, false}, {fail, false, false},
		{pass, false, false}, {pass, true, true}, // second success in a row
	}
	for i, st := range steps {
		if changed := s.update(ts, st.err); changed != st.changed || s.ok != st.ok {
			t.Fatalf("step %d: changed %v ok %v, want %v %v", i, changed, s.ok, st.changed, st.ok)
		}
	}
}

// A script that hangs is killed when its time is up together with the
// children it started, and counts as failed. Its time is up once it hangs
// with its child started: a fixed 300 ms ran out on a loaded machine
// before the shell had started anything (1 run in 200 at load 12), and
// there was no child to look for. The timeout bounds a script that never
// gets there.
func TestHangingScriptIsKilled(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := filepath.Join(dir, "hang.sh")
	body := fmt.Sprintf("#!/bin/sh\nsleep 300 &\necho $! > %s\nwait\n", pidFile)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		for {
			if data, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(data), "\n") {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	_, err := runProgram(ctx, time.Minute, []string{script}, nil)
	if !errors.Is(err, errTimeout) {
		t.Fatalf("err = %v, want a timeout", err)
	}
	t.Logf("hanging script returned after %v", time.Since(start).Round(time.Millisecond))
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(stat), ") Z ") {
			break // dead, waiting for its parent to reap it
		}
		if time.Now().After(deadline) {
			t.Fatalf("the script's child %d outlived the timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A maintenance-file track script with weight -60 moves the Master after
// fall runs and back after rise runs.
func TestTrackScript(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	flag := filepath.Join(t.TempDir(), "maintenance")
	cfgA := v.config(l, 0, 150, true) + fmt.Sprintf(`      track_scripts:
        - {command: [/usr/bin/test, "!", -e, %s], interval: 1500ms, timeout: 1s, rise: 2, fall: 2, weight: -60}
`, flag)
	a := newNode(t, "a", l.ns[0], cfgA)
	b := newNode(t, "b", l.ns[1], v.config(l, 1, 100, true))
	limit := 10 * time.Second
	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, limit)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	took := waitAddr(t, l.h[1], v.vip(), true, limit)
	waitLog(t, a, "track script failing")
	t.Logf("maintenance file: b took over after %v (fall 2 × 1.5s, then master down)", took.Round(time.Millisecond))

	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	waitAddr(t, l.h[1], v.vip(), false, limit)
	t.Logf("file removed: a pre-empted after %v", took.Round(time.Millisecond))
	a.stop(syscall.SIGTERM)
}

// A track script that hangs is killed at its timeout and counts as failed:
// after fall such runs the Master's priority drops by the weight and the
// peer takes over; once the script answers again (rise runs) the Master
// pre-empts back.
func TestHangingTrackScriptMovesMaster(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	dir := t.TempDir()
	flag, pids := filepath.Join(dir, "hang"), filepath.Join(dir, "pids")
	// The timeout is generous beside a run that does not hang (a few ms,
	// 30 ms at load 10): at 300 ms, runs on a loaded machine timed out
	// before the flag was made (two in a row, priority 90 and b Master
	// before the check hung), and the move came too soon.
	const (
		timeout = time.Second
		fall    = 2
	)
	// While the flag exists the check hangs, as one blocked on a dead NFS
	// mount or an unanswered connect would; exec keeps the pid the test
	// checks on.
	check := fmt.Sprintf("if [ -e %s ]; then echo $$ >> %s; exec sleep 60; fi", flag, pids)
	cfgA := v.config(l, 0, 150, true) + fmt.Sprintf(`      track_scripts:
        - {command: [/bin/sh, -c, %q], interval: 1500ms, timeout: %v, rise: 2, fall: %d, weight: -60}
`, check, timeout, fall)
	a := newNode(t, "a", l.ns[0], cfgA)
	b := newNode(t, "b", l.ns[1], v.config(l, 1, 100, true))
	limit := 20 * time.Second // bounds a hang: fall runs of interval and timeout take some 5 s
	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, limit)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	took := waitAddr(t, l.h[1], v.vip(), true, limit)
	waitAddr(t, l.h[0], v.vip(), false, limit)
	waitLog(t, a, "track script failing")
	t.Logf("check hangs: b took over after %v (fall %d × timeout %v, then b's master down interval %v)",
		took.Round(time.Millisecond), fall, timeout, v.masterDown(100))
	// Each failing run lasted its whole timeout: a faster move would mean
	// the hang was not what counted.
	if took < fall*timeout {
		t.Errorf("b took over %v after the check began to hang, sooner than fall × timeout = %v", took, fall*timeout)
	}
	for _, line := range strings.Split(a.log.String(), "\n") {
		if strings.Contains(line, "track script failing") && !strings.Contains(line, errTimeout.Error()) {
			t.Errorf("the failure is not logged as a timeout: %s", line)
		}
	}

	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	waitAddr(t, l.h[1], v.vip(), false, limit)
	waitLog(t, a, "track script good again")
	t.Logf("check answers again: a pre-empted after %v", took.Round(time.Millisecond))
	a.stop(syscall.SIGTERM)

	// Every hanging run was killed, not left behind.
	hung := strings.Fields(readFile(t, pids))
	if len(hung) < fall {
		t.Errorf("%d runs hung, want at least fall = %d", len(hung), fall)
	}
	for _, line := range hung {
		pid, err := strconv.Atoi(line)
		if err != nil {
			t.Fatalf("pid file: %v", err)
		}
		if !processGone(pid, limit) {
			t.Errorf("hanging check %d outlived its timeout", pid)
		}
	}
}
