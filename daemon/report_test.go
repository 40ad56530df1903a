package daemon

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halb-lb/halb/service"
)

// reportingDatapath is a data path that reports fixed counters, as IPVS
// does for a web service with one backend busy and one drained.
type reportingDatapath struct{ name string }

func (r reportingDatapath) Name() string                                 { return r.name }
func (reportingDatapath) Apply(context.Context, []service.Service) error { return nil }
func (reportingDatapath) Close() error                                   { return nil }
func (r reportingDatapath) Report() ([]service.Report, error) {
	return []service.Report{{
		Name: "web", Key: service.Key{VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: service.TCP}, Datapath: r.name,
		Stats: service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7},
		Backends: []service.BackendReport{
			{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Weight: 1, Live: true, Stats: service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7, Active: 2, Inactive: 1}},
			{Addr: netip.MustParseAddrPort("198.51.100.2:80"), Weight: 0},
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
	if s.Name != "web" || s.Key != "192.0.2.10:80/tcp" || s.Datapath != "ipvs" || s.Packets != 70 || s.NewFlows != 7 || len(s.Backends) != 2 {
		t.Fatalf("service: %+v", s)
	}
	busy, drained := s.Backends[0], s.Backends[1]
	if busy.Active == nil || *busy.Active != 2 || *busy.Inactive != 1 || !busy.Live || drained.Live {
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
	if n, err := testutil.GatherAndCount(reg, "halb_datapath_new_flows_total"); err != nil || n != 3 {
		t.Errorf("halb_datapath_new_flows_total: %d series (%v), want the service and its two backends", n, err)
	}

	// The eBPF data path does not count open connections: no such series,
	// and status leaves the fields out.
	dp = reportingDatapath{name: "xdp"}
	d.datapath.Store(&dp)
	if n, _ := testutil.GatherAndCount(reg, "halb_datapath_active_connections"); n != 0 {
		t.Errorf("%d active-connection series for an eBPF data path", n)
	}
	if b := d.status().Services[0].Backends[0]; b.Active != nil {
		t.Errorf("eBPF backend with active connections: %+v", b)
	}
}
