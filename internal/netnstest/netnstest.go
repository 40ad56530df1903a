// Package netnstest gives a privileged test a network namespace of its own.
//
// Every namespace is made by the test that asks for it and removed when that
// test ends. Work inside a namespace runs on an OS thread locked for the
// purpose (internal/nsthread, which the demo uses too), so no other
// goroutine ever finds itself in the wrong namespace.
//
// A test that cannot get the privileges it needs is skipped on a developer's
// machine and fails when CI=true: a privileged test that silently skips in CI
// proves nothing. This package must never touch the host's own namespace
// beyond creating and deleting the namespaces it names.
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/halb-lb/halb/internal/nsthread"
)

// InCI reports whether the tests run in CI, where privileged tests must run.
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips t, or fails it when CI=true.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and this privileged test cannot run: "+format, args...)
	}
	t.Skipf(format, args...)
}

// Require skips (or in CI fails) a test that is not running as root.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root (euid is %d)", os.Geteuid())
	}
}

// NS is a named network namespace: `ip netns exec NAME ...` reaches it too,
// which is how tests start real peers such as keepalived inside it.
type NS struct {
	Name   string
	handle netns.NsHandle
}

var seq atomic.Uint64

// New makes a fresh network namespace with its loopback up; it is deleted
// when t ends.
func New(t testing.TB) *NS {
	t.Helper()
	Require(t)
	name := fmt.Sprintf("halbtest-%d-%d", os.Getpid(), seq.Add(1))
	handle, err := nsthread.NewNamed(name)
	if err != nil {
		SkipOrFail(t, "%v", err)
	}
	ns := &NS{Name: name, handle: handle}
	t.Cleanup(func() {
		ns.handle.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("bring up lo in %s: %v", name, err)
	}
	return ns
}

// Handle is the namespace's file descriptor handle, for APIs that take one.
func (ns *NS) Handle() netns.NsHandle { return ns.handle }

// Netlink returns a netlink handle that acts inside the namespace without
// moving any thread into it; it is closed when t ends.
func (ns *NS) Netlink(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Do runs fn on a locked OS thread inside the namespace and returns its
// error. Sockets that fn opens stay in the namespace after Do returns.
func (ns *NS) Do(fn func() error) error {
	return nsthread.Do(ns.handle, fn)
}

// Start starts cmd inside the namespace: a child forked from a thread
// inherits that thread's namespace.
func (ns *NS) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}
