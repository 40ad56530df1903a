package nsthread_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/internal/nsthread"
)

// The main goroutine keeps the main thread: the runtime cannot end that
// thread, so a step that ran on it and lost its way would be parked, not
// ended, and the tests below look for the thread's end.
func init() { runtime.LockOSThread() }

var seq atomic.Uint64

func name() string { return fmt.Sprintf("halbtest-nsthread-%d-%d", os.Getpid(), seq.Add(1)) }

// netnsOf is the network namespace a thread of this process is in.
func netnsOf(tid string) (string, error) {
	return os.Readlink(filepath.Join("/proc/self/task", tid, "ns/net"))
}

// strays lists this process's threads whose network namespace is not
// want.
func strays(t *testing.T, want string) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		ns, err := netnsOf(task.Name())
		if err != nil {
			continue // the thread ended meanwhile
		}
		if ns != want {
			out = append(out, task.Name()+" in "+ns)
		}
	}
	return out
}

// waitThreadEnds fails t unless thread tid of this process ends: a
// thread the runtime got back would live on, idle, for later goroutines.
func waitThreadEnds(t *testing.T, tid int) {
	t.Helper()
	path := filepath.Join("/proc/self/task", strconv.Itoa(tid))
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
	}
	ns, _ := netnsOf(strconv.Itoa(tid))
	t.Fatalf("thread %d, whose namespace could not be restored, still runs (in %s): the runtime has it back", tid, ns)
}

// NewNamed fails for a name that is taken, after netns.NewNamed has
// already moved its thread into a fresh namespace: that thread must go
// back before anyone else runs on it.
func TestNewNamedThatFailsLeavesNoThreadElsewhere(t *testing.T) {
	netnstest.Require(t)
	home, err := netnsOf(strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	n := name()
	h, err := nsthread.NewNamed(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); _ = netns.DeleteNamed(n) })
	for range 20 { // each on a thread the runtime may hand on
		if _, err := nsthread.NewNamed(n); err == nil {
			t.Fatalf("NewNamed(%s) twice succeeded", n)
		}
	}
	if s := strays(t, home); len(s) > 0 {
		t.Fatalf("threads left outside the process's namespace %s: %v", home, s)
	}
}

// A thread that cannot go back to its namespace after Do is discarded,
// not unlocked: it ends with its goroutine.
func TestDoDiscardsThreadItCannotRestore(t *testing.T) {
	ns := netnstest.New(t)
	var tid atomic.Int64
	undo := nsthread.FailRestore(func() { tid.Store(int64(unix.Gettid())) })
	ran := false
	err := nsthread.Do(ns.Handle(), func() error { ran = true; return nil })
	undo()
	if !ran || !errors.Is(err, nsthread.ErrThreadLost) {
		t.Fatalf("Do with a failing restore: ran %v, error %v; want ErrThreadLost", ran, err)
	}
	waitThreadEnds(t, int(tid.Load()))
}

// Likewise for the thread NewNamed moves; and the namespace it made is
// not left behind under its name.
func TestNewNamedDiscardsThreadItCannotRestore(t *testing.T) {
	netnstest.Require(t)
	var tid atomic.Int64
	undo := nsthread.FailRestore(func() { tid.Store(int64(unix.Gettid())) })
	n := name()
	h, err := nsthread.NewNamed(n)
	undo()
	if err == nil {
		h.Close()
		_ = netns.DeleteNamed(n)
		t.Fatal("NewNamed succeeded with a failing restore")
	}
	if !errors.Is(err, nsthread.ErrThreadLost) {
		t.Errorf("NewNamed with a failing restore: %v, want ErrThreadLost", err)
	}
	if h.IsOpen() {
		t.Error("NewNamed returned an open handle with its error")
	}
	if _, err := os.Stat(filepath.Join("/run/netns", n)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/netns/%s left behind: %v", n, err)
	}
	waitThreadEnds(t, int(tid.Load()))
}

// A step's error comes back as it is, and the thread goes home.
func TestDoReturnsStepError(t *testing.T) {
	ns := netnstest.New(t)
	want := errors.New("boom")
	var in string
	err := nsthread.Do(ns.Handle(), func() error {
		in, _ = os.Readlink("/proc/thread-self/ns/net")
		return want
	})
	if !errors.Is(err, want) || errors.Is(err, nsthread.ErrThreadLost) {
		t.Fatalf("Do error = %v, want %v alone", err, want)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Handle()), &st); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", st.Ino); in != want {
		t.Errorf("the step ran in %s, want %s", in, want)
	}
}

// home is the network namespace of the process's main thread.
func home(t *testing.T) string {
	t.Helper()
	ns, err := netnsOf(strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// DoThrowaway runs its step in a namespace of its own, which has nothing
// but lo, and brings the thread home afterwards.
func TestDoThrowawayRunsInAFreshNamespace(t *testing.T) {
	netnstest.Require(t)
	h := home(t)
	var in string
	var ifs []net.Interface
	err := nsthread.DoThrowaway(func() (err error) {
		in, _ = os.Readlink("/proc/thread-self/ns/net")
		ifs, err = net.Interfaces()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if in == "" || in == h {
		t.Errorf("the step ran in %q, want a namespace other than the process's %s", in, h)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" {
		t.Errorf("the throwaway namespace has links %v, want only lo", ifs)
	}
	if s := strays(t, h); len(s) > 0 {
		t.Fatalf("threads left outside the process's namespace %s: %v", h, s)
	}
}

// A step whose thread cannot get into its namespace does not run; the
// error says what was tried, and the thread, which never moved, goes back
// to the pool (it is not lost).
func TestStepThatCannotEnterDoesNotRun(t *testing.T) {
	netnstest.Require(t)
	h := home(t)
	for _, tc := range []struct {
		name string
		do   func(func() error) error
		op   string
	}{
		{"Do on a closed handle", func(fn func() error) error { return nsthread.Do(netns.None(), fn) }, "enter network namespace"},
		{"DoThrowaway without CAP_SYS_ADMIN", func(fn func() error) error {
			undo := nsthread.FailUnshare()
			defer undo()
			return nsthread.DoThrowaway(fn)
		}, "unshare network namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			err := tc.do(func() error { ran = true; return nil })
			var enter *nsthread.EnterError
			if ran || !errors.As(err, &enter) || errors.Is(err, nsthread.ErrThreadLost) {
				t.Fatalf("ran %v, error %v; want an EnterError alone and no run", ran, err)
			}
			if !strings.HasPrefix(enter.Op, tc.op) || enter.Err == nil {
				t.Errorf("EnterError %+v, want Op starting %q and the kernel's error", enter, tc.op)
			}
			if s := strays(t, h); len(s) > 0 {
				t.Fatalf("threads left outside the process's namespace %s: %v", h, s)
			}
		})
	}
}

// The thread DoThrowaway moved is discarded, as Do's is, when it cannot go
// back.
func TestDoThrowawayDiscardsThreadItCannotRestore(t *testing.T) {
	netnstest.Require(t)
	var tid atomic.Int64
	undo := nsthread.FailRestore(func() { tid.Store(int64(unix.Gettid())) })
	want := errors.New("the step's own failure")
	err := nsthread.DoThrowaway(func() error { return want })
	undo()
	if !errors.Is(err, nsthread.ErrThreadLost) || !errors.Is(err, want) {
		t.Fatalf("DoThrowaway with a failing restore: %v; want ErrThreadLost joined with the step's error", err)
	}
	waitThreadEnds(t, int(tid.Load()))
	if s := strays(t, home(t)); len(s) > 0 {
		t.Fatalf("threads left outside the process's namespace: %v", s)
	}
}
