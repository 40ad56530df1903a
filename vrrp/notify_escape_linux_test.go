package vrrp

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/halbtest"
)

// TestNotifyEscapeeDiesAtStop: a notify script that ignores SIGTERM and
// starts a child in a session of its own (setsid), as the attacker's trial
// did, leaves no process behind once the instance has stopped, and the
// stop stays within its bounds (the running call's 1 s, STOP's 2 s). The
// child is found by a random marker in its command line; only such
// processes, provably this test's, are killed in cleanup. Before, the
// child lived on as root, reparented to init.
func TestNotifyEscapeeDiesAtStop(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	dir := t.TempDir()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	marker := "halb-notify-escapee-" + hex.EncodeToString(b)
	marked := func() []int { return halbtest.MarkedPIDs(t, marker) }
	t.Cleanup(func() {
		for _, pid := range marked() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	script := filepath.Join(dir, "notify.sh")
	body := fmt.Sprintf("#!/bin/sh\ntrap '' TERM\n(setsid /bin/sh -c 'trap \"\" TERM; while :; do sleep 1; done' %s </dev/null &)\nsleep 30\n", marker)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	a := startInProcess(t, l.ns[0], v.config(l, 0, 150, true)+"      notify: "+script+"\n", func(*Instance) {})
	// Wait for a notify call's escapee to be running.
	for start := time.Now(); len(marked()) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("no notify call started its child within 20s")
		}
	}
	start := time.Now()
	a.stop(t)
	took := time.Since(start)
	t.Logf("stop took %v", took.Round(time.Millisecond))
	if pids := marked(); len(pids) != 0 {
		t.Errorf("after stop, notify's escaped children still run: pids %v", pids)
	}
	// 1 s for the running call and 2 s for STOP, with room for a loaded
	// machine.
	if limit := 10 * time.Second; took > limit {
		t.Errorf("stop took %v, want under %v", took, limit)
	}
}
