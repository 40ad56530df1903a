package loader

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// TestEachBatchedReadsEveryEntry checks adopt's batched read of
// halb_backends against the walk one key at a time, on a map of several
// batches with records in the first, a middle and the last one.
func TestEachBatchedReadsEveryEntry(t *testing.T) {
	netnstest.Require(t)
	const size = 3*batchSize + 7
	lb, err := loadLB(Options{MaglevTableSize: 251, ConntrackEntries: 1024, MaxBackends: size})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.close()
	for _, id := range []uint32{1, batchSize, batchSize + 1, 2*batchSize + 5, size - 1} {
		be := Backend{Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(id)}), Port: 80, Service: id % 7, MAC: []byte{2, 0, 0, 0, 0, byte(id)}, SrcMAC: []byte{2, 0, 0, 0, 1, 0}, Ifindex: 1}
		if err := lb.putBackend(id, be); err != nil {
			t.Fatal(err)
		}
	}
	read := func(walk func(*kernelLB, func(uint32, halbBackend)) error) map[uint32]halbBackend {
		t.Helper()
		got := map[uint32]halbBackend{}
		if err := walk(lb, func(id uint32, b halbBackend) { got[id] = b }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	batched := read((*kernelLB).eachBackend)
	oneByOne := read(func(lb *kernelLB, f func(uint32, halbBackend)) error {
		return each(lb.objs.HalbBackends, halbMapHalbBackends, f)
	})
	if len(batched) != size {
		t.Errorf("batched read gave %d entries, want all %d", len(batched), size)
	}
	if !maps.Equal(batched, oneByOne) {
		t.Errorf("batched read differs from the walk one key at a time")
	}
	if batched[size-1].Service != (size-1)%7 || batched[1].Port == 0 {
		t.Errorf("records read back: last %+v, first %+v", batched[size-1], batched[1])
	}
}
