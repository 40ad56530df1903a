package loader

import (
	"context"
	"maps"
	"reflect"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// What the daemon reads of the eBPF data path is Status less the ids,
// MACs and next hops, and the drops by reason under their names.
func TestDatapathReportAndCounters(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1), backend(be12, 0))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	status, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	reports, err := dp.Report()
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) != 1 || len(status) != 1 {
		t.Fatalf("Report %+v, Status %+v: want the one service", reports, status)
	}
	want := status[0].Report
	for _, b := range status[0].Backends {
		want.Backends = append(want.Backends, b.BackendReport)
	}
	if got := reports[0]; !reflect.DeepEqual(got, want) || got.Datapath != "xdp" || got.Name != "web" || len(got.Backends) != 2 {
		t.Errorf("Report: %+v\nwant %+v", got, want)
	}
	for _, b := range reports[0].Backends {
		if b.Conns != nil {
			t.Errorf("backend %s has open connections %+v: the eBPF data path counts none", b.Addr, b.Conns)
		}
	}

	drops, err := dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	counters, err := dp.Counters()
	if err != nil || len(counters) != 1 {
		t.Fatalf("Counters: %+v, %v; want the drops", counters, err)
	}
	c := counters[0]
	named := map[string]uint64{}
	for r, n := range drops {
		named[r.String()] = n
	}
	if c.Name != "drops" || c.Label != "reason" || c.Help == "" || !maps.Equal(c.Values, named) || len(c.Values) != int(halbDropReasonDROP_REASONS) {
		t.Errorf("Counters: %+v, want every drop reason by name: %v", c, named)
	}
	if dp.Resync() <= 0 {
		t.Errorf("Resync %s: the daemon's periodic apply stays until the data path resyncs by itself", dp.Resync())
	}
}
