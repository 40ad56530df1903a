package vrrp

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// strangersScript is a script that was root's and safe when the config
// was read, then left writable by others (chmod 0777 by mistake) and
// rewritten by a local user to touch the marker.
func strangersScript(t *testing.T) (prog, marker string) {
	t.Helper()
	u := trusttest.NewStranger(t)
	base, _ := trusttest.OpenDir(t, 0o755)
	prog = filepath.Join(base, "script")
	marker = filepath.Join(base, "owned")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if problems := config.CheckScripts(&config.Config{VRRP: config.VRRP{Instances: []config.Instance{{Notify: prog}}}}); len(problems) != 0 {
		t.Fatalf("the script before the mistake: %v", problems)
	}
	if err := os.Chmod(prog, 0o777); err != nil {
		t.Fatal(err)
	}
	u.MustSh(t, "printf '#!/bin/sh\\ntouch "+marker+"\\n' > "+prog)
	return prog, marker
}

func markerAbsent(t *testing.T, marker string) {
	t.Helper()
	if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s exists (%v): the stranger's code ran as root", marker, err)
	}
}

// TestNotifyRefusedAtRun: a notify script that fails the policy when it
// is due is logged as refused and not run.
func TestNotifyRefusedAtRun(t *testing.T) {
	prog, marker := strangersScript(t)
	var logs syncBuffer
	n := newNotifier(config.Instance{Name: "VI_1", Notify: prog}, slog.New(slog.NewTextHandler(&logs, nil)), runProgram)
	go n.loop()
	n.notify(Master, 100)
	n.close()
	if !strings.Contains(logs.String(), `level=ERROR msg="notify script refused, not run"`) || !strings.Contains(logs.String(), "mode 0777") {
		t.Errorf("log:\n%s", logs.String())
	}
	markerAbsent(t, marker)
}

// TestTrackScriptRefusedAtRun: a track script that fails the policy is a
// failed run, counted like any other.
func TestTrackScriptRefusedAtRun(t *testing.T) {
	prog, marker := strangersScript(t)
	ts := config.TrackScript{Command: []string{prog}, Interval: 50 * time.Millisecond, Timeout: 5 * time.Second, Rise: 1, Fall: 1}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	results := make(chan scriptResult, 1)
	wg.Go(func() { runScript(ctx, "VI_1", 0, ts, runProgram, results) })
	var r scriptResult
	select {
	case r = <-results:
	case <-time.After(time.Minute):
		t.Fatal("no result within a minute")
	}
	cancel()
	if !errors.Is(r.err, errRefused) {
		t.Fatalf("result %+v, want a refusal", r)
	}
	s := scriptState{ok: true}
	if !s.update(ts, r.err) || s.ok {
		t.Error("a refused run did not count as a failure")
	}
	markerAbsent(t, marker)
}
