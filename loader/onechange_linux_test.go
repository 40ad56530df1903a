package loader

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/service"
)

// randomKeys are n distinct backend keys, IPv4 and IPv6 mixed, few
// addresses with several ports each, in random order.
func randomKeys(r *rand.Rand, n int) []netip.AddrPort {
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for len(out) < n {
		var a netip.Addr
		if r.IntN(3) == 0 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(r.IntN(8))})
		} else {
			a = netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(8))})
		}
		ap := netip.AddrPortFrom(a, uint16(r.IntN(4)*1000+r.IntN(3)))
		if !seen[ap] {
			seen[ap] = true
			out = append(out, ap)
		}
	}
	return out
}

// TestBackendSetFind: find, which compares a key with the records' bytes,
// finds what a search by the records' keys finds, and says where a key not
// in the set would go; inOrder's get finds the same for keys in order and
// out of it.
func TestBackendSetFind(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		keys := randomKeys(r, 40)
		var set backendSet
		for i, ap := range keys[:30] {
			set = set.add([]beState{{id: uint32(i + 1), rec: stubRecord(ap, 1)}})
		}
		for _, ap := range keys {
			wantAt, wantOK := slices.BinarySearchFunc(set, ap, func(b beState, ap netip.AddrPort) int { return b.key().Compare(ap) })
			if at, ok := set.find(ap); at != wantAt || ok != wantOK {
				t.Fatalf("round %d: find(%s) = %d, %v, want %d, %v", round, ap, at, ok, wantAt, wantOK)
			}
		}
		sorted := slices.SortedFunc(slices.Values(keys), netip.AddrPort.Compare)
		for _, order := range [][]netip.AddrPort{sorted, keys} {
			walk := set.inOrder()
			for _, ap := range order {
				if got, want := walk.get(ap), set.get(ap); got != want {
					t.Fatalf("round %d: inOrder get(%s) = %v, want %v", round, ap, got, want)
				}
			}
		}
	}
}

// TestGuessInputs: the guess of a service's table takes its key order
// from the backends the service had and sorts only the new ones; it gives
// what sorting all of them gives: the keys of weight above 0 without a
// problem, in order, with their weights and the ids they had (0 for a new
// one), known when none is new, and nothing when a key is listed twice.
func TestGuessInputs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		keys := randomKeys(r, 30)
		st := &svcState{problems: map[netip.AddrPort]*problem{}}
		var had []beState
		for i, ap := range keys[:20] {
			had = append(had, beState{id: uint32(100 + i), rec: stubRecord(ap, 1)})
		}
		st.backends = backendSet(nil).add(had)
		s := service.Service{Key: service.Key{VIP: netip.MustParseAddr("198.51.100.1"), Port: 80, Proto: service.TCP}}
		if round%2 == 1 {
			s.Key.VIP = netip.MustParseAddr("2001:db8::100")
		}
		for _, i := range r.Perm(len(keys))[:10+r.IntN(20)] {
			ap := keys[i]
			s.Backends = append(s.Backends, service.Backend{Addr: ap.Addr(), Port: ap.Port(), Weight: uint32(r.IntN(3))})
			if r.IntN(10) == 0 {
				st.problems[ap] = &problem{reason: "test"}
			}
		}
		if round%5 == 0 {
			s.Backends = append(s.Backends, s.Backends[r.IntN(len(s.Backends))]) // listed twice
		}
		got, gotKnown := guessInputs(&s, st)
		want, wantKnown := sortedGuess(&s, st)
		if !slices.Equal(got.keys, want.keys) || !slices.Equal(got.weights, want.weights) || !slices.Equal(got.ids, want.ids) || gotKnown != wantKnown {
			t.Fatalf("round %d: guess %+v known %v, want %+v known %v", round, got, gotKnown, want, wantKnown)
		}
	}
}

// sortedGuess is guessInputs done the plain way: every guessed key
// sorted, then looked up.
func sortedGuess(s *service.Service, st *svcState) (in tableInputs, known bool) {
	var keys []netip.AddrPort
	weight := map[netip.AddrPort]uint32{}
	for _, b := range s.Backends {
		ap := backendKey(s, b)
		if b.Weight > 0 && ap.Addr().Is4() == s.Key.VIP.Is4() && st.problems[ap] == nil {
			if _, dup := weight[ap]; dup {
				return tableInputs{}, false
			}
			keys = append(keys, ap)
			weight[ap] = b.Weight
		}
	}
	slices.SortFunc(keys, netip.AddrPort.Compare)
	known = true
	for _, ap := range keys {
		var id uint32
		if be := st.backends.get(ap); be != nil {
			id = be.id
		} else {
			known = false
		}
		in.keys, in.weights, in.ids = append(in.keys, ap), append(in.weights, weight[ap]), append(in.ids, id)
	}
	return in, known
}

// TestMapWriterSpares: a table swapped out of halb_maglev is kept, at
// most maxSpares of them, and written again, whole, as the next table of
// any service: the map that served service 1 serves service 2 next with
// service 2's slots, and a table that names no backend written into a
// spare names none. The handles on the tables installed last are held,
// as many, and let go when their table is deleted.
func TestMapWriterSpares(t *testing.T) {
	lb, err := loadLB(Options{MaglevTableSize: 7, MaxBackends: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	w := newMapWriter(lb)
	defer w.closeTables()
	stage := func(service uint32, idx []int32, ids []uint32) *stagedTable {
		t.Helper()
		st, err := w.draftTable(service).stage(slices.Clone(idx), ids)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	inner := func(service uint32) (uint32, []uint32) {
		t.Helper()
		var id uint32
		if err := lb.objs.HalbMaglev.Lookup(service, &id); err != nil {
			t.Fatalf("maglev table of service %d: %v", service, err)
		}
		table, err := lb.maglevTable(service)
		if err != nil {
			t.Fatal(err)
		}
		return id, table
	}
	install := func(staged ...*stagedTable) {
		t.Helper()
		if err := w.installTables(staged); err != nil {
			t.Fatal(err)
		}
	}
	none := []int32{-1, -1, -1, -1, -1, -1, -1}

	install(stage(1, []int32{0, 1, 0, 1, 0, 1, 0}, []uint32{3, 4}))
	first, _ := inner(1)
	if n := len(w.spareTables()); n != 0 {
		t.Fatalf("%d spares after a first table, want 0", n)
	}
	install(stage(1, []int32{1, 1, 0, 1, 0, 1, 0}, []uint32{3, 4}))
	second, _ := inner(1)
	if n := len(w.spareTables()); n != 1 || second == first {
		t.Fatalf("after service 1's second table (map %d, was %d): %d spares, want 1", second, first, n)
	}
	install(stage(2, []int32{0, 0, 1, 1, 0, 0, 1}, []uint32{5, 6}))
	if id, table := inner(2); id != first || !slices.Equal(table, []uint32{5, 5, 6, 6, 5, 5, 6}) {
		t.Errorf("service 2's table: map %d %v, want the spare %d holding [5 5 6 6 5 5 6]", id, table, first)
	}
	install(stage(1, none, nil))
	if _, table := inner(1); !slices.Equal(table, make([]uint32, 7)) {
		t.Errorf("service 1's empty table %v, want no backend in any slot", table)
	}
	install(stage(2, none, nil))
	if id, table := inner(2); id != second || !slices.Equal(table, make([]uint32, 7)) {
		t.Errorf("service 2's empty table: map %d %v, want the spare %d (service 1's second table) naming no backend", id, table, second)
	}
	// Three tables swapped at once: at most maxSpares of those they
	// replace are kept.
	for range 2 {
		install(stage(1, none, nil), stage(2, none, nil), stage(3, none, nil))
		if n := len(w.spareTables()); n > maxSpares {
			t.Fatalf("%d spares, want at most %d", n, maxSpares)
		}
	}
	if n := len(w.spareTables()); n != maxSpares || len(w.held) > maxSpares {
		t.Errorf("%d spares and %d tables held after two swaps of three tables, want %d and at most %d", n, len(w.held), maxSpares, maxSpares)
	}
	// A table deleted is no longer held (the handle would keep it).
	if err := w.deleteTable(3); err != nil {
		t.Fatal(err)
	}
	for _, h := range w.held {
		if h.service == 3 {
			t.Errorf("service 3's table is held after its deletion")
		}
	}
	for _, m := range w.spareTables() {
		if !lb.fitsMaglev(m) {
			t.Errorf("spare %v is not made as a table is", m)
		}
	}
	// A table of another size, as an earlier halb may have left, is
	// not kept.
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4 * 11, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if lb.fitsMaglev(other) {
		t.Errorf("a map of 11 slots fits tables of 7")
	}
}

// TestGuessStaged: the guess of a table whose backends all have ids is
// built and staged on its own goroutine; the job made of the same inputs
// takes the staged table as it is, and one whose ids differ gets a table
// built again with its own ids, never the guess's.
func TestGuessStaged(t *testing.T) {
	lb, err := loadLB(Options{MaglevTableSize: 7, MaxBackends: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	d := &Datapath{lb: lb, maps: newMapWriter(lb)}
	defer d.maps.closeTables()
	s := service.Service{Key: service.Key{VIP: netip.MustParseAddr("198.51.100.1"), Port: 80, Proto: service.TCP}}
	var had []beState
	for i, a := range []string{"192.0.2.1", "192.0.2.2"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), 80)
		s.Backends = append(s.Backends, service.Backend{Addr: ap.Addr(), Weight: 1})
		had = append(had, beState{id: uint32(3 + i), rec: stubRecord(ap, 1)})
	}
	st := &svcState{id: 1, table: tableSig{1}, backends: backendSet(nil).add(had)}
	for _, tc := range []struct {
		name string
		ids  []uint32
	}{
		{"same ids", []uint32{3, 4}},
		{"other ids", []uint32{5, 6}},
	} {
		g := d.guessTable(&s, st, false)
		if g == nil {
			t.Fatalf("%s: no guess", tc.name)
		}
		<-g.done
		if g.staged == nil || g.err != nil {
			t.Fatalf("%s: guess not staged: %v", tc.name, g.err)
		}
		j := &tableJob{st: st, ids: tc.ids, guess: g, guessed: true}
		if err := d.writeTable(j); err != nil || j.staged == nil {
			t.Fatalf("%s: writeTable: %v, staged %v", tc.name, err, j.staged)
		}
		if tc.name == "same ids" && j.staged != g.staged {
			t.Errorf("%s: the guess's staged table was not taken", tc.name)
		}
		if err := d.maps.installTables([]*stagedTable{j.staged}); err != nil {
			t.Fatal(err)
		}
		table, err := lb.maglevTable(1)
		if err != nil {
			t.Fatal(err)
		}
		n := slotsOf(table)
		if len(n) != 2 || n[tc.ids[0]] == 0 || n[tc.ids[1]] == 0 {
			t.Errorf("%s: table %v, want slots of ids %v only", tc.name, table, tc.ids)
		}
	}
}
