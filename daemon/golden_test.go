package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/internal/golden"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
	"github.com/halb-lb/halb/vrrp"
)

// The golden files are what an operator reads: the bytes of `halb status
// --json` and of a /metrics scrape (less the Go and process collectors,
// which describe the test binary). They are rendered from fixed parts, one
// case per kind of data path, and compared byte for byte, so that a change
// to how the daemon reaches its parts cannot change what it shows. Only a
// change meant to show something else rewrites them (go test -run
// TestGolden ./daemon/ -update), and its diff is the review.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			statusHandler(c.parts, slog.New(slog.DiscardHandler)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/status", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("status: %d %s", rec.Code, rec.Body)
			}
			compareGolden(t, c.name+".status.json", rec.Body.Bytes())
			compareGolden(t, c.name+".metrics.txt", scrape(t, c.parts))
		})
	}
}

// scrape is what /metrics serves from the daemon's own collectors.
func scrape(t *testing.T, o observed) []byte {
	t.Helper()
	latency := newCheckLatency()
	for _, l := range []struct {
		service, check string
		seconds        float64
	}{{"web", "http", 0.0004}, {"web", "http", 0.003}, {"web", "http", 2.5}, {"dns", "udp", 0.001}, {"db", "tcp", 9}} {
		latency.WithLabelValues(l.service, l.check).Observe(l.seconds)
	}
	reg := prometheus.NewRegistry()
	reload := &lastReload{}
	reload.record(true, time.Date(2026, 12, 6, 15, 0, 0, 500e6, time.UTC))
	reload.record(false, time.Date(2026, 12, 6, 16, 30, 0, 0, time.UTC))
	reg.MustRegister(collector{o}, selfCollector{BuildInfo{"1.2.3", "0123abc", "go1.26.0"}, reload}, latency)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.Bytes()
}

func compareGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden.Compare(t, filepath.Join("testdata", "golden", name), got)
}

// fixedParts are a daemon's parts frozen at one moment.
type fixedParts struct {
	name   string
	dp     service.Datapath
	insts  []vrrp.Status
	health []health.Status
	accept map[netip.Addr]uint64
	bgp    *BGPStatus
	ov     map[health.Key]Override
}

func (f fixedParts) servingDatapath() (string, service.Datapath) { return f.name, f.dp }
func (f fixedParts) instances() []vrrp.Status                    { return f.insts }
func (f fixedParts) backends() []health.Status                   { return f.health }
func (f fixedParts) acceptDrops() map[netip.Addr]uint64          { return f.accept }
func (f fixedParts) bgpState() *BGPStatus                        { return f.bgp }
func (f fixedParts) backendOverrides() map[health.Key]Override   { return f.ov }

type goldenCase struct {
	name  string
	parts fixedParts
}

func goldenCases() []goldenCase {
	since := time.Date(2026, 12, 6, 16, 0, 0, 0, time.UTC)
	insts := []vrrp.Status{
		{Name: "VI_1", VRID: 51, Interface: "eth0", State: vrrp.Master, Priority: 150, Since: since, Reason: "higher priority than the master's",
			Sent: 1200, Received: 3, Transitions: 2, Drops: map[string]uint64{"auth": 4, "ttl": 1}, Conflicts: map[string]uint64{"192.0.2.100": 2},
			VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24"), netip.MustParsePrefix("2001:db8::100/64")}},
		{Name: "VI_2", VRID: 52, Interface: "eth1", State: vrrp.Fault, Priority: 100, Since: since.Add(-time.Hour), Reason: "fault",
			Faults: []string{"interface eth1 down", "track script chk_db failed"}, Drops: map[string]uint64{}, Conflicts: map[string]uint64{},
			Tracking:   []string{"interface eth1 down (weight 0)", "file /run/halb/weight-db holds 3 (weight -5)", "process haproxy: 1 running, min_count 1 (weight -50)"},
			VirtualIPs: []netip.Prefix{netip.MustParsePrefix("203.0.113.5/24")}},
		{Name: "VI_3", VRID: 53, Interface: "eth0", State: vrrp.Backup, Priority: 90, Since: since, Reason: "released by the operator", Released: true,
			Received: 700, Transitions: 1, Drops: map[string]uint64{}, Conflicts: map[string]uint64{}},
	}
	backends := []health.Status{
		{Key: health.Key{Service: "dns", Backend: netip.MustParseAddrPort("198.51.100.21:53")}, Check: "udp", State: health.Healthy, Confirmed: true, Successes: 9},
		{Key: health.Key{Service: "web", Backend: netip.MustParseAddrPort("198.51.100.11:80")}, Check: "http", State: health.Healthy, Confirmed: true, Successes: 3},
		{Key: health.Key{Service: "web", Backend: netip.MustParseAddrPort("198.51.100.12:80")}, Check: "http", State: health.Unhealthy, Confirmed: true, Failures: 4,
			Last: health.Result{Err: errors.New("GET /healthz: status 503, want one of [200]")}},
		{Key: health.Key{Service: "web6", Backend: netip.MustParseAddrPort("[2001:db8::11]:443")}, Check: "tcp", State: health.Healthy},
	}
	accept := map[netip.Addr]uint64{netip.MustParseAddr("192.0.2.100"): 17, netip.MustParseAddr("2001:db8::100"): 0}
	five := 5
	ov := map[health.Key]Override{ // one drained, one reweighted, one without a health check
		{Service: "web", Backend: netip.MustParseAddrPort("198.51.100.11:80")}:  {Drained: true, By: "uid 0 (root) pid 4242", Since: since},
		{Service: "dns", Backend: netip.MustParseAddrPort("198.51.100.21:53")}:  {Weight: &five, By: "uid 0 (root) pid 4243", Since: since},
		{Service: "db", Backend: netip.MustParseAddrPort("198.51.100.31:5432")}: {Drained: true, By: "uid 0 (root) pid 4244", Since: since},
	}

	xdp := func() service.Datapath { return &goldenBPF{} }
	split := &service.Split{First: xdp(), OpenSecond: func(context.Context) (service.Datapath, error) { return goldenIPVS{}, nil }}
	// The IPVS-only scheduler opens the second half, as in datapath.mode auto.
	if err := split.Apply(context.Background(), []service.Service{{Name: "db", Forward: service.NAT, Scheduler: "wlc"}}); err != nil {
		panic(err)
	}
	return []goldenCase{
		{"none", fixedParts{}},
		{"xdp", fixedParts{name: "xdp", dp: xdp(), insts: insts, health: backends, accept: accept, ov: ov}},
		{"ipvs", fixedParts{name: "ipvs", dp: goldenIPVS{}, insts: insts[:1], health: backends}},
		{"split", fixedParts{name: "xdp", dp: split, insts: insts, health: backends, accept: accept}},
		{"bgp", fixedParts{name: "xdp", dp: xdp(), insts: insts, health: backends, accept: accept, bgp: goldenBGP(since)}},
	}
}

// goldenBGP is a speaker with one session up and one refused, a VIP
// announced for one of its two services, and a service whose quorum is
// lost.
func goldenBGP(since time.Time) *BGPStatus {
	up := since.Add(-90 * time.Minute)
	return &BGPStatus{ASN: 65001,
		Peers: []BGPPeerStatus{
			{Address: "203.0.113.254", ASN: 65000, State: "established", Since: &up, PrefixesSent: 2, PrefixesReceived: 5, UpdatesSent: 7, UpdatesReceived: 3},
			{Address: "2001:db8:ffff::fe", ASN: 65000, State: "active", LastError: "dial tcp [2001:db8:ffff::fe]:179: connect: connection refused"},
		},
		Routes: []string{"192.0.2.100/32", "2001:db8::100/128"},
		Announcements: []AnnouncementStatus{
			{Service: "web", Prefix: "192.0.2.100/32", Mode: "always", Announced: false, Reason: "quorum lost: 1 healthy, quorum 2"},
			{Service: "web6", Prefix: "2001:db8::100/128", Mode: "always", Announced: true, Reason: "serving: 1 healthy, quorum 1"},
			{Service: "dns", Prefix: "192.0.2.100/32", Mode: "master", Announced: true, Reason: "vrrp instance VI_1 is MASTER"},
		},
	}
}

// goldenBPF reports as the eBPF data path does: a DR service with one
// backend served, one drained and one it has no route to; a TUN service
// over IPv6; a NAT service whose backend's replies were translated back;
// no open connections; drop counters by reason, and NAT replies by
// backend.
type goldenBPF struct{ nopDatapath }

func (goldenBPF) Name() string { return "xdp" }
func (goldenBPF) Hooks() []string {
	return []string{"eth0: xdp native", "eth1: missing, waiting for it"}
}
func (goldenBPF) Report() ([]service.Report, error) {
	return []service.Report{
		{Name: "web", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.100"), Port: 80, Proto: service.TCP}, Datapath: "xdp",
			Stats: service.Stats{Packets: 123456, Bytes: 98765432, NewFlows: 4321},
			Backends: []service.BackendReport{
				{Addr: netip.MustParseAddrPort("198.51.100.11:80"), Weight: 100, Live: true, Stats: service.Stats{Packets: 123000, Bytes: 98700000, NewFlows: 4300}},
				{Addr: netip.MustParseAddrPort("198.51.100.12:80"), Weight: 0, Stats: service.Stats{Packets: 456, Bytes: 65432, NewFlows: 21}},
				{Addr: netip.MustParseAddrPort("198.51.100.13:80"), Weight: 50, Problem: "no route; datapath.interfaces eth1 missing"},
			}},
		{Name: "web6", Key: service.Key{VIP: netip.MustParseAddr("2001:db8::100"), Port: 443, Proto: service.TCP}, Datapath: "xdp",
			Backends: []service.BackendReport{
				{Addr: netip.MustParseAddrPort("[2001:db8::11]:443"), Weight: 1, Live: true, Problem: "next hop 2001:db8::1 on eth0: no neighbour entry yet, asked the kernel"},
			}},
		{Name: "dns", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.100"), Port: 53, Proto: service.UDP}, Datapath: "xdp",
			Stats: service.Stats{Packets: 10, Bytes: 640, NewFlows: 10}},
		{Name: "app", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.100"), Port: 8000, Proto: service.TCP}, Datapath: "xdp",
			Stats: service.Stats{Packets: 5000, Bytes: 400000, NewFlows: 50},
			Backends: []service.BackendReport{
				{Addr: netip.MustParseAddrPort("198.51.100.41:8080"), Weight: 1, Live: true, Stats: service.Stats{Packets: 5000, Bytes: 400000, NewFlows: 50},
					Replies: &service.Stats{Packets: 4200, Bytes: 6300000}},
			}},
	}, nil
}

func (goldenBPF) Counters() ([]service.Counter, error) {
	return []service.Counter{loader.DropsCounter(map[string]uint64{
		"malformed": 1, "no-backend": 7, "no-tx-port": 0, "unsupported": 0, "no-route": 3, "no-neigh": 2, "too-big": 0,
		"too-big-answered": 5, "encap": 0, "ip-header": 0, "ip-length": 1, "tcp-header": 0, "udp-header": 0,
		"bad-source": 9, "vip-source": 0,
	}), loader.NATRepliesCounter(map[string]uint64{"198.51.100.41:8080/tcp": 4200})}, nil
}

// goldenIPVS reports as IPVS does: incoming packets, connections
// scheduled, and each backend's open connections.
type goldenIPVS struct{ nopDatapath }

func (goldenIPVS) Name() string { return "ipvs" }
func (goldenIPVS) Report() ([]service.Report, error) {
	return []service.Report{
		{Name: "db", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.101"), Port: 5432, Proto: service.TCP}, Datapath: "ipvs",
			Stats: service.Stats{Packets: 2000, Bytes: 300000, NewFlows: 40},
			Backends: []service.BackendReport{
				{Addr: netip.MustParseAddrPort("198.51.100.31:5432"), Weight: 1, Live: true, Stats: service.Stats{Packets: 2000, Bytes: 300000, NewFlows: 40, Conns: &service.Conns{Active: 3, Inactive: 12}}},
				{Addr: netip.MustParseAddrPort("198.51.100.32:5432"), Weight: 0, Stats: service.Stats{Conns: &service.Conns{Inactive: 1}}},
			}},
	}, nil
}
