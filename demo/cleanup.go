package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/loader"
)

// Everything the demo makes is named so that it can be found again, by
// this run or by the next one after a crash: namespaces halbdemo-*, and
// stateDir with the configs, logs, control sockets and the bpf
// filesystem the nodes pin to.
const (
	prefix   = "halbdemo-"
	stateDir = "/run/halbdemo"
	netnsDir = "/run/netns" // where `ip netns` and the netns package name namespaces
)

// lock makes sure one demo runs at a time: two would sweep each other's
// namespaces away. The lock is an abstract unix socket, which the kernel
// releases when the process ends, however it ends.
func lock() (func(), error) {
	ln, err := net.Listen("unix", "@"+prefix+"lock")
	if err != nil {
		return nil, fmt.Errorf("another halb demo is running (it holds the abstract socket @%slock); wait for it to end: %w", prefix, err)
	}
	return func() { ln.Close() }, nil
}

// mountBPFFS gives the nodes a bpf filesystem of the demo's own, so that
// nothing is pinned where the host's own programs live.
func mountBPFFS() error {
	dir := filepath.Join(stateDir, "bpffs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpf filesystem on %s: %w", dir, err)
	}
	return nil
}

// sweep removes whatever a demo left: processes in its namespaces,
// pinned programs and maps, the bpf filesystem, the namespaces (and with
// them every veth and the bridge) and stateDir. It runs at the start, for
// what a crashed run left, and at the end; it can run any number of
// times.
func sweep() error {
	var errs []error
	names, err := namespaces()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := killIn(filepath.Join(netnsDir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	bpffs := filepath.Join(stateDir, "bpffs")
	if entries, err := os.ReadDir(bpffs); err == nil {
		for _, e := range entries {
			if !e.IsDir() {
				continue // the kernel's own maps.debug and progs.debug
			}
			// Detaches the XDP programs and removes the pins of a node
			// that did not stop by itself: `halb run --cleanup` does the
			// same on SIGTERM.
			if err := loader.RemovePinned(filepath.Join(bpffs, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if onBPFFS(bpffs) {
		if err := unix.Unmount(bpffs, 0); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", bpffs, err))
		}
	}
	for _, name := range names {
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("delete network namespace %s (try: ip netns delete %s): %w", name, name, err))
		}
	}
	if !onBPFFS(bpffs) {
		if err := os.RemoveAll(stateDir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", stateDir, err))
		}
	}
	return errors.Join(errs...)
}

// leftOver reports whether anything of a demo is there to sweep.
func leftOver() bool {
	names, _ := namespaces()
	_, err := os.Stat(stateDir)
	return len(names) > 0 || err == nil
}

// namespaces lists the demo's named network namespaces.
func namespaces() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// killIn kills every process that runs in the namespace bound at path,
// and waits (a bounded time) until they are gone. The demo's own
// processes have been stopped politely before; these are what a crashed
// run left.
func killIn(path string) error {
	var ns unix.Stat_t
	if err := unix.Stat(path, &ns); err != nil {
		return nil // gone already
	}
	pids := func() []int {
		var pids []int
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) == nil && st.Dev == ns.Dev && st.Ino == ns.Ino {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left := pids()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in %s do not die; kill them and run the demo again", left, path)
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}
