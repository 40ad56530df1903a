package script

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A process group is not enough to end everything a script started: a
// child can leave it (setsid, setpgid) and live on as root after the run,
// and after halb, holding the output pipe open meanwhile. A cgroup cannot
// be left that way (only by writing another cgroup's cgroup.procs), so
// each run gets a cgroup v2 of its own, below halb's, where cgroup v2 is
// mounted writable: the program is started straight into it
// (CLONE_INTO_CGROUP, so not even its first instructions run outside),
// and at the end of the run cgroup.kill ends all of it at once, then the
// empty cgroup is removed. Under systemd, halb.service sets Delegate=yes
// so that the cgroups below halb's are halb's to make (systemd kills them
// with the unit on stop either way).
//
// Where there is no writable cgroup v2 (cgroup v1 only, a read-only
// mount), a run falls back to its process group, logged once: a process
// that leaves the group then outlives the run.

// cgroupWait bounds the wait for a killed cgroup to empty. SIGKILL is not
// caught, so only a process stuck in the kernel (D state) takes longer;
// its cgroup is then left, logged, rather than Run held.
const cgroupWait = 2 * time.Second

var (
	runSeq       atomic.Uint64
	fallbackOnce sync.Once
	staleOnce    sync.Once
)

// runPrefix names a run's cgroup, followed by halb's pid and a sequence
// number.
const runPrefix = "halb-run-"

// removeStale ends the runs a halb that is gone left behind (killed with
// SIGKILL mid-run, without systemd to kill its cgroup): their programs
// still run as root, in cgroups of their own. Only cgroups named for a pid
// that no process has now are touched: another halb in the same cgroup
// keeps its runs.
func removeStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, runPrefix+"*-*"))
	for _, dir := range dirs {
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(dir), runPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		slog.Warn("ending the runs a halb that is gone left behind", "cgroup", dir, "pid", pid)
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		(&scope{dir: dir, fd: fd}).end()
	}
}

// scope is the cgroup of one run.
type scope struct {
	dir string
	fd  int // the directory, for CLONE_INTO_CGROUP
}

// newScope makes the cgroup for one run under halb's own, or says why it
// cannot (then the run uses its process group alone).
func newScope() (*scope, error) {
	dir, err := mkRunDir(false)
	if errors.Is(err, unix.ENOENT) {
		// halb's cgroup moved (a service manager migrated it): find it
		// again.
		dir, err = mkRunDir(true)
	}
	if err != nil {
		return nil, err
	}
	// cgroup.kill came in Linux 5.14, after CLONE_INTO_CGROUP (5.7): with
	// it, both are there.
	if err := unix.Access(filepath.Join(dir, "cgroup.kill"), unix.W_OK); err != nil {
		_ = unix.Rmdir(dir)
		return nil, fmt.Errorf("%s has no cgroup.kill (Linux before 5.14): %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = unix.Rmdir(dir)
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &scope{dir: dir, fd: fd}, nil
}

// cgroupBase caches ownCgroup, which reads mountinfo (long on a host with
// many mounts), for the runs after the first.
var cgroupBase struct {
	sync.Mutex
	dir string
}

// mkRunDir makes the cgroup directory of one run below halb's cgroup,
// looked up again if fresh.
func mkRunDir(fresh bool) (string, error) {
	cgroupBase.Lock()
	base := cgroupBase.dir
	if base == "" || fresh {
		var err error
		if base, err = ownCgroup(); err != nil {
			cgroupBase.Unlock()
			return "", err
		}
		cgroupBase.dir = base
	}
	cgroupBase.Unlock()
	staleOnce.Do(func() { removeStale(base) })
	dir := filepath.Join(base, fmt.Sprintf("%s%d-%d", runPrefix, os.Getpid(), runSeq.Add(1)))
	if err := unix.Mkdir(dir, 0o755); err != nil {
		return "", &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	return dir, nil
}

// fellBack logs, once per daemon, that runs are not contained by a
// cgroup.
func fellBack(err error) {
	fallbackOnce.Do(func() {
		slog.Warn("programs run without a cgroup of their own: a process a script starts that leaves its process group (setsid) outlives the run",
			"reason", err.Error(), "fix", "mount cgroup v2 writable for root (under systemd: Delegate=yes in halb.service)")
	})
}

// kill ends every process in the cgroup, in one step that a fork cannot
// race.
func (s *scope) kill() error {
	return os.WriteFile(filepath.Join(s.dir, "cgroup.kill"), []byte("1"), 0)
}

// populated: a process is still in the cgroup.
func (s *scope) populated() bool {
	b, err := os.ReadFile(filepath.Join(s.dir, "cgroup.events"))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte("populated 1"))
}

// end kills what is left in the cgroup, waits (boundedly) for it to empty
// and removes it.
func (s *scope) end() {
	unix.Close(s.fd)
	if err := s.kill(); err != nil {
		slog.Warn("cannot kill a program's cgroup", "cgroup", s.dir, "err", err.Error())
	}
	deadline := time.Now().Add(cgroupWait)
	delay := 100 * time.Microsecond
	for {
		err := unix.Rmdir(s.dir)
		if err == nil || err == unix.ENOENT {
			return
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			slog.Warn("cannot remove a program's cgroup", "cgroup", s.dir, "populated", s.populated(), "err", err.Error())
			return
		}
		time.Sleep(delay)
		delay = min(2*delay, 10*time.Millisecond)
	}
}

// ownCgroup is the directory of halb's own cgroup v2: its path in
// /proc/self/cgroup (the "0::" line) under the cgroup2 mount that shows
// it.
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var own string
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own, found = p, true
		}
	}
	if !found {
		return "", errors.New("no cgroup v2 hierarchy (cgroup v1 only)")
	}
	if strings.HasSuffix(own, " (deleted)") || !strings.HasPrefix(own, "/") {
		return "", fmt.Errorf("halb's cgroup %q cannot be used", own)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "rw") {
			continue
		}
		root, mnt := unescape(fields[3]), unescape(fields[4])
		rel, ok := strings.CutPrefix(own, root)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/") && root != "/") {
			continue
		}
		return filepath.Join(mnt, rel), nil
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("no writable cgroup2 mount shows halb's cgroup %s", own)
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
