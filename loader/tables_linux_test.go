package loader

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// TestDatapathTableUnmoved: a flow's backend, the one its slot of the
// service's Maglev table names, does not change when an unrelated service
// is added, re-weighted or removed, though every Apply builds its tables
// on all cores at once.
func TestDatapathTableUnmoved(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	webSvc := svc(web, backend(be11, 1), backend(be12, 1), backend(be13, 1))
	dnsSvc := svc(dns, backend(be11, 1), backend(be14, 1))
	dnsSvc.Name = "dns"
	if err := dp.Apply(ctx, []service.Service{webSvc, dnsSvc}); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 3)
	d := waitLive(t, dp, dns, 2)
	want, wantInner := table(t, dp, s.ID)
	if n := slotsOf(want); len(n) != 3 || n[0] != 0 {
		t.Fatalf("web's table before: slots per backend id %v, want three backends and no empty slot", n)
	}
	dnsBefore, _ := table(t, dp, d.ID)

	web6Svc := svc(web6, backend(be6, 1))
	web6Svc.Name = "web6"
	reweighted := svc(dns, backend(be11, 3), backend(be14, 1))
	reweighted.Name = "dns"
	for _, step := range []struct {
		name     string
		services []service.Service
	}{
		{"another service added", []service.Service{webSvc, dnsSvc, web6Svc}},
		{"another service re-weighted", []service.Service{webSvc, reweighted, web6Svc}},
		{"another service removed", []service.Service{webSvc, web6Svc}},
	} {
		if err := dp.Apply(ctx, step.services); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, inner := table(t, dp, s.ID)
		if moved := slotsMoved(want, got); moved != 0 || inner != wantInner {
			t.Errorf("%s: %d of web's %d slots name another backend, its table map %d (was %d)", step.name, moved, len(want), inner, wantInner)
		}
		if step.name == "another service re-weighted" {
			// The re-weighted service's own table did change.
			if after, _ := table(t, dp, d.ID); slotsMoved(dnsBefore, after) == 0 {
				t.Errorf("%s: its own table did not change", step.name)
			}
		}
	}
}

// slotsMoved counts the slots that name another backend in b than in a.
func slotsMoved(a, b []uint32) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// TestMapWriterRefusesNamedID: the writer frees no backend id that a
// table it wrote or adopted still names, and frees it once the table no
// longer does.
func TestMapWriterRefusesNamedID(t *testing.T) {
	lb, err := loadLB(Options{MaglevTableSize: 7, MaxBackends: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	w := newMapWriter(lb)
	if err := w.setTable(1, []uint32{3, 4, 3, 4, 3, 4, 0}); err != nil {
		t.Fatal(err)
	}
	w.adoptTable(2, []uint32{5})
	for _, id := range []uint32{3, 4, 5} {
		if err := w.freeBackend(id); err == nil {
			t.Errorf("backend %d freed while a table names it", id)
		}
	}
	if err := w.setTable(1, []uint32{4, 4, 4, 4, 4, 4, 4}); err != nil {
		t.Fatal(err)
	}
	if err := w.deleteTable(2); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{3, 5} {
		if err := w.freeBackend(id); err != nil {
			t.Errorf("backend %d, out of every table: %v", id, err)
		}
	}
	if err := w.freeBackend(4); err == nil {
		t.Errorf("backend 4 freed while table 1 names it")
	}
	var got []uint32
	for id, n := range w.inTables {
		if n != 0 {
			got = append(got, uint32(id))
		}
	}
	if !slices.Equal(got, []uint32{4}) {
		t.Errorf("ids named by tables: %v, want [4]", got)
	}
	// A freed record moved the next-hop generation once.
	var before uint32
	if err := lb.objs.HalbNexthopGen.Get(&before); err != nil {
		t.Fatal(err)
	}
	if err := w.moveNexthopGen(); err != nil {
		t.Fatal(err)
	}
	if err := w.moveNexthopGen(); err != nil {
		t.Fatal(err)
	}
	var after uint32
	if err := lb.objs.HalbNexthopGen.Get(&after); err != nil {
		t.Fatal(err)
	}
	if after != before+1 {
		t.Errorf("next-hop generation %d -> %d after records were freed, want one move", before, after)
	}
}

// TestDatapathNoChangeNoWrite: an Apply of what the maps already serve
// makes no map write, and one that changes a weight in each of two
// services writes those records and swaps both tables in one batch.
func TestDatapathNoChangeNoWrite(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	webSvc := svc(web, backend(be11, 1), backend(be12, 1))
	dnsSvc := svc(dns, backend(be13, 1), backend(be14, 1))
	dnsSvc.Name = "dns"
	services := []service.Service{webSvc, dnsSvc}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 2)
	waitLive(t, dp, dns, 2)
	// Once the MACs are in (the refresher applies as they come), an
	// Apply writes what it still must; the next writes nothing.
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	before := dp.maps.writeCount()
	dp.mu.Unlock()
	if before == 0 {
		t.Fatal("the writer counted no write for the first Apply")
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	after := dp.maps.writeCount()
	dp.mu.Unlock()
	if after != before {
		t.Errorf("an Apply that changes nothing made %d map writes, want 0", after-before)
	}

	// Both services re-weighted: two records, one move of the next-hop
	// generation, and both tables swapped in with one batch write.
	heavier := svc(web, backend(be11, 2), backend(be12, 1))
	heavierDNS := svc(dns, backend(be13, 1), backend(be14, 3))
	heavierDNS.Name = "dns"
	dp.mu.Lock()
	batches := dp.maps.tableBatchCount()
	dp.mu.Unlock()
	if err := dp.Apply(ctx, []service.Service{heavier, heavierDNS}); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	changed := dp.maps.writeCount() - after
	batches = dp.maps.tableBatchCount() - batches
	dp.mu.Unlock()
	if changed != 4 || batches != 1 {
		t.Errorf("two weights changed in two services: %d map writes in %d table batches, want 4 (two records, the next-hop generation, one batch of both tables) in 1", changed, batches)
	}
}

// TestDatapathTableSwappedNotWritten: a table that changes is written
// whole into a map of its own and swapped in: the map halb_maglev held
// before is never written (a packet reading it mid-Apply sees the old
// table whole), and halb_maglev names another map afterwards.
func TestDatapathTableSwappedNotWritten(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 1), backend(be12, 1))}); err != nil {
		t.Fatal(err)
	}
	s := waitLive(t, dp, web, 2)
	was, wasInner := table(t, dp, s.ID)
	old, err := ebpf.NewMapFromID(ebpf.MapID(wasInner))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	if err := dp.Apply(ctx, []service.Service{svc(web, backend(be11, 3), backend(be12, 1))}); err != nil {
		t.Fatal(err)
	}
	now, inner := table(t, dp, s.ID)
	if slotsMoved(was, now) == 0 {
		t.Fatal("re-weighting web left its table as it was: the test changes nothing")
	}
	if inner == wasInner {
		t.Errorf("web's new table is in the map that held its old one (%d), not in a fresh one swapped in", inner)
	}
	kept := make([]uint32, len(was))
	if err := old.Lookup(uint32(0), unsafe.Pointer(&kept[0])); err != nil {
		t.Fatal(err)
	}
	if moved := slotsMoved(was, kept); moved != 0 {
		t.Errorf("the map that held web's old table had %d of its %d slots written after it was swapped in", moved, len(was))
	}
}

// TestDatapathNoChangeSkipsOnlyWhatIsDone: an Apply of the services of
// the last Apply plans none of them again, nor does an idle data path;
// but the same services again after an Apply that failed report the
// failure again, after one that left a backend it cannot serve try that
// backend again, and without netlink updates to keep the network known
// are applied again, rather than taking any of them for done.
func TestDatapathNoChangeSkipsOnlyWhatIsDone(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	ctx := context.Background()
	waitFollowed(t, dp)
	services := []service.Service{svc(web, backend(be11, 1), backend(be12, 1))}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 2)
	time.Sleep(300 * time.Millisecond) // the neighbour answers' re-applies settle
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	planned := serves(dp)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	if got := serves(dp) - planned; got != 0 {
		t.Errorf("an Apply that changes nothing planned %d services again, want 0", got)
	}
	// Idle, nothing is planned or looked up again: no resync on a clock
	// (the safety pass comes every safetyInterval, minutes).
	lookups := routeLookups(dp)
	time.Sleep(2 * time.Second)
	if got, gotLookups := serves(dp)-planned, routeLookups(dp)-lookups; got != 0 || gotLookups != 0 {
		t.Errorf("2 s idle planned %d services again and looked up %d routes, want none", got, gotLookups)
	}

	lc := svc(dns, backend(be13, 1))
	lc.Name, lc.Scheduler = "dns", "lc"
	failing := append(slices.Clone(services), lc)
	for i := range 2 {
		if err := dp.Apply(ctx, failing); !errors.Is(err, service.ErrUnsupported) {
			t.Errorf("Apply %d of a service the data path cannot serve: %v, want ErrUnsupported each time", i+1, err)
		}
	}

	unrouted := netip.MustParseAddr("203.0.113.9")
	stuck := []service.Service{svc(web, backend(be11, 1), backend(be12, 1), backend(unrouted, 1))}
	if err := dp.Apply(ctx, stuck); err != nil {
		t.Fatal(err)
	}
	planned = serves(dp)
	if err := dp.Apply(ctx, stuck); err != nil {
		t.Fatal(err)
	}
	if serves(dp) == planned {
		t.Errorf("an Apply with a backend that cannot be served did not plan its service again")
	}

	// Without the netlink updates that keep what the data path knows of
	// the network true (the subscriptions failed), the same services are
	// applied again: each Apply is then what notices a change.
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	dp.reach.mu.Lock()
	dp.reach.followed = false
	dp.reach.mu.Unlock()
	planned = serves(dp)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	if serves(dp) == planned {
		t.Errorf("an Apply while no netlink update keeps the routes and neighbours known did not plan its service again")
	}
}
