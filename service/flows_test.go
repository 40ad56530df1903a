package service

import (
	"cmp"
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// manyFlows is n flows over three services and two VIPs each (IPv4 and
// IPv6, ports 53 and 80), in a shuffled order.
func manyFlows(n int) []Flow {
	r := rand.New(rand.NewPCG(1, 2))
	vips := []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
	out := make([]Flow, n)
	for i := range out {
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(r.IntN(256))})
		out[i] = Flow{
			Client:  netip.AddrPortFrom(client, uint16(r.IntN(65536))),
			Key:     Key{VIP: vips[r.IntN(len(vips))], Port: []uint16{53, 80}[r.IntN(2)], Proto: []Protocol{TCP, UDP}[r.IntN(2)]},
			Service: []string{"dns", "web", ""}[r.IntN(3)],
		}
	}
	return out
}

// Sort orders by service, VIP (as addresses, not as text: 192.0.2.9
// before 192.0.2.10), port, protocol, then client, and allocates nothing:
// it used to format both keys at every comparison, two fmt.Sprintf each,
// which made sorting 65 536 flows take seconds of the daemon's 4.
func TestFlowListSort(t *testing.T) {
	orig := manyFlows(20000)
	l := FlowList{Flows: slices.Clone(orig)}
	l.Sort()
	for i := 1; i < len(l.Flows); i++ {
		a, b := l.Flows[i-1], l.Flows[i]
		if a.Service > b.Service || a.Service == b.Service && (a.Key.VIP.Compare(b.Key.VIP) > 0 ||
			a.Key.VIP == b.Key.VIP && (a.Key.Port > b.Key.Port || a.Key.Port == b.Key.Port && a.Key.Proto > b.Key.Proto)) {
			t.Fatalf("flow %d %+v before %+v", i-1, a, b)
		}
	}
	allocs := testing.AllocsPerRun(5, func() {
		copy(l.Flows, orig)
		l.Sort()
	})
	if allocs != 0 {
		t.Errorf("sorting %d flows allocated %.0f times, want none", len(orig), allocs)
	}
}

// Key.Compare against the order of its fields.
func TestKeyCompare(t *testing.T) {
	v4, v4b, v6 := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::1")
	ordered := []Key{{v4, 53, TCP}, {v4, 53, UDP}, {v4, 80, TCP}, {v4b, 1, TCP}, {v6, 1, TCP}}
	for i, a := range ordered {
		for j, b := range ordered {
			if got, want := a.Compare(b), cmp.Compare(i, j); got != want {
				t.Errorf("%s.Compare(%s) = %d, want %d", a, b, got, want)
			}
		}
	}
}

// BenchmarkFlowListSort sorts as many flows as the listing bound lets one
// list hold (MaxFlowLimit), from the same shuffled order each round.
func BenchmarkFlowListSort(b *testing.B) {
	orig := manyFlows(MaxFlowLimit)
	l := FlowList{Flows: slices.Clone(orig)}
	b.ReportAllocs()
	for b.Loop() {
		copy(l.Flows, orig)
		l.Sort()
	}
}

// slowLister lists its flows whatever its context says, as a lister that
// overran its time would, and then ends the listing's context.
type slowLister struct {
	fakeDatapath
	flows  []Flow
	cancel context.CancelFunc
}

func (s *slowLister) Flows(_ context.Context, q FlowQuery) (FlowList, error) {
	var out FlowList
	for _, f := range s.flows {
		out.Keep(q, f)
	}
	s.cancel()
	return out, nil
}

// Split lists both halves' flows in one sorted list within one limit, and
// fails, rather than sort, when its context ended while a half listed.
func TestSplitFlows(t *testing.T) {
	flows := manyFlows(30)
	first := &slowLister{flows: flows[:20], cancel: func() {}}
	second := &slowLister{flows: flows[20:], cancel: func() {}}
	s := &Split{First: first, OpenSecond: func(context.Context) (Datapath, error) { return second, nil }}
	s.second = second
	list, err := s.Flows(context.Background(), FlowQuery{Limit: 25})
	if err != nil || len(list.Flows) != 25 || list.Total != 30 {
		t.Fatalf("listed %d of %d (%v), want 25 of 30", len(list.Flows), list.Total, err)
	}
	if !slices.IsSortedFunc(list.Flows, func(a, b Flow) int { return cmp.Compare(a.Service, b.Service) }) {
		t.Error("the listing is not sorted by service")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	second.cancel = cancel
	if _, err := s.Flows(ctx, FlowQuery{Limit: 25}); !errors.Is(err, context.Canceled) {
		t.Errorf("a context that ended while listing: %v, want context.Canceled", err)
	}
}
