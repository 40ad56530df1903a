package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/frrtest"
)

// fullTableRoutes is how many routes the router of
// TestFRRFullTableCostsLittle sends.
const fullTableRoutes = 10000

// fullTableConf is bgpd announcing fullTableRoutes /64s of 2001:db8::/32
// to the speaker over IPv6.
func fullTableConf(l *lab) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router bgp 65000\n bgp router-id 192.0.2.254\n no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n")
	fmt.Fprintf(&b, " neighbor %s remote-as 65001\n neighbor %s timers connect 1\n address-family ipv6 unicast\n", l.Host6, l.Host6)
	for i := range fullTableRoutes {
		fmt.Fprintf(&b, "  network 2001:db8:%x:%x::/64\n", 0x1000+i/256, i%256)
	}
	fmt.Fprintf(&b, "  neighbor %s activate\n exit-address-family\n", l.Host6)
	return b.String()
}

// A router that sends many routes costs the speaker little and changes
// nothing on the host: 10 000 routes arrive (counted as received), none is
// in GoBGP's RIB or in the kernel, and the memory they take is logged
// (the figure is in BENCHMARKS.md) and bounded loosely here: what GoBGP
// keeps of a rejected route is its Adj-RIB-In entry.
func TestFRRFullTableCostsLittle(t *testing.T) {
	l := inLab(t, 65000, fullTableConf)
	if l == nil {
		return
	}
	heap0, rss0 := memNow(t)
	s := startSpeaker(t, config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peerCfg(l.Router6, 65000)}})
	established(t, l, s, l.Router6, l.Host6)
	start := time.Now()
	frrtest.Eventually(t, 60*time.Second, fmt.Sprintf("%d routes received", fullTableRoutes), func() error {
		if st := peerStatus(t, s, l.Router6); st.Received != fullTableRoutes {
			return fmt.Errorf("received %d", st.Received)
		}
		return nil
	})
	took := time.Since(start)
	heap1, rss1 := memNow(t)
	adjIn := adjInPaths(t, s, l.Router6)
	t.Logf("%d routes received in %s; Go heap in use %.1f -> %.1f MiB (+%.0f B a route), RSS %.1f -> %.1f MiB; Adj-RIB-In holds %d",
		fullTableRoutes, took.Round(time.Millisecond), mib(heap0), mib(heap1), float64(int64(heap1)-int64(heap0))/fullTableRoutes, mib(rss0), mib(rss1), adjIn)
	if got := foreignPaths(t, s); len(got) > 0 {
		t.Errorf("GoBGP's RIB holds %d of the router's routes: the import policy must reject them", len(got))
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	table := netip.MustParsePrefix("2001:db8:1000::/36")
	for _, r := range routes {
		if r.Dst != nil {
			if p, ok := netip.AddrFromSlice(r.Dst.IP); ok && table.Contains(p) {
				t.Fatalf("the router's route entered the kernel: %v", r)
			}
		}
	}
	// Loose: a few hundred bytes a route is what a stored path costs;
	// 64 MiB would be a leak or a copy per route per peer.
	if grew := int64(heap1) - int64(heap0); grew > 64<<20 {
		t.Errorf("the Go heap grew by %.1f MiB for %d rejected routes", mib(uint64(grew)), fullTableRoutes)
	}
}

// adjInPaths counts the paths GoBGP keeps in peer's Adj-RIB-In.
func adjInPaths(t *testing.T, s *Speaker, peer netip.Addr) int {
	t.Helper()
	s.op.Lock()
	srv := s.srv
	s.op.Unlock()
	n := 0
	err := srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_IN, Name: peer.String(), Family: gobgp.RF_IPv6_UC},
		func(_ gobgp.NLRI, paths []*apiutil.Path) { n += len(paths) })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// memNow is the Go heap in use after a collection, and the process's
// resident set, in bytes.
func memNow(t *testing.T) (heap, rss uint64) {
	t.Helper()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss = kb << 10
		}
	}
	return m.HeapInuse, rss
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
