package vrrp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
)

// procHost is the trackHost of this host: the track files as they are,
// the processes as the /proc mounted at proc shows them (halb's PID
// namespace).
type procHost struct{ proc string }

// maxCmdline bounds what is read of a process's command line: args
// longer than that together never match.
const maxCmdline = 64 << 10

// readTrackFile opens the file without blocking (O_NONBLOCK: a FIFO with
// no writer would hold open(2)) and reads only a regular file (/proc and
// /sys files are regular too): reading a FIFO would take what another
// reader was owed, and a device could give anything. Raw system calls,
// not os.File: Go's poller would wait on a FIFO's EAGAIN.
func (procHost) readTrackFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	buf := make([]byte, maxTrackFileSize+1)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

// countProcesses walks /proc once for all of ps: each process's comm, and
// its cmdline only when comm matches a tracker that needs it
// (processMatches). Processes, not threads: /proc lists thread group
// leaders only. A process that ends during the walk is not counted.
func (h procHost) countProcesses(ps []config.TrackProcess) ([]int, error) {
	dir, err := os.Open(h.proc)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	counts := make([]int, len(ps))
	comm := make([]byte, 64)
	for {
		ents, err := dir.ReadDir(512) // bounded memory however many processes
		for _, e := range ents {
			if _, perr := strconv.ParseUint(e.Name(), 10, 31); perr != nil {
				continue // not a process
			}
			h.countOne(filepath.Join(h.proc, e.Name()), ps, counts, comm)
		}
		if errors.Is(err, io.EOF) {
			return counts, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// countOne adds the process whose /proc directory is dir to the counts of
// the trackers it matches; comm is a scratch buffer.
func (procHost) countOne(dir string, ps []config.TrackProcess, counts []int, comm []byte) {
	n, err := readSmall(filepath.Join(dir, "comm"), comm)
	if err != nil {
		return
	}
	name := string(bytes.TrimSuffix(comm[:n], []byte("\n")))
	var argv []string
	cmdline := func() []string {
		if argv == nil {
			argv = readCmdline(filepath.Join(dir, "cmdline"))
		}
		return argv
	}
	for i, tp := range ps {
		if processMatches(tp, name, cmdline) {
			counts[i]++
		}
	}
}

// readSmall reads at most len(buf) bytes of path into buf.
func readSmall(path string, buf []byte) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Read(buf) // comm comes whole in one read
}

// readCmdline splits /proc/PID/cmdline into argv; empty for a kernel
// thread, a zombie, or a process gone.
func readCmdline(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{}
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, maxCmdline))
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return []string{}
	}
	parts := bytes.Split(b, []byte{0})
	argv := make([]string, len(parts))
	for i, p := range parts {
		argv[i] = string(p)
	}
	return argv
}
