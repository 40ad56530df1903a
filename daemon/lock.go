package daemon

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/trust"
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
	// Dead says why the pid in the file is not the holder ("halb pid 12
	// is not running"), and Other who holds the file open instead (from
	// /proc/locks), when the holder is no running halb.
	Dead, Other string
}

func (e *LockedError) Error() string {
	holder := "another halb"
	if e.PID > 0 {
		holder = "halb pid " + strconv.Itoa(e.PID)
	}
	if e.Other != "" {
		// The pid in the file is gone, yet the lock is held: whoever
		// holds it, it is no halb that this one should wait for.
		return fmt.Sprintf("%s is locked, but not by a running halb: %s; the lock file %s is held open by %s: %s, or stop that process",
			e.What, e.Dead, e.Lock, e.Other, e.Fix)
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
//
// The file is root's (or halb's user's) alone, mode 0600: a user who
// could open it could hold a lock on it, and keep every halb out. One
// that others can read is made private if halb owns it, and refused if
// it belongs to someone else; one that holds anything but a pid is
// someone's file at a path that happens to be halb's, and is left alone.
func acquireLock(path, what, fix string) (*lockFile, error) {
	// A halb that stops removes its lock file: one opened just before
	// that is a lock on a file nobody else will see. Try again then.
	for range 5 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock for %s: %w", what, err)
		}
		info, err := f.Stat()
		if err != nil || !info.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("lock for %s: %s is not a regular file; remove it", what, path)
		}
		if err := checkLockFile(f, info); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock for %s: %w", what, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			pid := readPID(f)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, lockedError(what, path, fix, pid, info)
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

// checkLockFile refuses a file at a lock's path that is not a halb lock
// (empty, or a pid and a newline) or that belongs to a user other than
// root and halb's, and takes read and write away from group and others on
// one of halb's own that has them (the 0644 of older halbs).
func checkLockFile(f *os.File, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", f.Name())
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, neither root nor halb's user: that user could hold it and keep halb out; remove it", f.Name(), st.Uid)
	}
	if info.Size() > 0 && !isPIDFile(f, info.Size()) {
		return fmt.Errorf("%s is there and is no halb lock file (it holds something other than a pid): halb leaves it alone; move it away, or choose another path", f.Name())
	}
	if info.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			return fmt.Errorf("make %s private (mode 0600): %w", f.Name(), err)
		}
	}
	return nil
}

// isPIDFile reports whether the file holds a pid and a newline, as halb
// writes it.
func isPIDFile(f *os.File, size int64) bool {
	if size > 32 {
		return false
	}
	buf := make([]byte, size)
	if n, _ := f.ReadAt(buf, 0); int64(n) != size {
		return false
	}
	s, ok := strings.CutSuffix(string(buf), "\n")
	if !ok {
		return false
	}
	_, err := strconv.ParseUint(s, 10, 31)
	return err == nil
}

// lockedError names who holds the lock on the file info describes: the
// halb whose pid is in it, or, when that pid is not running, the
// processes /proc/locks shows holding it, so that a process that only
// opened the file to keep halb out is named and not mistaken for halb.
func lockedError(what, path, fix string, pid int, info fs.FileInfo) *LockedError {
	e := &LockedError{What: what, Lock: path, PID: pid, Fix: fix}
	// /proc/locks names the halb that holds it; when it names nobody
	// (a holder in another pid namespace), a live pid is trusted.
	named := flockHolders(info)
	alive := pid > 0 && processAlive(pid)
	if alive && (len(named) == 0 || slices.Contains(named, pid)) {
		return e
	}
	holders := slices.DeleteFunc(named, func(p int) bool { return !processAlive(p) })
	switch {
	case alive:
		e.Dead = "halb pid " + strconv.Itoa(pid) + ", named in it, does not hold it"
	case pid > 0:
		e.Dead = "halb pid " + strconv.Itoa(pid) + ", named in it, is not running"
	default:
		e.Dead = "no halb pid is written in it"
	}
	e.Other = "a process halb cannot name"
	if len(holders) == 0 {
		// flock(1) takes the lock for the shell that keeps the file
		// open, and /proc/locks names flock's own pid, gone by now.
		holders = openers(info)
	}
	if len(holders) > 0 {
		var names []string
		for _, h := range holders {
			name := "pid " + strconv.Itoa(h)
			if comm, err := os.ReadFile("/proc/" + strconv.Itoa(h) + "/comm"); err == nil {
				name += " (" + strings.TrimSpace(string(comm)) + ")"
			}
			names = append(names, name)
		}
		e.Other = strings.Join(names, ", ")
	}
	return e
}

// openers lists the processes that have the file info describes open,
// from /proc/*/fd: the slow way, taken only to name who keeps halb out.
func openers(info fs.FileInfo) []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := "/proc/" + p.Name() + "/fd"
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if st, err := os.Stat(dir + "/" + fd.Name()); err == nil && os.SameFile(st, info) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// processAlive reports whether a process with the pid exists; one of
// another user's is alive too (EPERM).
func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// flockHolders lists the pids /proc/locks gives for flock locks on the
// file info describes: those that took them, which may have exited since
// (flock(1) takes one for its shell). A pid is 0 there for a holder in
// another pid namespace; those are left out.
func flockHolders(info fs.FileInfo) []int {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return nil
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), st.Ino) // Dev is 32 bits on some targets
	var pids []int
	for _, line := range strings.Split(string(data), "\n") {
		// "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"; a waiter's
		// line has "->" after the number.
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		pid, err := strconv.Atoi(f[4])
		if err != nil || pid <= 0 || f[5] != want || slices.Contains(pids, pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
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
	if err := makeLockDir(LockDir); err != nil {
		return nil, err
	}
	bpffs = filepath.Clean(bpffs)
	return acquireLock(filepath.Join(LockDir, "bpffs"+escapePath(bpffs)+".lock"), "datapath.bpffs "+bpffs,
		"stop that halb first, or give this one a datapath.bpffs of its own")
}

// makeLockDir makes the directory of the locks that are not beside the
// control socket, and checks that only root (or halb's user) can change
// it.
func makeLockDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("lock directory: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return fmt.Errorf("lock directory: %w", err)
	}
	return nil
}

// instanceKey is what makes a VRRP instance one virtual router on this
// host: two halbs that run the same one both act as its router, and each
// takes the VIPs from the other (RFC 5798 §5.2.3: the VRID names the
// router on its LAN, per address family).
type instanceKey struct {
	iface string
	vrid  int
	v6    bool
}

func keyOf(ic config.Instance) instanceKey {
	return instanceKey{iface: ic.Interface, vrid: ic.VRID, v6: ic.IPv6()}
}

func (k instanceKey) family() string {
	if k.v6 {
		return "IPv6"
	}
	return "IPv4"
}

// lockInstance takes the lock on the virtual router k in the network
// namespace netns (interfaces of one name in two namespaces are two
// LANs): one halb per virtual router. name is the instance's, for the
// message.
func lockInstance(dir, netns, name string, k instanceKey) (*lockFile, error) {
	if err := makeLockDir(dir); err != nil {
		return nil, err
	}
	file := fmt.Sprintf("vrrp-netns%s-%s-vrid%d-%s.lock", netns, escapePath(k.iface), k.vrid, strings.ToLower(k.family()))
	what := fmt.Sprintf("vrrp instance %s (interface %s, vrid %d, %s)", name, k.iface, k.vrid, k.family())
	return acquireLock(filepath.Join(dir, file), what,
		"stop that halb first, or give this instance a vrid of its own on that interface")
}

// netnsID names the network namespace halb runs in by the inode of its
// /proc/self/ns/net, which every process in it shares.
func netnsID() (string, error) {
	info, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return "", fmt.Errorf("network namespace: %w", err)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("network namespace: no inode for /proc/self/ns/net")
	}
	return strconv.FormatUint(st.Ino, 10), nil
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
// their state. It refuses a path the kernel cannot bind (longer than
// sun_path holds), and a path where something other than a socket is:
// halb replaces only a socket a killed halb left, never a file (a typo
// that names the config file must not delete it). halb check and halb run
// both call it. The error is a *config.Error naming control.socket.
func CheckControlSocket(file string, c *config.Config) error {
	problem := func(msg string) error {
		return &config.Error{File: file, Problems: []config.Problem{{Path: "control.socket", Msg: msg}}}
	}
	socket := c.Control.Socket
	if len(socket) > maxSocketPath {
		return problem(fmt.Sprintf("%s is %d bytes long; a unix socket's path holds at most %d (sun_path): choose a shorter path, such as the default /run/halb/halb.sock",
			socket, len(socket), maxSocketPath))
	}
	if err := checkPrivateDir(filepath.Dir(socket)); err != nil {
		return problem(err.Error())
	}
	if err := checkSocketPath(socket); err != nil {
		return problem(err.Error())
	}
	if err := checkLockPath(socket + ".lock"); err != nil {
		return problem(err.Error())
	}
	return nil
}

// checkLockPath refuses, as acquireLock would, a file at a lock's path
// that is not a halb lock file, so that halb check says so too.
func checkLockPath(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s, the control socket's lock, is %s: halb leaves it alone; give control.socket a path of its own", path, describeFile(info))
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if info.Size() > 0 && !isPIDFile(f, info.Size()) {
		return fmt.Errorf("%s, the control socket's lock, is there and is no halb lock file (it holds something other than a pid): halb leaves it alone; give control.socket a path of its own", path)
	}
	return nil
}

// maxSocketPath is the longest path a unix socket can be bound at: the
// 108 bytes of sun_path less the NUL that ends it.
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// checkSocketPath refuses a path where something other than a unix
// socket is, naming what is there; nothing, or a socket, is fine (the
// socket is one a killed halb left, or a running halb's, which its lock
// tells apart).
func checkSocketPath(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Mode().Type() == fs.ModeSocket {
		return nil
	}
	return fmt.Errorf("%s is %s, not a socket: halb replaces only a socket a killed halb left, and leaves this alone; give control.socket a path of its own, such as the default /run/halb/halb.sock", path, describeFile(info))
}

// describeFile says what kind of file info is, for a message.
func describeFile(info fs.FileInfo) string {
	if info.Mode().IsRegular() {
		return fmt.Sprintf("a regular file (%d bytes)", info.Size())
	}
	return trust.KindOf(info.Mode())
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
