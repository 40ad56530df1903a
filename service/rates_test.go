package service

import (
	"maps"
	"net/netip"
	"testing"
	"time"
)

// Rates are the counters' differences per second; a backend new in the
// second report, or one whose counters went down, has none.
func TestRates(t *testing.T) {
	key := Key{VIP: netip.MustParseAddr("192.0.2.1"), Port: 80, Proto: TCP}
	be := func(addr string, pk, by, nf uint64) BackendReport {
		return BackendReport{Addr: netip.MustParseAddrPort(addr), Stats: Stats{Packets: pk, Bytes: by, NewFlows: nf}}
	}
	one, two, three := netip.MustParseAddrPort("198.51.100.1:80"), netip.MustParseAddrPort("198.51.100.2:80"), netip.MustParseAddrPort("198.51.100.3:80")
	prev := []Report{{Name: "web", Key: key, Stats: Stats{Packets: 100, Bytes: 1000, NewFlows: 10},
		Backends: []BackendReport{be(one.String(), 100, 1000, 10), be(three.String(), 10, 100, 1)}}}
	cur := []Report{{Name: "web", Key: key, Stats: Stats{Packets: 300, Bytes: 5000, NewFlows: 14},
		Backends: []BackendReport{be(one.String(), 50, 500, 4), be(two.String(), 250, 4500, 10), be(three.String(), 30, 300, 1)}}}
	got := Rates(prev, cur, 2*time.Second)
	want := map[RateKey]Rate{
		{Service: key}: {Packets: 100, Bytes: 2000, NewFlows: 2},
		{key, three}:   {Packets: 10, Bytes: 100, NewFlows: 0},
	}
	if !maps.Equal(got, want) {
		t.Errorf("rates:\n got %v\nwant %v", got, want)
	}
	if got := Rates(prev, cur, 0); got != nil {
		t.Errorf("rates over no time: %v", got)
	}
}
