// Package maglev builds the weighted Maglev lookup table of a service
// (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, §3.4). halb's XDP program hashes a flow's 5-tuple, or
// only its source address when the service is persistent, and sends the flow
// to the backend in slot hash % M of the service's table.
//
// Both nodes of a pair build their tables on their own, without talking to
// each other, and a flow keeps its backend when the VIP moves only if the two
// tables agree. So a table must be a function of the backends' keys and
// weights and of M, and of nothing else: never of the order the backends are
// given in, of map iteration order, of a per-process hash seed or of the
// architecture. Build sorts the backends by key and hashes keys with the
// fixed hashes in hash.go; TestGolden pins the result.
//
// This package is pure: it must never touch the kernel nor write a map.
// The loader writes the tables it builds.
package maglev

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Backend is one entry of a service's backend list as the table sees it.
type Backend struct {
	// Key is the backend's identity, the same on both nodes, such as
	// netip.AddrPort.String() ("198.51.100.11:80"). The backend's
	// permutation of the table's slots derives from it alone, so a backend
	// keeps its preferred slots when others come and go.
	Key string
	// Weight is the backend's share of the slots relative to the others;
	// 0 drains it: it gets no slot.
	Weight uint32
}

// NoBackend fills every slot of a table for a service with no backend of
// weight above 0. The data path treats it as "no backend": drop, or use the
// service's sorry backend.
const NoBackend int32 = -1

// MaxSize is the largest table Build accepts, the same bound as the
// configuration's datapath.maglev_table_size. It keeps every product in the
// turn order within 64 bits and a table within 64 MiB.
const MaxSize = 1 << 24

// Errors Build returns, wrapped with the values at fault.
var (
	ErrNotPrime     = errors.New("not a prime")
	ErrTooFewSlots  = errors.New("fewer slots than live backends")
	ErrTooManySlots = errors.New("more slots than the largest table")
	ErrDuplicateKey = errors.New("key appears more than once")
)

// Build returns a table of m slots, each holding the index in backends of
// the backend that owns it. m must be a prime no larger than MaxSize and no
// smaller than N, the number of backends of weight above 0; it should be
// 100·N or more, because a backend's slots are within one of its share
// M·w/Σw, so flows spread evenly to within about N/M, and because fewer flows
// move when a backend comes or goes (TestDisruption). Keys must be unique.
//
// The table holds NoBackend in every slot, and no error is returned, when no
// backend has a weight above 0, so that a service whose backends are all
// drained or down can be written to the data path like any other.
//
// The result depends only on the set of (Key, Weight) pairs and on m: the
// same backends in another order give a table whose slots name the same keys
// (the indexes differ as the positions in backends do).
func Build(backends []Backend, m int) ([]int32, error) {
	if err := checkSize(m); err != nil {
		return nil, err
	}
	table := make([]int32, m)
	if err := BuildInto(table, backends); err != nil {
		return nil, err
	}
	return table, nil
}

// BuildInto is Build into a table the caller gives, whose length is m:
// a caller that builds many tables, each only to copy it elsewhere (the
// loader writes them into the kernel's maps), lends the same one to every
// build rather than allocating 4·m bytes for each (a quarter of a GiB for
// 1000 tables of 65537 slots). Every slot is written. On an error the
// table's contents are unspecified.
func BuildInto(table []int32, backends []Backend) error {
	m := len(table)
	if err := checkSize(m); err != nil {
		return err
	}
	live, err := liveInKeyOrder(backends)
	if err != nil {
		return err
	}
	if len(live) > m {
		return fmt.Errorf("maglev table size %d: %w (%d); use a prime of at least %d, better 100 times that", m, ErrTooFewSlots, len(live), nextPrime(len(live)))
	}
	if len(live) == 0 {
		for i := range table {
			table[i] = NoBackend
		}
		return nil
	}
	weights := make([]uint32, len(live))
	for j, i := range live {
		weights[j] = backends[i].Weight
	}
	newFiller(table, backends, live).fill(weights)
	return nil
}

// checkSize tells a table size Build cannot take, and the fix.
func checkSize(m int) error {
	if m > MaxSize {
		return fmt.Errorf("maglev table size %d: %w; use a prime up to %d such as 65537", m, ErrTooManySlots, MaxSize)
	}
	if !isPrime(m) {
		return fmt.Errorf("maglev table size %d: %w; use a prime such as %d", m, ErrNotPrime, nextPrime(m))
	}
	return nil
}

// liveInKeyOrder returns the indexes of the backends of weight above 0,
// ordered by key: the turn order, and so the table, follows the keys'
// order, never the caller's. It refuses a key given twice.
func liveInKeyOrder(backends []Backend) ([]int32, error) {
	order := make([]int32, len(backends))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		return strings.Compare(backends[a].Key, backends[b].Key)
	})
	// Duplicates end up side by side.
	for i := 1; i < len(order); i++ {
		a, b := order[i-1], order[i]
		if backends[a].Key == backends[b].Key {
			a, b = min(a, b), max(a, b)
			return nil, fmt.Errorf("maglev backends[%d] and backends[%d] %q: %w", a, b, backends[a].Key, ErrDuplicateKey)
		}
	}
	live := order[:0]
	for _, i := range order {
		if backends[i].Weight > 0 {
			live = append(live, i)
		}
	}
	return live, nil
}

// cursor walks one backend's permutation of the slots: offset, offset+skip,
// offset+2·skip, ... modulo M (§3.4). M is prime and 0 < skip < M, so the
// walk visits every slot once in M steps. Only the next position is kept,
// not the paper's precomputed permutation[i][j], which would be N·M entries:
// 262 MB for 1000 backends and M = 65537.
type cursor struct {
	next  uint32 // the next slot this backend prefers
	skip  uint32
	index int32 // position in the caller's backends: what the slots hold
}

type filler struct {
	table   []int32
	used    []uint64 // a bit per slot, set once claimed: 8 KiB for M = 65537, in L1
	m       uint32
	cursors []cursor // in key order
}

func newFiller(table []int32, backends []Backend, live []int32) *filler {
	m := uint64(len(table))
	f := &filler{
		table:   table,
		used:    make([]uint64, (m+63)/64),
		m:       uint32(m),
		cursors: make([]cursor, len(live)),
	}
	for j, i := range live {
		key := backends[i].Key
		f.cursors[j] = cursor{
			next:  uint32(keyHash(offsetSeed, key) % m),
			skip:  uint32(keyHash(skipSeed, key)%(m-1) + 1),
			index: i,
		}
	}
	return f
}

// claim gives c the first slot in its permutation that no one holds yet.
// The caller makes sure one is left. The walks are where the time goes:
// up to about M·ln M steps in all (7 to 11 a slot for M = 65537 and 10 to
// 1000 backends), most of them near the end of the fill, when few slots are
// left.
func (f *filler) claim(c *cursor) {
	next, skip, m := c.next, c.skip, f.m
	used := f.used
	for {
		s := next
		// next+skip < 2M ≤ 2^25, so it neither overflows nor, as an
		// int32, goes negative; wrap without a branch, which would be
		// mispredicted on about half the steps.
		next += skip
		d := next - m
		next = d + m&uint32(int32(d)>>31)
		if used[s>>6]&(1<<(s&63)) == 0 {
			used[s>>6] |= 1 << (s & 63)
			f.table[s] = c.index
			c.next = next
			return
		}
	}
}

// fill runs the turns, until the table is full. The paper's loop (§3.4)
// gives the backends one turn each, in a fixed order, round
// after round. halb generalises it to weights: backend i takes its k-th turn
// (k = 1, 2, ...) at time (k - ½) / w_i; turns at the same time go in key
// order. This is Webster's (Sainte-Laguë's) divisor method played out in
// time: after any number of turns, and so in the full table, each backend
// holds about its share of the slots, M·w_i / Σw, rounded to a neighbouring
// integer (TestWeightsRandom measures how close), without the bias to heavy
// backends that k / w_i would have. A heavy backend's turns are spread
// evenly through the fill rather than taken w at a time, so it meets the
// others in contests for slots as often as its weight says. With equal
// weights every time is a tie and the turns are exactly the paper's, each
// backend ending with ⌊M/N⌋ or ⌈M/N⌉ slots.
//
// Backends of equal weight take their turns at the same times, so the turns
// are scheduled per weight, not per backend: a min-heap holds one group per
// distinct weight, and the groups due at the earliest time take their turns
// together, merged into key order. With one weight, or a few, the heap costs
// next to nothing beside the walks; a heap of backends would cost log N
// mispredicted comparisons per slot (in BenchmarkBuild, 15 ms for 1000
// backends of weights 1-10 against 3 ms for the walks). Only when most
// weights differ does the heap grow towards N groups and cost that again
// (13 ms for 1000 backends of weights 1 to 1000).
func (f *filler) fill(weights []uint32) {
	byWeight, h := groups(weights)
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i, h[i])
	}
	var due []group
	var merge merger
	left := len(f.table)
	for {
		// Usually one group is due on its own: it takes its turns and
		// goes back down the heap in one pass.
		ranks := byWeight[h[0].start:h[0].end]
		tied := len(h) > 1 && h.tied(0)
		if tied {
			due = due[:0]
			for len(due) == 0 || len(h) > 0 && together(h[0], due[0]) {
				due = append(due, h.pop())
			}
			ranks = merge.ranks(byWeight, due, len(weights))
		}
		for _, r := range ranks {
			f.claim(&f.cursors[r])
			if left--; left == 0 {
				return
			}
		}
		if !tied {
			g := h[0]
			g.turns++
			h.down(0, g)
			continue
		}
		for _, g := range due {
			g.turns++
			h.push(g)
		}
	}
}

// group is the backends of one weight: byWeight[start:end] holds their
// ranks, their positions in key order, ascending.
type group struct {
	weight     uint32
	turns      uint32 // turns each backend in the group has taken
	start, end uint32
}

// groups returns the ranks of the live backends ordered by weight and then
// rank, and a group for each distinct weight. weights are the live
// backends' weights in key order.
func groups(weights []uint32) ([]int32, groupHeap) {
	byWeight := make([]int32, len(weights))
	for i := range byWeight {
		byWeight[i] = int32(i)
	}
	slices.SortFunc(byWeight, func(a, b int32) int {
		return cmp.Or(cmp.Compare(weights[a], weights[b]), cmp.Compare(a, b))
	})
	var h groupHeap
	for i := 0; i < len(byWeight); {
		g := group{weight: weights[byWeight[i]], start: uint32(i)}
		for i < len(byWeight) && weights[byWeight[i]] == g.weight {
			i++
		}
		g.end = uint32(i)
		h = append(h, g)
	}
	return byWeight, h
}

// times returns the times of a's and b's next turns, (2·turns + 1) /
// (2·weight), as numerators over a common denominator: 2·turns+1 ≤
// 2·MaxSize+1 < 2^26 and weight < 2^32, so the products fit in 64 bits.
func times(a, b group) (ta, tb uint64) {
	return (2*uint64(a.turns) + 1) * uint64(b.weight), (2*uint64(b.turns) + 1) * uint64(a.weight)
}

// before reports whether a's next turn comes before b's.
func before(a, b group) bool {
	ta, tb := times(a, b)
	return ta < tb
}

// together reports whether a's and b's next turns come at the same time.
func together(a, b group) bool {
	ta, tb := times(a, b)
	return ta == tb
}

// groupHeap is a binary min-heap of groups on the time of their next turn.
// Its elements hold no pointers, so moving them costs no write barriers.
type groupHeap []group

// tied reports whether a child of node i is due at the same time as i. For
// the root that is enough to know whether any group is due with it: a group
// due with the root has every ancestor due with it too, a child of the root
// among them.
func (h groupHeap) tied(i int) bool {
	c := 2*i + 1
	return c < len(h) && together(h[c], h[i]) || c+1 < len(h) && together(h[c+1], h[i])
}

func (h *groupHeap) push(g group) {
	*h = append(*h, g)
	q := *h
	i := len(q) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !before(g, q[p]) {
			break
		}
		q[i] = q[p]
		i = p
	}
	q[i] = g
}

func (h *groupHeap) pop() group {
	q := *h
	g := q[0]
	*h = q[:len(q)-1]
	if len(*h) > 0 {
		h.down(0, q[len(q)-1])
	}
	return g
}

// down puts g at node i or below it, moving earlier groups up into the hole.
func (h groupHeap) down(i int, g group) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && before(h[c+1], h[c]) {
			c++
		}
		if !before(h[c], g) {
			break
		}
		h[i] = h[c]
		i = c
	}
	h[i] = g
}

// merger puts the ranks of groups due at the same time into key order.
type merger struct {
	marks []uint64
	out   []int32
}

// ranks returns the ranks of the groups in due, ascending. They are
// disjoint and each group's are ascending. Marking them in a bitmap of all
// n ranks and reading it back costs O(k + n/64) for k ranks, a sort
// O(k log k): it takes the cheaper.
func (m *merger) ranks(byWeight []int32, due []group, n int) []int32 {
	m.out = m.out[:0]
	for _, g := range due {
		m.out = append(m.out, byWeight[g.start:g.end]...)
	}
	k := len(m.out)
	if k*bits.Len(uint(k)) < n/64 {
		slices.Sort(m.out)
		return m.out
	}
	if m.marks == nil {
		m.marks = make([]uint64, (n+63)/64)
	}
	for _, r := range m.out {
		m.marks[r/64] |= 1 << (r % 64)
	}
	m.out = m.out[:0]
	for w, word := range m.marks {
		for word != 0 {
			m.out = append(m.out, int32(w*64+bits.TrailingZeros64(word)))
			word &= word - 1
		}
		m.marks[w] = 0
	}
	return m.out
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// nextPrime returns the smallest prime ≥ n, for error messages.
func nextPrime(n int) int {
	for !isPrime(n) {
		n++
	}
	return n
}
