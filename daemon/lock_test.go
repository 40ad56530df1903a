package daemon

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/halb-lb/halb/config"
)

// A lock turns a second taker away naming the holder's pid, and is free
// again once released; a lock file left by a halb that was killed blocks
// nobody.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "halb.sock.lock")
	first, err := acquireLock(path, "control socket x", "fix it")
	if err != nil {
		t.Fatal(err)
	}
	_, err = acquireLock(path, "control socket x", "fix it")
	var locked *LockedError
	if !errors.As(err, &locked) || !errors.Is(err, ErrLocked) || locked.PID != os.Getpid() {
		t.Fatalf("second lock: %v, want a LockedError naming pid %d", err, os.Getpid())
	}
	if msg := err.Error(); !strings.Contains(msg, "halb pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(msg, "fix it") {
		t.Errorf("message %q names neither the holder nor the fix", msg)
	}
	first.release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("lock file still there after release: %v", err)
	}

	// A killed holder: a process that took the lock and was killed
	// leaves its file with its pid in it.
	// The shell locks the file as halb does (flock on an open file it
	// keeps), writes its pid, and becomes sleep: one process to kill.
	holder := exec.Command("sh", "-c", `exec 9<>"$0" && flock -n 9 && echo $$ >&9 && echo locked && exec sleep 60`, path)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatalf("flock(1): %v", err)
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("flock(1) never took the lock: %v", err)
	}
	if _, err := acquireLock(path, "x", "y"); !errors.As(err, &locked) || locked.PID != holder.Process.Pid {
		t.Fatalf("a lock another process holds: %v, want it named by pid %d", err, holder.Process.Pid)
	}
	_ = holder.Process.Kill()
	_ = holder.Wait()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the killed holder's file is gone: %v", err)
	}
	again, err := acquireLock(path, "x", "y")
	if err != nil {
		t.Fatalf("a lock file whose holder was killed blocks: %v", err)
	}
	again.release()

	// Not a regular file: refused, never written to.
	fifo := filepath.Join(t.TempDir(), "fifo.lock")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(fifo, "x", "y"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO as lock file: %v", err)
	}
	link := filepath.Join(t.TempDir(), "link.lock")
	if err := os.Symlink(filepath.Join(t.TempDir(), "target"), link); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(link, "x", "y"); err == nil {
		t.Error("a symbolic link as lock file was followed")
	}
}

// Two bpffs paths never share a lock file name.
func TestEscapePath(t *testing.T) {
	seen := map[string]string{}
	for _, p := range []string{"/sys/fs/bpf/halb", "/sys/fs/bpf/halb-a", "/sys/fs/bpf/halb/a", "/sys/fs/bpf-halb", "/sys/fs/bpf\\x2dhalb",
		"/a b", "/a\nb", "/" + strings.Repeat("x", 300), "/" + strings.Repeat("x", 301)} {
		e := escapePath(p)
		if strings.Contains(e, "/") || len(e) > 210 {
			t.Errorf("%q: %q is not a file name", p, e)
		}
		if other, ok := seen[e]; ok {
			t.Errorf("%q and %q both escape to %q", p, other, e)
		}
		seen[e] = p
	}
	if e := escapePath("/sys/fs/bpf/halb"); e != "-sys-fs-bpf-halb" {
		t.Errorf("escapePath = %q", e)
	}
}

// The control socket's directory and those above it belong to root (or
// halb's user) and nobody else can write them, but a sticky directory
// above, such as /tmp.
func TestCheckControlSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give directories away")
	}
	base := t.TempDir() // below /tmp: sticky, and allowed
	mk := func(name string, mode os.FileMode, uid int) string {
		t.Helper()
		p := filepath.Join(base, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const other = 64011
	good := mk("good", 0o755, 0)
	worldWritable := mk("ww", 0o777, 0)
	groupWritable := mk("gw", 0o775, 0)
	sticky := mk("sticky", 0o777|os.ModeSticky, 0)
	stickyChild := mk("sticky/child", 0o755, 0)
	theirs := mk("theirs", 0o755, other)
	openParent := mk("open", 0o777, 0)
	underOpen := mk("open/sub", 0o755, 0)
	linkToOpen := filepath.Join(good, "link")
	if err := os.Symlink(underOpen, linkToOpen); err != nil {
		t.Fatal(err)
	}
	theirLink := filepath.Join(good, "theirlink")
	if err := os.Symlink(good, theirLink); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(theirLink, other, other); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		socket string
		want   string // "" when accepted
	}{
		{filepath.Join(good, "halb.sock"), ""},
		{filepath.Join(good, "not/yet/made/halb.sock"), ""},
		{filepath.Join(stickyChild, "halb.sock"), ""},
		{filepath.Join(sticky, "halb.sock"), "chmod go-w " + sticky},
		{filepath.Join(sticky, "new/halb.sock"), ""}, // halb makes new, mode 0755
		{filepath.Join(worldWritable, "halb.sock"), "chmod go-w " + worldWritable},
		{filepath.Join(groupWritable, "halb.sock"), "writable by group or others (mode 0775)"},
		{filepath.Join(theirs, "halb.sock"), "owned by uid 64011"},
		{filepath.Join(theirs, "sub/halb.sock"), "owned by uid 64011"},
		{filepath.Join(underOpen, "halb.sock"), "chmod go-w " + openParent},
		{filepath.Join(linkToOpen, "halb.sock"), "chmod go-w " + openParent},
		{filepath.Join(theirLink, "halb.sock"), theirLink + " is owned by uid 64011"},
	} {
		err := CheckControlSocket("halb.yaml", &config.Config{Control: config.Control{Socket: tc.socket}})
		var cerr *config.Error
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.socket, err)
		case tc.want == "":
		case !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Path != "control.socket":
			t.Errorf("%s: %v, want a problem with control.socket", tc.socket, err)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", tc.socket, err, tc.want)
		}
	}
}
