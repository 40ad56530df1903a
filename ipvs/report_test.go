package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/service"
)

func TestReport(t *testing.T) {
	k := &fakeIPVS{}
	handMade(k)
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "state"))
	drained := with(web, func(s *service.Service) { s.Backends[1].Weight = 0 })
	if err := d.Apply(context.Background(), []service.Service{drained, dns}); err != nil {
		t.Fatal(err)
	}
	// What the kernel counted since: web's first backend has two
	// connections open and one closing.
	w := k.find(cfipvs.Service{Address: web.Key.VIP, Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET})
	w.stats = cfipvs.Stats{Connections: 7, IncomingPackets: 70, IncomingBytes: 7000}
	w.destStats = map[netip.AddrPort]cfipvs.DestinationExtended{
		netip.MustParseAddrPort("10.0.0.1:80"): {ActiveConnections: 2, InactiveConnections: 1,
			Stats:   cfipvs.Stats{Connections: 1 << 31}, // the 32-bit counters are read only without 64-bit ones
			Stats64: cfipvs.Stats{Connections: 7, IncomingPackets: 70, IncomingBytes: 7000}},
	}

	rep, err := d.Report()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep) != 2 || rep[0].Name != "web" || rep[1].Name != "dns" {
		t.Fatalf("Report = %+v, want web and dns, not the hand-made services", rep)
	}
	got := rep[0]
	if got.Key != web.Key || got.Datapath != "ipvs" || got.Stats != (service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7}) {
		t.Errorf("web: %+v", got)
	}
	want := []service.BackendReport{
		{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1, Live: true, Stats: service.Stats{Packets: 70, Bytes: 7000, NewFlows: 7, Conns: &service.Conns{Active: 2, Inactive: 1}}},
		{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Weight: 0, Live: false, Stats: service.Stats{Conns: &service.Conns{}}},
	}
	if len(got.Backends) != len(want) {
		t.Fatalf("web backends: %+v", got.Backends)
	}
	for i := range want {
		if !reflect.DeepEqual(got.Backends[i], want[i]) {
			t.Errorf("web backend %d: %+v, want %+v", i, got.Backends[i], want[i])
		}
	}

	// Someone flushes IPVS (ipvsadm -C): nothing to report until the next
	// resync puts the services back.
	k.services = nil
	if rep, err := d.Report(); err != nil || len(rep) != 0 {
		t.Errorf("after a flush: %+v, %v", rep, err)
	}
	d.Close()
	if _, err := d.Report(); !errors.Is(err, service.ErrClosed) {
		t.Errorf("Report after Close: %v, want ErrClosed", err)
	}
}
