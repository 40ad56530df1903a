package loader

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// TestDatapathSameTablesEverywhere: nodes that announce a VIP over BGP
// each get a share of its flows from the routers' ECMP, and a flow the
// routers move to another node (a node lost, a node added) keeps its
// backend only if every node's Maglev table names the same backend in
// every slot. So two data paths given the same services and health hold
// the same tables, slot for slot by backend address, whatever came
// before: the order of the services and of their backends, other services
// added and removed first (the backend ids differ), reloads, and a
// restart that adopts the pinned maps.
func TestDatapathSameTablesEverywhere(t *testing.T) {
	a, b := newDPBench(t), newDPBench(t)
	dpA := a.start(t, a.cfg, config.ModeXDP)
	dpB := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()

	named := func(name string, key service.Key, backends ...service.Backend) service.Service {
		s := svc(key, backends...)
		s.Name = name
		return s
	}
	healthy := []service.Service{
		named("web", web, backend(be11, 1), backend(be12, 1), backend(be13, 2)),
		named("dns", dns, service.Backend{Addr: be11, Port: 53, Weight: 1}, service.Backend{Addr: be14, Port: 53, Weight: 1}),
		named("web6", web6, service.Backend{Addr: be6, Port: 443, Weight: 1}),
	}
	// be12 fails its health check (the daemon drains it: weight 0) and
	// be14 joins web.
	failing := []service.Service{
		named("web", web, backend(be11, 1), backend(be12, 0), backend(be13, 2), backend(be14, 1)),
		healthy[1], healthy[2],
	}
	// reversed gives the services, and each one's backends, in the
	// opposite order.
	reversed := func(in []service.Service) []service.Service {
		out := slices.Clone(in)
		slices.Reverse(out)
		for i := range out {
			out[i].Backends = slices.Clone(out[i].Backends)
			slices.Reverse(out[i].Backends)
		}
		return out
	}
	apply := func(dp *Datapath, node, step string, services []service.Service) {
		t.Helper()
		if err := dp.Apply(ctx, services); err != nil {
			t.Fatalf("node %s, %s: %v", node, step, err)
		}
	}

	// Node b's history: other services take backend ids first, then leave,
	// so that its ids for the same backends are not node a's.
	apply(dpB, "b", "other services", []service.Service{
		named("api", service.Key{VIP: web.VIP, Port: 8080, Proto: service.TCP},
			backend(be14, 1), backend(be13, 1), backend(be12, 1), backend(be11, 1)),
		named("dns", dns, service.Backend{Addr: be13, Port: 53, Weight: 1}),
	})
	waitLive(t, dpB, dns, 1)
	apply(dpB, "b", "other services removed", nil)

	apply(dpA, "a", "healthy", healthy)
	apply(dpB, "b", "healthy, reversed", reversed(healthy))
	idsDiffer := sameTables(t, "healthy", healthy, dpA, dpB)
	if !idsDiffer {
		t.Errorf("the two nodes gave the same backend ids: the test's history did not make them differ")
	}

	apply(dpA, "a", "be12 failing", failing)
	apply(dpB, "b", "be12 failing, reversed", reversed(failing))
	sameTables(t, "be12 failing", failing, dpA, dpB)

	// Node b restarts, adopts its maps and is reloaded to health again in
	// config order; node a recovers through another history: be12 drained
	// twice over (reweighted) before it is healthy.
	if err := dpB.Close(); err != nil {
		t.Fatal(err)
	}
	dpB = b.start(t, b.cfg, config.ModeXDP)
	apply(dpB, "b", "restarted, be12 failing", failing)
	apply(dpB, "b", "restarted, healthy", healthy)
	reweighted := slices.Clone(failing)
	reweighted[0] = named("web", web, backend(be11, 3), backend(be12, 0), backend(be13, 1))
	apply(dpA, "a", "reweighted", reweighted)
	apply(dpA, "a", "healthy, reversed", reversed(healthy))
	sameTables(t, "healthy after restart and reloads", healthy, dpA, dpB)
}

// sameTables waits until each node's table of each service names exactly
// its live backends, then compares the tables slot for slot by backend
// address; it reports whether some backend has another id on node a than
// on node b.
func sameTables(t *testing.T, step string, services []service.Service, a, b *Datapath) (idsDiffer bool) {
	t.Helper()
	for _, s := range services {
		live := 0
		for _, be := range s.Backends {
			if be.Weight > 0 {
				live++
			}
		}
		ta, idsA := settledTable(t, a, s.Key, live)
		tb, idsB := settledTable(t, b, s.Key, live)
		if len(ta) != len(tb) {
			t.Fatalf("%s: %s has %d slots on node a, %d on node b", step, s.Key, len(ta), len(tb))
		}
		differ := 0
		for slot := range ta {
			if ta[slot] != tb[slot] {
				if differ < 5 {
					t.Errorf("%s: %s slot %d is %s on node a, %s on node b", step, s.Key, slot, ta[slot], tb[slot])
				}
				differ++
			}
		}
		if differ > 0 {
			t.Errorf("%s: %s: %d of %d slots differ", step, s.Key, differ, len(ta))
		}
		for addr, id := range idsA {
			if idsB[addr] != id {
				idsDiffer = true
			}
		}
	}
	return idsDiffer
}

// settledTable waits until the Maglev table of key names want live
// backends, each of them, and returns it with each slot's backend id
// mapped to its address:port, and the backends' ids.
func settledTable(t *testing.T, dp *Datapath, key service.Key, want int) ([]netip.AddrPort, map[netip.AddrPort]uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		slots, ids, err := tableByAddr(dp, key, want)
		if err == nil {
			return slots, ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tableByAddr reads key's table with each slot mapped to its backend's
// address:port, and errs unless the table names exactly the want live
// backends.
func tableByAddr(dp *Datapath, key service.Key, want int) ([]netip.AddrPort, map[netip.AddrPort]uint32, error) {
	st, err := dp.Status()
	if err != nil {
		return nil, nil, err
	}
	i := slices.IndexFunc(st, func(s ServiceStatus) bool { return s.Key == key })
	if i < 0 {
		return nil, nil, fmt.Errorf("%s not in the status %+v", key, st)
	}
	addrOf := map[uint32]netip.AddrPort{}
	ids := map[netip.AddrPort]uint32{}
	live := 0
	for _, be := range st[i].Backends {
		ids[be.Addr] = be.ID
		if be.Live {
			addrOf[be.ID] = be.Addr
			live++
		}
	}
	if live != want {
		return nil, nil, fmt.Errorf("%s has %d live backends, want %d: %+v", key, live, want, st[i].Backends)
	}
	table, err := dp.lb.maglevTable(st[i].ID)
	if err != nil {
		return nil, nil, err
	}
	slots := make([]netip.AddrPort, len(table))
	named := map[uint32]bool{}
	for slot, id := range table {
		addr, ok := addrOf[id]
		if !ok {
			return nil, nil, fmt.Errorf("%s slot %d names backend id %d, not a live backend of %v", key, slot, id, addrOf)
		}
		slots[slot] = addr
		named[id] = true
	}
	if len(named) != want {
		return nil, nil, fmt.Errorf("%s's table names %d backends, want its %d live ones", key, len(named), want)
	}
	return slots, ids, nil
}
