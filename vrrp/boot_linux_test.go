package vrrp

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// keepalived started before its interface or address exists fails
// "bind unicast_src ... Cannot assign requested address", enters FAULT and
// stays there. halb started the same way must leave FAULT by itself, driven
// by netlink, as soon as what it needs is there; and go back to FAULT, and
// out again, as often as the network comes and goes.
func TestBootBeforeNetwork(t *testing.T) {
	v := variant{"v3-ipv4-unicast", 3, false, true, 200 * time.Millisecond}
	l := newHosts(t, false)
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 150, true))
	bound := v.masterDown(150)
	limit := 10*bound + 5*time.Second

	a.start(t)
	waitLog(t, a, "interface lan0 missing")

	// The interface appears, but not yet the address unicast_src names.
	l.connect(t)
	waitLog(t, a, "unicast_src 192.0.2.1 not on lan0")
	time.Sleep(bound) // long enough that a wrong takeover would show
	if hasAddr(l.h[0], v.vip()) {
		t.Fatal("VIP taken over without unicast_src on the host")
	}

	l.addAddr(t, 0)
	took := waitAddr(t, l.h[0], v.vip(), true, limit)
	t.Logf("address appeared: VIP held %v later (master down interval %v)", took.Round(time.Millisecond), bound)

	// Removing the primary address also removes the VIP, a secondary in
	// its subnet: what must be seen is the instance going to FAULT.
	faults := strings.Count(a.log.String(), "unicast_src 192.0.2.1 not on lan0")
	l.delAddr(t, 0)
	waitAddr(t, l.h[0], v.vip(), false, limit)
	waitLogCount(t, a, "unicast_src 192.0.2.1 not on lan0", faults+1)
	time.Sleep(bound)
	if hasAddr(l.h[0], v.vip()) {
		t.Fatal("VIP put back while unicast_src is gone")
	}
	l.addAddr(t, 0)
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	t.Logf("address back: VIP held %v later", took.Round(time.Millisecond))

	// Deleted and made again: a new ifindex, so a new socket and
	// membership.
	missing := strings.Count(a.log.String(), "interface lan0 missing")
	if err := l.h[0].LinkDel(l.link(t, 0)); err != nil {
		t.Fatal(err)
	}
	waitLogCount(t, a, "interface lan0 missing", missing+1)
	l.connect(t)
	l.addAddr(t, 0)
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	t.Logf("interface re-created: VIP held %v later", took.Round(time.Millisecond))

	var worst time.Duration
	for range 20 {
		l.setUp(t, 0, false)
		waitAddr(t, l.h[0], v.vip(), false, limit)
		l.setUp(t, 0, true)
		took := waitAddr(t, l.h[0], v.vip(), true, limit)
		worst = max(worst, took)
	}
	t.Logf("20 link flaps: converged after each, slowest %v", worst.Round(time.Millisecond))

	a.stop(syscall.SIGTERM)
	if hasAddr(l.h[0], v.vip()) {
		t.Error("VIP left behind after SIGTERM")
	}
}

func waitLog(t *testing.T, n *node, want string) {
	t.Helper()
	waitLogCount(t, n, want, 1)
}

// waitLogCount waits until n's log holds want at least count times.
func waitLogCount(t *testing.T, n *node, want string, count int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(n.log.String(), want) >= count {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s logged %q fewer than %d times", n.name, want, count)
}
