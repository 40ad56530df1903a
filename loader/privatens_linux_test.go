package loader

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

// privateMountNS sees a thread that unshared its mount namespace (as
// `ip netns exec` gives its command one, where a bpffs halb mounts dies
// with it) as private, against PID 1's or, where that cannot be read,
// the parent's; and a namespace compared with itself as not. The thread
// is never handed back: it dies with its goroutine.
func TestPrivateMountNS(t *testing.T) {
	netnstest.Require(t)
	type answer struct {
		self, unshared, noInit bool
		err                    error
	}
	got := make(chan answer, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		var a answer
		initMountNS = "/proc/thread-self/ns/mnt"
		a.self, _ = privateMountNS()
		initMountNS = "/proc/1/ns/mnt"
		defer func() { initMountNS = "/proc/1/ns/mnt" }()
		if a.err = unix.Unshare(unix.CLONE_NEWNS); a.err == nil {
			a.unshared, _ = privateMountNS()
			initMountNS = "/proc/0/ns/mnt" // unreadable: the parent's stands in
			a.noInit, _ = privateMountNS()
		}
		got <- a
	}()
	a := <-got
	if a.err != nil {
		netnstest.SkipOrFail(t, "unshare a mount namespace: %v", a.err)
	}
	if a.self {
		t.Errorf("a mount namespace compared with itself is seen as private")
	}
	if !a.unshared || !a.noInit {
		t.Errorf("a thread in a mount namespace of its own is seen as private %v against PID 1's, %v against the parent's; want both", a.unshared, a.noInit)
	}
}
