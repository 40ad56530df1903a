package loader

import (
	"slices"
	"testing"
)

func TestServiceIDs(t *testing.T) {
	s := newServiceIDs(4)
	if !s.mark(1) || s.mark(1) || s.mark(4) {
		t.Fatal("mark: want true for a free id in range, false for a used or out-of-range one")
	}
	var got []uint32
	for {
		id, ok := s.take()
		if !ok {
			break
		}
		got = append(got, id)
	}
	if want := []uint32{0, 2, 3}; !slices.Equal(got, want) {
		t.Fatalf("took %v, want %v", got, want)
	}
	s.free(2)
	if id, ok := s.take(); !ok || id != 2 {
		t.Fatalf("after freeing 2 took %d (%v), want 2: service IDs are reused lowest first", id, ok)
	}
}

// A freed backend ID comes back only after every other free ID, so that
// conntrack entries that still name it have long been rescheduled.
func TestBackendIDs(t *testing.T) {
	for _, c := range []struct {
		name string
		n    uint32
		mark []uint32 // found in the maps at start
		ops  []int    // > 0: free that id; 0: take one
		want []uint32 // the ids taken, in order
	}{
		{name: "fresh ids in order, 0 never", n: 4, ops: []int{0, 0, 0, 0}, want: []uint32{1, 2, 3}},
		{name: "a freed id waits behind the never used", n: 5, ops: []int{0, 0, 1, 0, 0, 0, 0}, want: []uint32{1, 2, 3, 4, 1}},
		{name: "freed ids come back in the order they were freed", n: 4, ops: []int{0, 0, 0, 2, 1, 0, 0}, want: []uint32{1, 2, 3, 2, 1}},
		{name: "ids found at start are not handed out", n: 5, mark: []uint32{2, 3}, ops: []int{0, 0, 0}, want: []uint32{1, 4}},
		{name: "an id found at start and freed goes to the back", n: 5, mark: []uint32{1}, ops: []int{1, 0, 0, 0, 0}, want: []uint32{2, 3, 4, 1}},
		{name: "freeing a free id changes nothing", n: 3, ops: []int{2, 0, 0, 0}, want: []uint32{1, 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBackendIDs(c.n)
			for _, id := range c.mark {
				if !b.mark(id) {
					t.Fatalf("mark(%d) = false", id)
				}
			}
			var got []uint32
			for _, op := range c.ops {
				if op > 0 {
					b.free(uint32(op))
					continue
				}
				if id, ok := b.take(); ok {
					got = append(got, id)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("took %v, want %v", got, c.want)
			}
		})
	}
}
