// Package nsthread runs code inside a network namespace on an OS thread
// locked for the purpose, and makes named network namespaces: for the
// tests (internal/netnstest) and the demo, which both build LANs of
// namespaces, and for the loader, which works in the namespace of its data
// path and probes the kernel in a throwaway one. It is the one place in
// the tree that locks a thread and moves it between namespaces.
//
// A thread's network namespace is the thread's alone: a goroutine that
// moves its thread and then lets the Go scheduler have it back would hand
// the namespace to whatever goroutine runs there next. So every step runs
// on a goroutine of its own, locked to its thread, and the thread goes
// back to the namespace it came from before it is unlocked. It must never
// unlock a thread whose namespace it could not put back: such a thread
// stays locked and the runtime ends it with its goroutine (the main
// thread, which the runtime cannot end, is parked for good instead), so
// that no other goroutine ever runs in a namespace it did not ask for.
package nsthread

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrThreadLost is in the error of a step whose thread could not go back
// to its own namespace; that thread has been discarded.
var ErrThreadLost = errors.New("could not return a thread to its network namespace; the thread is discarded")

// EnterError is the error of a step that never ran because its thread
// could not get into the namespace; the thread is back home and unlocked.
// Op says what was tried, so that a caller can say it in its own words.
type EnterError struct {
	Op  string // "enter network namespace NS", "unshare network namespace"
	Err error
}

func (e *EnterError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *EnterError) Unwrap() error { return e.Err }

// restore puts the thread back into its namespace, and unshare moves it
// into a new one; a test makes them fail.
var (
	restore = netns.Set
	unshare = func() error { return unix.Unshare(unix.CLONE_NEWNET) }
)

// NewNamed makes the network namespace name, which `ip netns exec name`
// reaches too, and returns a handle to it. The caller's thread stays where
// it is; the thread netns.NewNamed moves is handled as Do handles its own.
func NewNamed(name string) (netns.NsHandle, error) {
	var handle netns.NsHandle
	err := onLockedThread(func() error {
		var err error
		// NewNamed moves this thread into the new namespace (it may
		// have moved it even when it fails).
		handle, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		if handle.IsOpen() {
			handle.Close()
			_ = netns.DeleteNamed(name)
		}
		return netns.None(), fmt.Errorf("create network namespace %s: %w", name, err)
	}
	return handle, nil
}

// Do runs fn on a thread inside ns and returns fn's error. Sockets fn
// opens stay in ns after Do returns, and so does a process fn starts.
func Do(ns netns.NsHandle, fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return &EnterError{Op: fmt.Sprintf("enter network namespace %s", ns), Err: err}
		}
		return fn()
	})
}

// DoThrowaway runs fn on a thread moved into a new, empty network
// namespace, so that whatever fn attaches never reaches the host's
// interfaces; the namespace goes with the last reference to it (a socket
// or link fn leaves open keeps it). Making it needs CAP_SYS_ADMIN.
func DoThrowaway(fn func() error) error {
	return onLockedThread(func() error {
		if err := unshare(); err != nil {
			return &EnterError{Op: "unshare network namespace", Err: err}
		}
		return fn()
	})
}

// onLockedThread runs step on a new goroutine locked to its thread, then
// puts the thread back into the namespace it started in, whatever step
// did or how it failed, and unlocks it only if that worked. Just never
// unlocking is not enough: the goroutine may run on the main thread, which
// the runtime parks rather than ends, and /proc/self/net would then
// describe the wrong namespace for the rest of the process's life. It
// returns once the goroutine's work is all done, the namespace handle it
// opened closed too: a caller's Close that returns leaves none of it
// running.
func onLockedThread(step func() error) error {
	var (
		wg  sync.WaitGroup
		err error
	)
	wg.Go(func() { err = stepOnLockedThread(step) })
	wg.Wait()
	return err
}

// stepOnLockedThread is onLockedThread's goroutine: it returns with the
// thread still locked when the thread could not go home, and the thread
// then ends with the goroutine.
func stepOnLockedThread(step func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread() // nothing has moved it yet
		return fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer orig.Close()
	stepErr := step()
	if err := restore(orig); err != nil {
		// Left locked: the thread ends with this goroutine.
		return errors.Join(stepErr, fmt.Errorf("%w: %w", ErrThreadLost, err))
	}
	runtime.UnlockOSThread()
	return stepErr
}
