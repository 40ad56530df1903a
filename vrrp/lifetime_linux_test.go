package vrrp

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The same on the kernel's link: an instance run in a namespace with a
// VMAC (two advert sockets), its netlink watch and, as Master, its
// conflict watch leaves no goroutine once Run has returned.
func TestRunLeavesNoGoroutineOnLinux(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	leaks := goleak.IgnoreCurrent()
	p := startInProcess(t, l.ns[0], v.config(l, 0, 150, true)+"      use_vmac: true\n", func(*Instance) {})
	waitFor(t, "MASTER", func() *State {
		if s := p.in.Status().State; s == Master {
			return &s
		}
		return nil
	})
	p.stop(t)
	goleak.VerifyNone(t, leaks)
	if s := p.in.Status(); s.State != Initialize {
		t.Errorf("state %s after Run returned, want INIT", s.State)
	}
}
