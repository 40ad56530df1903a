package daemon

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halb-lb/halb/service"
)

// nopDatapath is a data path that serves nothing; the test data paths
// embed it and say what they do differently.
type nopDatapath struct{}

func (nopDatapath) Name() string                                   { return "nop" }
func (nopDatapath) Apply(context.Context, []service.Service) error { return nil }
func (nopDatapath) Resync() time.Duration                          { return 0 }
func (nopDatapath) Report() ([]service.Report, error)              { return nil, nil }
func (nopDatapath) Hooks() []string                                { return nil }
func (nopDatapath) Counters() ([]service.Counter, error)           { return nil, nil }
func (nopDatapath) Cleanup() error                                 { return nil }
func (nopDatapath) Close() error                                   { return nil }

// reportingDatapath is a data path that reports fixed counters, as IPVS
// does for a web service with one backend busy and one drained; as the
// eBPF data path, it counts no open connections.
type reportingDatapath struct {
	nopDatapath
	name string
}

func (r reportingDatapath) Name() string { return r.name }
func (r reportingDatapath) Report() ([]service.Report, error) {
	var busy, drained *service.Conns
	if r.name == "ipvs" {
		busy, drained = &service.Conns{Active: 2, Inactive: 1}, &service.Conns{}
	}
	return []service.Report{{
		Name: "web", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: service.TCP}, Datapath: r.name,
		Stats: service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7},
		Backends: []service.BackendReport{
			{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Weight: 1, Live: true, Stats: service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7, Conns: busy}},
			{Addr: netip.MustParseAddrPort("198.51.100.2:80"), Weight: 0, Stats: service.Stats{Conns: drained}},
		},
	}}, nil
}

func TestStatusAndMetricsReportTheDatapath(t *testing.T) {
	d, _, _ := newTestDaemon(t)
	var dp service.Datapath = reportingDatapath{name: "ipvs"}
	d.datapath.Store(&dp)

	st := d.status()
	if len(st.Services) != 1 {
		t.Fatalf("services: %+v", st.Services)
	}
	s := st.Services[0]
	if s.Name != "web" || s.Key.String() != "192.0.2.10:80/tcp" || s.Datapath != "ipvs" || s.Packets != 70 || s.NewFlows != 7 || len(s.Backends) != 2 {
		t.Fatalf("service: %+v", s)
	}
	busy, drained := s.Backends[0], s.Backends[1]
	if busy.Conns == nil || busy.Active != 2 || busy.Inactive != 1 || !busy.Live || drained.Live {
		t.Errorf("backends: %+v %+v", busy, drained)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d})
	want := `
# HELP halb_datapath_active_connections Connections IPVS holds for a backend now, by state (active, inactive).
# TYPE halb_datapath_active_connections gauge
halb_datapath_active_connections{backend="198.51.100.1:80",service="web",state="active"} 2
halb_datapath_active_connections{backend="198.51.100.1:80",service="web",state="inactive"} 1
halb_datapath_active_connections{backend="198.51.100.2:80",service="web",state="active"} 0
halb_datapath_active_connections{backend="198.51.100.2:80",service="web",state="inactive"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "halb_datapath_active_connections"); err != nil {
		t.Error(err)
	}
	// The service's total is a family of its own: sum by (service) of
	// the backends' counts each flow once.
	if n, err := testutil.GatherAndCount(reg, "halb_datapath_new_flows_total"); err != nil || n != 2 {
		t.Errorf("halb_datapath_new_flows_total: %d series (%v), want the two backends'", n, err)
	}
	if n, err := testutil.GatherAndCount(reg, "halb_datapath_service_new_flows_total"); err != nil || n != 1 {
		t.Errorf("halb_datapath_service_new_flows_total: %d series (%v), want the service's", n, err)
	}

	// The eBPF data path does not count open connections: no such series,
	// and status leaves the fields out.
	dp = reportingDatapath{name: "xdp"}
	d.datapath.Store(&dp)
	if n, _ := testutil.GatherAndCount(reg, "halb_datapath_active_connections"); n != 0 {
		t.Errorf("%d active-connection series for an eBPF data path", n)
	}
	if b := d.status().Services[0].Backends[0]; b.Conns != nil {
		t.Errorf("eBPF backend with active connections: %+v", b)
	}
}

// groupDatapath reports a service group's two pairs, as the data paths
// hold them: one service each, of the group's name and backends.
type groupDatapath struct{ nopDatapath }

func (groupDatapath) Name() string { return "ipvs" }
func (groupDatapath) Report() ([]service.Report, error) {
	pair := func(vip string, n uint64) service.Report {
		return service.Report{Name: "web", Key: service.Key{VIP: netip.MustParseAddr(vip), Port: 80, Proto: service.TCP}, Datapath: "ipvs",
			Stats: service.Stats{Packets: n, Bytes: 100 * n, NewFlows: n},
			Backends: []service.BackendReport{{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Weight: 1, Live: true,
				Stats: service.Stats{Packets: n, Bytes: 100 * n, NewFlows: n, Conns: &service.Conns{Active: n}}}}}
	}
	return []service.Report{pair("192.0.2.10", 3), pair("192.0.2.11", 4)}, nil
}

// A service group's pairs show one by one in the status, and as one
// service in the metrics, the pairs summed: the same (service, backend)
// series twice would fail the whole scrape.
func TestStatusAndMetricsOfAGroup(t *testing.T) {
	d, _, _ := newTestDaemon(t)
	var dp service.Datapath = groupDatapath{}
	d.datapath.Store(&dp)
	st := d.status()
	if len(st.Services) != 2 || st.Services[0].Key.String() != "192.0.2.10:80/tcp" || st.Services[1].Key.String() != "192.0.2.11:80/tcp" {
		t.Fatalf("status services: %+v", st.Services)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d})
	want := `
# HELP halb_datapath_new_flows_total New flows (IPVS: connections) scheduled to a backend.
# TYPE halb_datapath_new_flows_total counter
halb_datapath_new_flows_total{backend="198.51.100.1:80",service="web"} 7
# HELP halb_datapath_service_new_flows_total New flows (IPVS: connections) to a service.
# TYPE halb_datapath_service_new_flows_total counter
halb_datapath_service_new_flows_total{service="web"} 7
# HELP halb_datapath_active_connections Connections IPVS holds for a backend now, by state (active, inactive).
# TYPE halb_datapath_active_connections gauge
halb_datapath_active_connections{backend="198.51.100.1:80",service="web",state="active"} 7
halb_datapath_active_connections{backend="198.51.100.1:80",service="web",state="inactive"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "halb_datapath_new_flows_total", "halb_datapath_service_new_flows_total", "halb_datapath_active_connections"); err != nil {
		t.Error(err)
	}
}
