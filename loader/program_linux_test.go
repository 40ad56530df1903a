package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/internal/netnstest"
)

// TestProgramLoadedLaterSharesMaps loads the maps with halb_xdp_lb alone,
// as NewDatapath does for an XDP data path, and halb_tc_lb only when it
// is asked for: it must read and write the very maps halb_xdp_lb does,
// the sections of their variables (halb_nexthop_gen, halb_maglev_size)
// included, or a fallback to tc would balance from empty maps.
func TestProgramLoadedLaterSharesMaps(t *testing.T) {
	netnstest.Require(t)
	opts := Options{MaglevTableSize: 251, ConntrackEntries: 1024, MaxBackends: 1024}
	spec, maglev, err := newSpec(opts)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := load(spec, maglev, opts, &ebpf.CollectionOptions{}, halbProgHalbXdpLb)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	if got := len(lb.loaded()); got != 1 || lb.objs.HalbTcLb != nil {
		t.Fatalf("%d programs loaded at first, want halb_xdp_lb alone", got)
	}
	xdp, err := lb.program(halbProgHalbXdpLb)
	if err != nil || xdp != lb.objs.HalbXdpLb {
		t.Fatalf("halb_xdp_lb asked for again: %v, %v; want the one loaded", xdp, err)
	}
	tc, err := lb.program(halbProgHalbTcLb)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := lb.program(halbProgHalbTcLb); again != tc {
		t.Error("halb_tc_lb loaded twice")
	}
	if got := len(lb.loaded()); got != 2 {
		t.Errorf("%d programs loaded, want 2", got)
	}
	mapsOf := func(p *ebpf.Program) []ebpf.MapID {
		t.Helper()
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids, ok := info.MapIDs()
		if !ok {
			t.Fatal("the kernel names no maps of the program")
		}
		return ids
	}
	shared := map[ebpf.MapID]string{}
	for name, m := range lb.shared {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		shared[id] = name
	}
	for _, p := range []*ebpf.Program{xdp, tc} {
		used := map[string]bool{}
		for _, id := range mapsOf(p) {
			if shared[id] == "" {
				t.Errorf("%s uses map id %d, which is none of the maps loaded first: made anew for it", programName(ebpf.ProgramID(idOf(t, p))), id)
			}
			used[shared[id]] = true
		}
		for _, name := range []string{".bss", ".rodata", halbMapHalbBackends, halbMapHalbMaglev} {
			if !used[name] {
				t.Errorf("program %d does not use %s", idOf(t, p), name)
			}
		}
	}
}

func idOf(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	id, ok := idOfProg(p)
	if !ok {
		t.Fatal("program has no id")
	}
	return id
}
