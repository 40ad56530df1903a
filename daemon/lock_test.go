package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/trust/trusttest"
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

// Something other than a socket at control.socket (the config file, by a
// typo) is refused by CheckControlSocket and by listenControl, naming the
// path and what is there, and is left as it was; so is a file at the
// socket's lock path that is no halb lock. A socket a killed halb left is
// replaced; one that something answers on is not.
func TestControlSocketPathTaken(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "halb.yaml")
	const content = "vrrp: {}\n"
	if err := os.WriteFile(conf, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	notLock := filepath.Join(dir, "other.sock")
	if err := os.WriteFile(notLock+".lock", []byte("my notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ socket, want string }{
		{conf, conf + " is a regular file (9 bytes), not a socket"},
		{sub, sub + " is a directory, not a socket"},
		{notLock, notLock + ".lock, the control socket's lock, is there and is no halb lock file"},
	} {
		err := CheckControlSocket("halb.yaml", &config.Config{Control: config.Control{Socket: tc.socket}})
		var cerr *config.Error
		if !errors.As(err, &cerr) || cerr.Problems[0].Path != "control.socket" || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckControlSocket(%s) = %v, want a control.socket problem with %q", tc.socket, err, tc.want)
		}
	}
	if _, err := listenControl(conf); err == nil || !strings.Contains(err.Error(), conf+" is a regular file") {
		t.Errorf("listenControl on a regular file: %v, want it refused naming the file", err)
	}
	if _, err := acquireLock(notLock+".lock", "control socket "+notLock, "fix"); err == nil || !strings.Contains(err.Error(), "no halb lock file") {
		t.Errorf("acquireLock on someone's file: %v, want it refused", err)
	}
	if got, err := os.ReadFile(conf); err != nil || string(got) != content {
		t.Errorf("the file at control.socket is now %q (%v), want it untouched", got, err)
	}
	if got, err := os.ReadFile(notLock + ".lock"); err != nil || string(got) != "my notes\n" {
		t.Errorf("the file at the lock's path is now %q (%v), want it untouched", got, err)
	}
	if info, err := os.Stat(sub); err != nil || !info.IsDir() {
		t.Errorf("the directory at control.socket: %v", err)
	}

	// A socket a killed halb left: replaced.
	sock := filepath.Join(dir, "halb.sock")
	left, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	left.(*net.UnixListener).SetUnlinkOnClose(false)
	left.Close()
	if err := CheckControlSocket("halb.yaml", &config.Config{Control: config.Control{Socket: sock}}); err != nil {
		t.Errorf("a stale socket: %v", err)
	}
	ln, err := listenControl(sock)
	if err != nil {
		t.Fatalf("a stale socket is not replaced: %v", err)
	}
	// One that answers: not removed.
	if _, err := listenControl(sock); err == nil || !strings.Contains(err.Error(), "is answered by a process") {
		t.Errorf("a socket that answers: %v, want it refused", err)
	}
	if info, err := os.Lstat(sock); err != nil || info.Mode().Type() != os.ModeSocket {
		t.Errorf("the answering socket is gone: %v", err)
	}
	ln.Close()
}

// A path longer than sun_path holds passes no check: it would fail at
// bind with EINVAL.
func TestControlSocketPathTooLong(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{107, 108} {
		sock := filepath.Join(dir, strings.Repeat("s", n-len(dir)-1))
		if len(sock) != n {
			t.Fatalf("path of %d bytes, want %d", len(sock), n)
		}
		err := CheckControlSocket("halb.yaml", &config.Config{Control: config.Control{Socket: sock}})
		switch {
		case n <= 107 && err != nil:
			t.Errorf("%d bytes: %v", n, err)
		case n <= 107:
			ln, err := listenControl(sock)
			if err != nil {
				t.Errorf("%d bytes passed the check, then: %v", n, err)
			} else {
				ln.Close()
			}
		case err == nil || !strings.Contains(err.Error(), "at most 107 (sun_path)"):
			t.Errorf("%d bytes: %v, want it refused naming the limit", n, err)
		}
	}
}

// A local user cannot keep halb from starting by holding its lock file:
// the file is 0600, an older halb's 0644 one is made private, one of
// another user is refused, and a lock held by someone other than the
// halb whose pid is in the file is reported as such, naming the holder.
func TestLockFileStranger(t *testing.T) {
	stranger := trusttest.NewStranger(t)
	_, dir := trusttest.OpenDir(t, 0o755)
	path := filepath.Join(dir, "halb.sock.lock")
	l, err := acquireLock(path, "control socket x", "fix it")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode: %v %v, want 0600", info.Mode(), err)
	}
	if out, err := stranger.Sh(`exec 9<"` + path + `"`); err == nil {
		t.Errorf("a stranger opened the lock file: %s", out)
	}
	l.release()

	// What a halb killed before this fix left: its pid, now dead, in a
	// file others can read, which a stranger opened and holds.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := strconv.Itoa(dead.Process.Pid)
	if err := os.WriteFile(path, []byte(deadPID+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(stranger.UID)
	holder := exec.Command("setpriv", "--reuid="+id, "--regid="+id, "--clear-groups", "--",
		"/bin/sh", "-c", `exec 9<"$0" && flock -s -n 9 && echo locked && exec sleep 60`, path)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("the stranger never took the lock: %v", err)
	}
	// The shell has printed "locked"; the holder is named once it has
	// become sleep.
	comm := fmt.Sprintf("/proc/%d/comm", holder.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(comm); string(b) == "sleep\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stranger's shell never became sleep")
		}
	}
	_, err = acquireLock(path, "control socket x", "fix it")
	want := []string{"halb pid " + deadPID + ", named in it, is not running",
		"held open by pid " + strconv.Itoa(holder.Process.Pid) + " (sleep)", path}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("lock held by a stranger: %v, want %q", err, w)
		}
	}
	if err != nil && strings.Contains(err.Error(), "in use by halb pid") {
		t.Errorf("a dead pid named as the holder: %v", err)
	}
	// A live pid in the file (a pid reused since) that does not hold
	// the lock is not named as the holder either.
	self := strconv.Itoa(os.Getpid())
	if err := os.WriteFile(path, []byte(self+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = acquireLock(path, "control socket x", "fix it")
	for _, w := range []string{"halb pid " + self + ", named in it, does not hold it", "held open by pid " + strconv.Itoa(holder.Process.Pid)} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("lock held by a stranger, a live pid in the file: %v, want %q", err, w)
		}
	}
	_ = holder.Process.Kill()
	_ = holder.Wait()
	l, err = acquireLock(path, "control socket x", "fix it")
	if err != nil {
		t.Fatalf("after the stranger let go: %v", err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("an older halb's lock file: mode %v %v, want it made 0600", info.Mode(), err)
	}
	l.release()

	// One a stranger owns (made before the directory was root's alone).
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, stranger.UID, stranger.UID); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(path, "control socket x", "fix it"); err == nil || !strings.Contains(err.Error(), "owned by uid "+id) {
		t.Errorf("a lock file a stranger owns: %v, want it refused", err)
	}
}
