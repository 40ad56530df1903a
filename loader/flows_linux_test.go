package loader

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// TestDatapathFlows lists what halb_ct holds through the Datapath: each
// flow named by its service and backend, a backend id no longer in use
// (or now another service's) shown by its id rather than dropped, the
// service filter and the limit, and ages and packets as the entries hold.
func TestDatapathFlows(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	dnsSvc := service.Service{Name: "dns", Key: dns, Scheduler: "mh", Forward: service.DR,
		Backends: []service.Backend{{Addr: be13, Port: 53, Weight: 1}}}
	v6Svc := service.Service{Name: "web6", Key: web6, Scheduler: "mh", Forward: service.DR,
		Backends: []service.Backend{{Addr: be6, Port: 443, Weight: 1}}}
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1)), dnsSvc, v6Svc}); err != nil {
		t.Fatal(err)
	}
	w := waitLive(t, dp, web, 2)
	d := waitLive(t, dp, dns, 1)
	id11, id12, id13 := backendOf(w, be11).ID, backendOf(w, be12).ID, backendOf(d, be13).ID
	id6 := backendOf(waitLive(t, dp, web6, 1), be6).ID
	client6 := netip.MustParseAddrPort("[2001:db8:ff::7]:50000")

	now, err := monotonicSeconds()
	if err != nil {
		t.Fatal(err)
	}
	client := func(last byte, port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, last}), port)
	}
	put := func(c netip.AddrPort, k service.Key, e halbCtEntry) {
		t.Helper()
		saddr, family, _ := addrOf(c.Addr())
		daddr, _, _ := addrOf(k.VIP)
		key := halbFlow{Saddr: saddr, Daddr: daddr, Sport: c.Port(), Dport: k.Port, Proto: uint8(k.Proto), Family: family}
		if err := dp.lb.objs.HalbCt.Put(&key, &e); err != nil {
			t.Fatal(err)
		}
	}
	type want struct {
		service string
		backend netip.AddrPort // invalid: shown by id
		id      uint32
		age     int64
		packets uint64
	}
	wants := map[netip.AddrPort]want{
		client(1, 40000): {"web", netip.AddrPortFrom(be11, 80), id11, 30, 7},
		client(2, 40001): {"web", netip.AddrPortFrom(be12, 80), id12, 0, 1},
		client(3, 40002): {"dns", netip.AddrPortFrom(be13, 53), id13, 600, 1000},
		client(4, 40003): {"web", netip.AddrPort{}, 99, 5, 2},   // an id no one holds
		client(5, 40004): {"web", netip.AddrPort{}, id13, 5, 2}, // dns's backend, not web's
		client6:          {"web6", netip.AddrPortFrom(be6, 443), id6, 60, 12},
	}
	for c, x := range wants {
		k := map[string]service.Key{"web": web, "dns": dns, "web6": web6}[x.service]
		put(c, k, halbCtEntry{BackendId: x.id, FirstSeen: uint32(now - x.age), Packets: uint32(x.packets)})
	}

	list, err := dp.Flows(ctx, service.FlowQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if list.Total != len(wants) || len(list.Flows) != len(wants) || list.Partial {
		t.Fatalf("listed %d of %d flows (partial %v), want all %d: %+v", len(list.Flows), list.Total, list.Partial, len(wants), list.Flows)
	}
	for _, f := range list.Flows {
		x, ok := wants[f.Client]
		if !ok {
			t.Errorf("a flow the test did not make: %+v", f)
			continue
		}
		// The clock may tick between the test's reading and the list's.
		if f.Service != x.service || f.Backend != x.backend || f.BackendID != x.id ||
			f.AgeSeconds == nil || *f.AgeSeconds < x.age || *f.AgeSeconds > x.age+5 || f.Packets == nil || *f.Packets != x.packets {
			t.Errorf("flow from %s: %+v (age %v, packets %v), want %+v", f.Client, f, deref(f.AgeSeconds), deref(f.Packets), x)
		}
	}
	if list.Flows[0].Service != "dns" {
		t.Errorf("first listed %+v, want the list sorted by service (dns first)", list.Flows[0])
	}

	list, err = dp.Flows(ctx, service.FlowQuery{Service: "dns", Limit: 100})
	if err != nil || list.Total != 1 || len(list.Flows) != 1 || list.Flows[0].Client != client(3, 40002) {
		t.Errorf("flows of dns: %+v (%v), want the one from %s", list, err, client(3, 40002))
	}
	list, err = dp.Flows(ctx, service.FlowQuery{Service: "web", Limit: 2})
	if err != nil || list.Total != 4 || len(list.Flows) != 2 {
		t.Errorf("flows of web, limit 2: %d of %d (%v), want 2 of 4", len(list.Flows), list.Total, err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := dp.Flows(ctx, service.FlowQuery{Limit: 1}); err == nil {
		t.Error("Flows after Close did not fail")
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// listFlows keeps at most the limit however full halb_ct is, counts every
// flow it read, carries a full NAT flow's source port, and stops at its
// scan bound, saying the list is partial.
func TestListFlowsBounded(t *testing.T) {
	const flows = 10000
	lb := withFlows(t, flows, func(i int) halbCtEntry { return halbCtEntry{BackendId: 1, Sport: uint16(i) | 0x8000, Packets: 1} })
	names := flowNames{services: map[service.Key]string{}, backends: map[uint32]flowBackend{}}
	ctx := context.Background()
	list, err := lb.listFlows(ctx, names, service.FlowQuery{Limit: 100}, flowScanMax)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Flows) != 100 || list.Total != flows || list.Partial {
		t.Errorf("listed %d of %d (partial %v), want 100 of %d, complete", len(list.Flows), list.Total, list.Partial, flows)
	}
	for _, f := range list.Flows {
		if f.SourcePort != f.Client.Port()|0x8000 {
			t.Errorf("flow from %s: source port %d, want %d", f.Client, f.SourcePort, f.Client.Port()|0x8000)
			break
		}
	}
	list, err = lb.listFlows(ctx, names, service.FlowQuery{Limit: 100}, 3000)
	if err != nil {
		t.Fatal(err)
	}
	// The scan stops at a bucket of the hash: a few entries short of the
	// bound when the next bucket holds more than is left of it.
	if len(list.Flows) != 100 || list.Total > 3000 || list.Total < 2900 || !list.Partial {
		t.Errorf("with a scan bound of 3000: listed %d of %d (partial %v), want 100 of 2900-3000, partial", len(list.Flows), list.Total, list.Partial)
	}
	// A bound smaller than a bucket of the hash (the kernel then refuses
	// the batch) ends the listing as the bound does.
	list, err = lb.listFlows(ctx, names, service.FlowQuery{Limit: 100}, 1)
	if err != nil || list.Total > 1 || !list.Partial {
		t.Errorf("with a scan bound of 1: %d flows (partial %v), %v; want at most 1, partial, no error", list.Total, list.Partial, err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := lb.listFlows(cancelled, names, service.FlowQuery{Limit: 100}, flowScanMax); err == nil {
		t.Error("a listing whose context is done did not fail")
	}
}

// A listing as large as a limit may be (service.MaxFlowLimit) out of a
// fuller table comes back whole and sorted; and a context that ends as the
// scan ends fails the listing rather than sort and hand back a list its
// caller no longer waits for.
func TestListFlowsMany(t *testing.T) {
	const flows = 30000
	lb := withFlows(t, flows, func(int) halbCtEntry { return halbCtEntry{BackendId: 1} })
	names := flowNames{services: map[service.Key]string{}, backends: map[uint32]flowBackend{}}
	list, err := lb.listFlows(context.Background(), names, service.FlowQuery{Limit: service.MaxFlowLimit}, flowScanMax)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Flows) != service.MaxFlowLimit || list.Total != flows || list.Partial {
		t.Errorf("listed %d of %d (partial %v), want %d of %d, complete", len(list.Flows), list.Total, list.Partial, service.MaxFlowLimit, flows)
	}
	if !slices.IsSortedFunc(list.Flows, func(a, b service.Flow) int { return a.Client.Compare(b.Client) }) {
		t.Error("the listing is not sorted by client")
	}

	// How often the scan alone looks at its context, then a context
	// that is done from the next look on.
	counting := &doneAfter{Context: context.Background(), ok: -1}
	if _, err := lb.eachFlow(counting, flowScanMax, func(halbFlow, halbCtEntry) {}); err != nil {
		t.Fatal(err)
	}
	done := &doneAfter{Context: context.Background(), ok: counting.calls}
	if _, err := lb.listFlows(done, names, service.FlowQuery{Limit: service.MaxFlowLimit}, flowScanMax); !errors.Is(err, context.Canceled) {
		t.Errorf("a context done as the scan ended (after %d looks): %v, want context.Canceled", counting.calls, err)
	}
}

// doneAfter is a context whose Err is nil for its first ok calls and
// context.Canceled after (never, with ok negative); it counts the calls.
type doneAfter struct {
	context.Context
	ok, calls int
}

func (c *doneAfter) Err() error {
	c.calls++
	if c.ok >= 0 && c.calls > c.ok {
		return context.Canceled
	}
	return nil
}

// withFlows loads the program's maps with n flows in halb_ct, one a client
// port, each with the entry entry(i) makes.
func withFlows(t *testing.T, n int, entry func(i int) halbCtEntry) *kernelLB {
	t.Helper()
	netnstest.Require(t)
	lb, err := loadLB(Options{ConntrackEntries: 65536})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.close() })
	for i := range n {
		k := halbFlow{Sport: uint16(i), Dport: 80, Proto: 6, Family: halbFamilyFAMILY_IPV4}
		e := entry(i)
		if err := lb.objs.HalbCt.Put(&k, &e); err != nil {
			t.Fatal(err)
		}
	}
	return lb
}
