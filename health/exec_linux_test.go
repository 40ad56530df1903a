package health

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// writeScript writes an executable shell script into dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func runExec(t *testing.T, argv []string, timeout time.Duration) error {
	t.Helper()
	c, err := NewChecker(config.HealthCheck{Type: "exec", Command: argv})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Check(ctx, Key{Service: "dns", Backend: netip.MustParseAddrPort("198.51.100.21:53")})
}

func TestExec(t *testing.T) {
	dir := t.TempDir()
	ok := writeScript(t, dir, "ok", "exit 0\n")
	fail := writeScript(t, dir, "fail", "echo 'resolver says:' >&2\necho SERVFAIL\nexit 3\n")
	env := writeScript(t, dir, "env", `[ "$HALB_SERVICE" = dns ] && [ "$HALB_BACKEND_ADDRESS" = 198.51.100.21 ] && [ "$HALB_BACKEND_PORT" = 53 ] && exit 0
echo "got $HALB_SERVICE $HALB_BACKEND_ADDRESS $HALB_BACKEND_PORT"; exit 1
`)
	args := writeScript(t, dir, "args", `[ "$#" = 2 ] && [ "$1" = "a b" ] && [ "$2" = '$HOME;true' ] && exit 0
echo "argv: $*"; exit 1
`)

	if err := runExec(t, []string{ok}, 5*time.Second); err != nil {
		t.Errorf("exit 0: %v", err)
	}
	err := runExec(t, []string{fail}, 5*time.Second)
	var exitErr interface{ ExitCode() int }
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Errorf("exit 3: %v, want an exit error with code 3", err)
	} else if want := "exit status 3: resolver says: SERVFAIL"; err.Error() != want {
		t.Errorf("exit 3: %q, want %q (output on one line)", err, want)
	}
	if err := runExec(t, []string{env}, 5*time.Second); err != nil {
		t.Errorf("environment: %v", err)
	}
	// No shell: the arguments arrive as given.
	if err := runExec(t, []string{args, "a b", "$HOME;true"}, 5*time.Second); err != nil {
		t.Errorf("arguments: %v", err)
	}
	if err := runExec(t, []string{filepath.Join(dir, "missing")}, 5*time.Second); err == nil || !strings.HasPrefix(err.Error(), "start ") {
		t.Errorf("missing command: %v, want a start error", err)
	}
}

// TestExecKillsGroupAtTimeout: a check that hangs, with a child that would
// outlive it, ends at the timeout with both killed.
func TestExecKillsGroupAtTimeout(t *testing.T) {
	dir := t.TempDir()
	hang := writeScript(t, dir, "hang", `sleep 1000 &
echo $! > "$1/child"
echo $$ > "$1/parent"
sleep 1000
`)
	start := time.Now()
	err := runExec(t, []string{hang, dir}, 2*time.Second)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("hanging check: %v, want a timeout error", err)
	}
	// Bounded: without the group kill the sleeps hold the output pipe and
	// the check would last until they end.
	if took > 30*time.Second {
		t.Errorf("hanging check took %s", took)
	}
	group := readPid(t, filepath.Join(dir, "parent")) // the leader: its pid is the group id
	for _, who := range []string{"parent", "child"} {
		if pid := readPid(t, filepath.Join(dir, who)); !gone(pid) {
			t.Errorf("%s (pid %d) still runs after the timeout", who, pid)
			_ = syscall.Kill(-group, syscall.SIGKILL)
		}
	}
}

// TestExecReapsStragglers: a check that succeeds but leaves a background
// child behind returns at once, and the child is killed.
func TestExecReapsStragglers(t *testing.T) {
	dir := t.TempDir()
	leave := writeScript(t, dir, "leave", `sleep 1000 &
echo $! > "$1/child"
echo $$ > "$1/parent"
exit 0
`)
	start := time.Now()
	if err := runExec(t, []string{leave, dir}, 20*time.Second); err != nil {
		t.Fatalf("check: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("check took %s: it waited for its background child", took)
	}
	if pid := readPid(t, filepath.Join(dir, "child")); !gone(pid) {
		t.Errorf("background child (pid %d) still runs", pid)
		_ = syscall.Kill(-readPid(t, filepath.Join(dir, "parent")), syscall.SIGKILL)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the script did not record its pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// gone waits (boundedly) for pid to be dead: no such process, or a zombie
// that its new parent has not reaped yet.
func gone(pid int) bool {
	for range 100 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		// pid (comm) S ...: the state follows the last ')'.
		if s := string(b); strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z") {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
