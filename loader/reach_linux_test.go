package loader

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// routeLookups is how many routes dp asked the kernel for so far.
func routeLookups(dp *Datapath) int {
	dp.reach.mu.Lock()
	defer dp.reach.mu.Unlock()
	return dp.reach.routeLookups
}

// serves is how many services dp applied so far.
func serves(dp *Datapath) int {
	dp.reach.mu.Lock()
	defer dp.reach.mu.Unlock()
	return dp.reach.serves
}

// waitFollowed waits until dp's netlink subscriptions keep its reach.
func waitFollowed(t *testing.T, dp *Datapath) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		dp.reach.mu.Lock()
		ok := dp.reach.followed
		dp.reach.mu.Unlock()
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
// for no route; a route added toward one backend has only that backend
// looked up again and only its service applied again, and a neighbour
// entry that changes for one backend address, which several services
// share, plans no service again and writes the records at that address
// alone, with the next-hop generation they move, once.
func TestDatapathReachCached(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	dnsSvc := svc(dns, backend(be13, 1))
	dnsSvc.Name = "dns"
	services := []service.Service{svc(web, backend(be11, 1), backend(be12, 1)), dnsSvc}
	// More services with a backend at be13 (and one at be11 beside it),
	// as at a site whose backends each serve many services.
	shared := map[service.Key]int{web: 2, dns: 1}
	for i := range 8 {
		key := service.Key{VIP: dns.VIP, Port: 5300 + uint16(i), Proto: service.UDP}
		s := svc(key, backend(be13, 1), backend(be11, 1))
		s.Name = fmt.Sprintf("shared%d", i)
		services = append(services, s)
		shared[key] = 2
	}
	waitFollowed(t, dp)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	for key, n := range shared {
		waitLive(t, dp, key, n)
	}
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
		for key, n := range shared {
			for _, be := range waitLive(t, dp, key, n).Backends {
				var rec halbBackend
				if err := dp.lb.objs.HalbBackends.Lookup(be.ID, &rec); err != nil {
					t.Fatal(err)
				}
				out[be.ID] = rec
			}
		}
		return out
	}
	at13 := 0
	for _, s := range services {
		if slices.ContainsFunc(s.Backends, func(b service.Backend) bool { return b.Addr == be13 }) {
			at13++
		}
	}
	was := records()
	applied := serves(dp)
	writes := dp.maps.writeCount()

	// A host route to be12 alone: the refresher looks up be12 again and
	// applies web alone.
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
	if got := serves(dp) - applied; got != 1 {
		t.Fatalf("a route to one backend applied %d services again, want its one", got)
	}
	if got := dp.maps.writeCount() - writes; got != 0 {
		t.Errorf("a route to one backend that leaves its way as it was made %d map writes, want 0", got)
	}
	now := records()
	for id, rec := range was {
		if now[id] != rec {
			t.Errorf("backend %d: record %+v became %+v", id, rec, now[id])
		}
	}

	// be13's MAC changes: no service is planned again, be13's records
	// alone change, in each service that has it.
	applied = serves(dp)
	writes = dp.maps.writeCount()
	newMAC := net.HardwareAddr{0x02, 0, 0, 0, 0x99, 0x13}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: be13.AsSlice(), HardwareAddr: newMAC, State: netlink.NUD_PERMANENT}); err != nil {
		t.Fatal(err)
	}
	for key, n := range shared {
		if key == web {
			continue // no backend at be13
		}
		for deadline := time.Now().Add(10 * time.Second); !bytes.Equal(backendOf(waitLive(t, dp, key, n), be13).MAC, newMAC); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("service %s: backend %s kept its old MAC 10s after the neighbour table changed", key, be13)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	if got := serves(dp) - applied; got != 0 {
		t.Errorf("a neighbour change of one backend address planned %d services again, want none", got)
	}
	// Its records, one in each service that has it, and the
	// next-hop generation that a changed record moves (mapWriter), once.
	if got, want := dp.maps.writeCount()-writes, at13+1; got != want {
		t.Errorf("a neighbour change of one backend address in %d services made %d map writes, want %d: its records and the next-hop generation", at13, got, want)
	}
	now = records()
	changed := 0
	for id, rec := range was {
		switch {
		case addrFrom(rec.Addr, rec.Family) != be13:
			if now[id] != rec {
				t.Errorf("backend %d: record %+v became %+v", id, rec, now[id])
			}
		case now[id].Mac != [6]byte(newMAC):
			t.Errorf("backend %d at %s: MAC %x in its record, want %s", id, be13, now[id].Mac, newMAC)
		default:
			changed++
			rec.Mac = now[id].Mac
			if now[id] != rec {
				t.Errorf("backend %d at %s: record %+v became %+v, want its MAC alone changed", id, be13, was[id], now[id])
			}
		}
	}
	if changed != at13 {
		t.Errorf("%d records at %s took the new MAC, want %d", changed, be13, at13)
	}

	// A link update that leaves the link up (an alias) forgets no route.
	before = routeLookups(dp)
	if err := h.LinkSetAlias(l, "backends"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	if got := routeLookups(dp) - before; got != 0 {
		t.Errorf("an alias on the backends' link had %d routes looked up again, want 0", got)
	}

	// The link goes down: the kernel drops its routes without a route
	// update for each, and the backends are reported unreachable.
	if err := h.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := dp.Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(st) > 0 && backendOf(st[0], st[0].Backends[0].Addr.Addr()).Problem != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends still without a problem 10s after their link went down: %+v", st)
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

// TestDatapathNeighboursAskedAtOnce: one Apply asks for the MAC of every
// DR backend of every service once, and they go live from the answers,
// with no second ask.
func TestDatapathNeighboursAskedAtOnce(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	waitFollowed(t, dp)
	dnsSvc := svc(dns, backend(be13, 1), backend(be14, 1))
	dnsSvc.Name = "dns"
	services := []service.Service{svc(web, backend(be11, 1), backend(be12, 1)), dnsSvc}
	if err := dp.Apply(context.Background(), services); err != nil {
		t.Fatal(err)
	}
	solicits := func() int {
		dp.reach.mu.Lock()
		defer dp.reach.mu.Unlock()
		return dp.reach.solicits
	}
	if n := solicits(); n != 4 {
		t.Fatalf("one Apply asked for %d MACs, want the 4 backends' once each", n)
	}
	waitLive(t, dp, web, 2)
	waitLive(t, dp, dns, 2)
	if n := solicits(); n != 4 {
		t.Errorf("%d MACs asked for until all were live, want the 4 of the Apply alone", n)
	}
}
