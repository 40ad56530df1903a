package script

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// requireCgroups: the test is about runs in a cgroup of their own, which
// needs root and a writable cgroup v2.
func requireCgroups(t *testing.T) {
	t.Helper()
	netnstest.Require(t)
	sc, err := newScope()
	if err != nil {
		netnstest.SkipOrFail(t, "no cgroup v2 to run programs in: %v", err)
	}
	sc.end()
}

func newMarker(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	marker := "halb-escapee-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		for _, pid := range halbtest.MarkedPIDs(t, marker) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	return marker
}

// TestRunLeavesNothingBehind: a script whose child leaves its process
// group and session (setsid), ignores SIGTERM and keeps the output pipe
// open, as a notify script that starts a helper in the background would,
// leaves no process behind when Run returns, whether the script timed out
// or exited, and Run does not wait on the pipe the child holds. (Before,
// the child lived on as root, reparented to init, and held each Run for a
// second more.) No cgroup of the run is left either.
func TestRunLeavesNothingBehind(t *testing.T) {
	requireCgroups(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		tail    string // after the escapee is started
		timeout time.Duration
		want    error
	}{
		{"timed out", "trap '' TERM\nsleep 30\n", time.Second, ErrTimeout},
		{"exited", "echo done\nexit 0\n", 30 * time.Second, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := newMarker(t)
			prog := writeScript(t, filepath.Join(dir, "escape"), "#!/bin/sh\n"+
				"(setsid /bin/sh -c 'trap \"\" TERM; while :; do sleep 1; done' "+marker+" </dev/null &)\n"+
				// the escapee must be running before the script goes on
				"for i in $(seq 100); do pgrep -f "+marker+" >/dev/null && break; sleep 0.05; done\n"+
				tc.tail, 0o755)
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			out, err := Run(ctx, []string{prog}, nil)
			took := time.Since(start)
			if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
				t.Fatalf("Run: %q, %v; want %v", out, err, tc.want)
			}
			if pids := halbtest.MarkedPIDs(t, marker); len(pids) != 0 {
				t.Errorf("after Run returned, the script's escaped child still runs: pids %v", pids)
			}
			// Loose: a bound on the order of the timeout, far from the
			// escapee's life.
			if took > tc.timeout+10*time.Second {
				t.Errorf("Run took %s with a timeout of %s", took, tc.timeout)
			}
			t.Logf("Run took %s", took)
			base, err := ownCgroup()
			if err != nil {
				t.Fatal(err)
			}
			left, _ := filepath.Glob(filepath.Join(base, runPrefix+strconv.Itoa(os.Getpid())+"-*"))
			if len(left) != 0 {
				t.Errorf("cgroups of runs left behind: %v", left)
			}
		})
	}
}

// TestStaleRunsEnded: the runs of a halb that died mid-run (SIGKILL, no
// systemd to kill its cgroup) still run as root in their cgroups; the
// next halb ends them and removes the cgroups, and leaves alone the
// cgroups of a halb that is alive.
func TestStaleRunsEnded(t *testing.T) {
	requireCgroups(t)
	base, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	// A pid no process has: one this test started and reaped.
	dead := 0
	for range 10 {
		c := exec.Command("/bin/true")
		if err := c.Run(); err != nil {
			t.Fatal(err)
		}
		if unix.Kill(c.Process.Pid, 0) == unix.ESRCH {
			dead = c.Process.Pid
			break
		}
	}
	if dead == 0 {
		t.Fatal("no dead pid found")
	}
	marker := newMarker(t)
	start := func(dir string) *exec.Cmd {
		t.Helper()
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			for range 100 {
				if err := unix.Rmdir(dir); err != unix.EBUSY {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		c := exec.Command("/bin/sh", "-c", "while :; do sleep 1; done", marker)
		c.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	staleDir := filepath.Join(base, fmt.Sprintf("%s%d-1", runPrefix, dead))
	liveDir := filepath.Join(base, fmt.Sprintf("%s%d-1", runPrefix, os.Getppid())) // the go command: alive
	stale, live := start(staleDir), start(liveDir)
	defer func() { _ = live.Process.Kill(); _ = live.Wait() }()

	removeStale(base)
	waited := make(chan error, 1)
	go func() { waited <- stale.Wait() }()
	select {
	case err := <-waited:
		if err == nil {
			t.Errorf("the stale run exited by itself, want it killed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stale run still runs 10s after removeStale")
	}
	if _, err := os.Stat(staleDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale cgroup %s: %v, want it removed", staleDir, err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("a live halb's cgroup %s was touched: %v", liveDir, err)
	}
	if err := live.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a live halb's run was killed: %v", err)
	}
}
