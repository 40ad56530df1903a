package loader

import (
	"encoding/binary"
	"testing"
)

// TestMapLayout checks, without loading anything into the kernel, that
// each map's key and value and each global variable of the compiled
// program have the size of the Go type the loader writes and reads them
// with, and that these sizes are the ones bpf/halb.h asserts
// (HALB_ASSERT_SIZE). The C and the Go side are each pinned to the same
// numbers: a struct that changes on one side only fails here or does not
// compile, rather than failing at the first map write on a live node.
func TestMapLayout(t *testing.T) {
	spec, err := loadHalb()
	if err != nil {
		t.Fatal(err)
	}
	maps := []struct {
		name       string
		key, value any
		// keySize and valueSize are halb.h's asserted sizes.
		keySize, valueSize int
	}{
		{halbMapHalbServices, halbServiceKey{}, halbService{}, 20, 8},
		{halbMapHalbServiceIds, uint32(0), halbServiceSlot{}, 4, 28},
		{halbMapHalbVips, halbVipKey{}, halbVip{}, 20, 4},
		{halbMapHalbBackends, uint32(0), halbBackend{}, 4, 60},
		{halbMapHalbMaglev, uint32(0), uint32(0), 4, 4}, // the value is an inner map's id
		{halbMapHalbCt, halbFlow{}, halbCtEntry{}, 40, 16},
		{halbMapHalbTxPorts, uint32(0), uint32(0), 4, 4},
		{halbMapHalbServiceStats, uint32(0), halbStats{}, 4, 24},
		{halbMapHalbBackendStats, uint32(0), halbStats{}, 4, 24},
		{halbMapHalbNexthops, uint32(0), halbNexthop{}, 4, 32},
		{halbMapHalbLocalMacs, halbLocalMac{}, halbLocalMacVia{}, 12, 4},
		{halbMapHalbMacCache, uint32(0), halbLocalMacCache{}, 4, 16},
		{halbMapHalbClock, uint32(0), halbClock{}, 4, 16},
		{halbMapHalbDrops, uint32(0), uint64(0), 4, 8},
		{halbMapHalbEvents, uint32(0), uint64(0), 4, 8},
		{halbMapHalbNatReplies, halbBackendKey{}, halbNatReply{}, 20, 28},
		{halbMapHalbReplyStats, uint32(0), halbStats{}, 4, 24},
		{halbMapHalbReplyHops, halbReplyHopKey{}, halbNexthop{}, 20, 32},
		{halbMapHalbNeighWanted, halbReplyHopKey{}, uint64(0), 20, 8},
		{halbMapHalbFnat, halbFnatKey{}, halbFnatFlow{}, 40, 56},
		{halbMapHalbReplyFlows, halbFlow{}, halbReplyFlow{}, 40, 96},
		{halbMapHalbReplyScratch, uint32(0), halbReplyScratch{}, 4, 136},
	}
	seen := map[string]bool{}
	for _, m := range maps {
		seen[m.name] = true
		ms, ok := spec.Maps[m.name]
		if !ok {
			t.Errorf("%s: not in the program", m.name)
			continue
		}
		if got := binary.Size(m.key); got != m.keySize || int(ms.KeySize) != m.keySize {
			t.Errorf("%s key: %T is %d bytes, the map's key %d, halb.h asserts %d", m.name, m.key, got, ms.KeySize, m.keySize)
		}
		if got := binary.Size(m.value); got != m.valueSize || int(ms.ValueSize) != m.valueSize {
			t.Errorf("%s value: %T is %d bytes, the map's value %d, halb.h asserts %d", m.name, m.value, got, ms.ValueSize, m.valueSize)
		}
	}
	// The Maglev tables the loader makes from the template.
	inner := spec.Maps[halbMapHalbMaglev].InnerMap
	if inner == nil || inner.KeySize != 4 || inner.MaxEntries != 1 || inner.ValueSize != 4*DefaultMaglevTableSize || inner.Flags != 0 {
		t.Errorf("%s inner map: %+v, want one element holding %d uint32 backend ids, no flags", halbMapHalbMaglev, inner, DefaultMaglevTableSize)
	}
	for name := range spec.Maps {
		if !seen[name] && !isDataSection(name) {
			t.Errorf("%s: a map this test does not know: add the Go types the loader uses for it", name)
		}
	}

	vars := []struct {
		name  string
		value any
	}{
		{halbVarHalbMaglevSize, uint32(0)},
		{halbVarHalbNexthopGen, uint32(0)},
		{halbVarHalbLocalMacsGen, uint32(0)},
		{halbVarHalbVipLast, [256]uint8{}},
		{halbVarHalbNatLast, [256]uint8{}},
		{halbVarHalbSnatPortFirst, uint32(0)},
		{halbVarHalbFnatLast, [256]uint8{}},
		{halbVarHalbSnatPortCount, uint32(0)},
	}
	for _, v := range vars {
		vs, ok := spec.Variables[v.name]
		if !ok {
			t.Errorf("%s: not in the program", v.name)
			continue
		}
		if got := binary.Size(v.value); got != int(vs.Size()) {
			t.Errorf("%s: %T is %d bytes, the variable %d", v.name, v.value, got, vs.Size())
		}
	}
}

// isDataSection tells the maps that hold the program's global variables
// (.bss, .data, .rodata) from the maps it declares.
func isDataSection(name string) bool {
	return len(name) > 0 && name[0] == '.'
}
