package loader

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// routeLookups is how many routes dp asked the kernel for so far.
func routeLookups(dp *Datapath) int {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.reach.routeLookups
}

// waitFollowed waits until dp's netlink subscriptions keep its reach.
func waitFollowed(t *testing.T, dp *Datapath) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		dp.mu.Lock()
		ok := dp.reach.followed
		dp.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the netlink subscriptions did not start in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDatapathReachCached: an Apply that changes nothing asks the kernel
// for no route, and a route added toward one backend has only that
// backend looked up again, and only its record written.
func TestDatapathReachCached(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	services := []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(be13, 1))}
	waitFollowed(t, dp)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 3)
	// Let the updates the first apply caused (neighbour answers) settle.
	time.Sleep(300 * time.Millisecond)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}

	before := routeLookups(dp)
	for range 3 {
		if err := dp.Apply(ctx, services); err != nil {
			t.Fatal(err)
		}
	}
	if got := routeLookups(dp) - before; got != 0 {
		t.Fatalf("3 applies with nothing changed asked for %d routes, want 0", got)
	}

	records := func() map[uint32]halbBackend {
		out := map[uint32]halbBackend{}
		s := waitLive(t, dp, web, 3)
		for _, be := range s.Backends {
			var rec halbBackend
			if err := dp.lb.objs.HalbBackends.Lookup(be.ID, &rec); err != nil {
				t.Fatal(err)
			}
			out[be.ID] = rec
		}
		return out
	}
	was := records()

	// A host route to be12 alone: the refresher looks up be12 again and
	// nothing else.
	h := b.lb.Netlink(t)
	l, err := h.LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: be12.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for routeLookups(dp) == before {
		if time.Now().After(deadline) {
			t.Fatal("no route looked up again 10s after a route to a backend was added")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if got := routeLookups(dp) - before; got != 1 {
		t.Fatalf("a route to one backend had %d routes looked up again, want 1", got)
	}
	now := records()
	for id, rec := range was {
		if now[id] != rec {
			t.Errorf("backend id %d: record %+v became %+v", id, rec, now[id])
		}
	}
}

// TestPinCheckCheap: a pin check with every pin as it was opens none of
// them (one lstat each), and one pin made again is read again and found
// right.
func TestPinCheckCheap(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	check := func() int {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		before := dp.pinChecks.reads
		dp.checkPins()
		return dp.pinChecks.reads - before
	}
	check()
	if n := check(); n != 0 {
		t.Fatalf("a check with the pins untouched read %d of them, want 0", n)
	}
	// The same map pinned again: a new inode, read once, nothing restored.
	path := filepath.Join(b.cfg.BPFFS, "halb_services")
	if err := pinReplace(dp.lb.objs.HalbServices, path); err != nil {
		t.Fatal(err)
	}
	if n := check(); n != 1 {
		t.Fatalf("a check after one pin was made again read %d pins, want 1", n)
	}
	if n := check(); n != 0 {
		t.Fatalf("the check after read %d pins, want 0", n)
	}
	if strings.Contains(b.log.String(), "restored a pin") {
		t.Errorf("a pin made again from halb's own map was restored:\n%s", b.log)
	}
}
