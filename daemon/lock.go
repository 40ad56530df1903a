package daemon

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
)

// LockDir holds the locks on bpffs paths: bpffs holds no regular files, so
// the lock on one lives here, named after the path. A test may point it
// elsewhere before Run.
var LockDir = "/run/halb"

// ErrLocked is what a lock another halb holds returns (errors.Is); the
// *LockedError says which halb.
var ErrLocked = errors.New("in use by another halb")

// LockedError is a control socket or bpffs path another halb holds.
type LockedError struct {
	What string // "control socket /run/halb/halb.sock"
	Lock string // the lock file
	PID  int    // the holder, 0 when it has not written its pid yet
	Fix  string
}

func (e *LockedError) Error() string {
	holder := "another halb"
	if e.PID > 0 {
		holder = "halb pid " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("%s is in use by %s (lock %s): %s", e.What, holder, e.Lock, e.Fix)
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lockFile is an exclusive flock held for the life of the daemon. flock
// goes with the process, so a file a killed halb left behind blocks
// nobody; the holder's pid is in the file for the message of the halb it
// turns away.
type lockFile struct {
	path string
	f    *os.File
}

// acquireLock takes the lock at path without waiting. what and fix are for
// the message when another halb holds it.
func acquireLock(path, what, fix string) (*lockFile, error) {
	// A halb that stops removes its lock file: one opened just before
	// that is a lock on a file nobody else will see. Try again then.
	for range 5 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock for %s: %w", what, err)
		}
		info, err := f.Stat()
		if err != nil || !info.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("lock for %s: %s is not a regular file; remove it", what, path)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			pid := readPID(f)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &LockedError{What: what, Lock: path, PID: pid, Fix: fix}
			}
			return nil, fmt.Errorf("lock for %s: flock %s: %w", what, path, err)
		}
		if now, err := os.Lstat(path); err != nil || !os.SameFile(info, now) {
			f.Close()
			continue
		}
		err = f.Truncate(0)
		if err == nil {
			_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock for %s: write pid to %s: %w", what, path, err)
		}
		return &lockFile{path: path, f: f}, nil
	}
	return nil, fmt.Errorf("lock for %s: %s keeps being replaced; is a halb starting and stopping in a loop?", what, path)
}

func readPID(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// release removes the lock file, while still holding the lock so that no
// other halb takes a lock on the file being removed, then lets go.
func (l *lockFile) release() {
	if l == nil {
		return
	}
	if info, err := l.f.Stat(); err == nil {
		if now, err := os.Lstat(l.path); err == nil && os.SameFile(info, now) {
			_ = os.Remove(l.path)
		}
	}
	l.f.Close()
}

// lockControl takes the lock beside the control socket: one halb per
// socket. The directory has passed checkPrivateDir.
func lockControl(socket string) (*lockFile, error) {
	return acquireLock(socket+".lock", "control socket "+socket,
		"stop that halb first, or give this one a control.socket of its own")
}

// lockBPFFS takes the lock on a bpffs path: one halb per set of pins.
func lockBPFFS(bpffs string) (*lockFile, error) {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	if err := checkPrivateDir(LockDir); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	bpffs = filepath.Clean(bpffs)
	return acquireLock(filepath.Join(LockDir, "bpffs"+escapePath(bpffs)+".lock"), "datapath.bpffs "+bpffs,
		"stop that halb first, or give this one a datapath.bpffs of its own")
}

// escapePath names a path in one file name, as systemd names mount units:
// "/" becomes "-", and anything else outside [A-Za-z0-9_.] is escaped, so
// that two paths never share a name. A path too long for a file name is
// named by its hash.
func escapePath(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	if b.Len() > 200 {
		h := fnv.New64a()
		h.Write([]byte(p))
		return fmt.Sprintf("-hash-%016x", h.Sum64())
	}
	return b.String()
}

// CheckControlSocket refuses a control socket in a directory that a user
// other than root (or halb's own user) could change: there they could put
// a socket of their own in halb's place, and `halb status` would show
// their state. halb check and halb run both call it. The error is a
// *config.Error naming control.socket.
func CheckControlSocket(file string, c *config.Config) error {
	if err := checkPrivateDir(filepath.Dir(c.Control.Socket)); err != nil {
		return &config.Error{File: file, Problems: []config.Problem{{Path: "control.socket", Msg: err.Error()}}}
	}
	return nil
}

// checkPrivateDir checks the directory dir and every directory above it,
// through symbolic links: each is owned by root or by halb's effective
// user; dir itself is writable by nobody else, and a directory above it
// only when its sticky bit keeps others from renaming what they do not
// own (as /tmp's does). A dir that does not exist yet is checked from
// its nearest ancestor: halb makes the rest, mode 0755.
func checkPrivateDir(dir string) error {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%s is not an absolute path", dir)
	}
	existing := dir
	for {
		_, err := os.Lstat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		existing = filepath.Dir(existing)
	}
	strict := existing == dir
	if err := checkChain(existing, strict); err != nil {
		return err
	}
	// The directories the kernel goes through, when a link is on the way.
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return err
	}
	if real != existing {
		return checkChain(real, strict)
	}
	return nil
}

// checkChain checks path and each directory above it, without following
// links: a link is judged by its owner (its parent, checked too, keeps
// others from replacing it); where it leads is checkPrivateDir's second
// pass.
func checkChain(path string, strictLast bool) error {
	euid := os.Geteuid()
	for p := path; ; p = filepath.Dir(p) {
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner information", p)
		}
		if st.Uid != 0 && int(st.Uid) != euid {
			return fmt.Errorf("%s is owned by uid %d, neither root nor halb's user: that user could put a socket of their own in halb's place; chown root %s, or use a directory root owns such as the default /run/halb", p, st.Uid, p)
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
		case !info.IsDir():
			return fmt.Errorf("%s is not a directory", p)
		case info.Mode().Perm()&0o022 != 0 && (p == path && strictLast || info.Mode()&fs.ModeSticky == 0):
			return fmt.Errorf("%s is writable by group or others (mode %04o): another user could put a socket of their own in halb's place; chmod go-w %s, or use a directory only root can write such as the default /run/halb", p, info.Mode().Perm(), p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
