package ipvs

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// A service group reaches IPVS as one service a VIP:port pair, each with
// the group's backends: forward nat on two pairs of other ports sharing a
// backend, which IPVS serves as it tracks each connection (the eBPF data
// path refuses it: config.natGroup).
func TestApplyServiceGroup(t *testing.T) {
	group := config.Service{Name: "web", Protocol: "tcp", Scheduler: "wlc", Forward: "nat",
		Listen: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:80"), netip.MustParseAddrPort("192.0.2.11:8080")},
		Backends: []config.Backend{
			{Address: netip.MustParseAddr("10.0.0.1"), Port: 8000, Weight: 1},
			{Address: netip.MustParseAddr("10.0.0.2"), Port: 8000, Weight: 2},
		}}
	k := &fakeIPVS{}
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
	if err := d.Apply(context.Background(), service.FromConfig([]config.Service{group})); err != nil {
		t.Fatal(err)
	}
	want := "-A -t 192.0.2.10:80 -s wlc\n" +
		"-a -t 192.0.2.10:80 -r 10.0.0.1:8000 -m -w 1\n" +
		"-a -t 192.0.2.10:80 -r 10.0.0.2:8000 -m -w 2\n" +
		"-A -t 192.0.2.11:8080 -s wlc\n" +
		"-a -t 192.0.2.11:8080 -r 10.0.0.1:8000 -m -w 1\n" +
		"-a -t 192.0.2.11:8080 -r 10.0.0.2:8000 -m -w 2"
	if got := k.table(); got != sortedTable(want) {
		t.Errorf("table:\n%s\nwant:\n%s", got, sortedTable(want))
	}
	reports, err := d.Report()
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) != 2 || reports[0].Name != "web" || reports[1].Name != "web" || reports[0].Key == reports[1].Key {
		t.Errorf("reports %+v, want web on each pair", reports)
	}
}
