package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/service"
)

// The rates table has a service's total, then its backends, in the
// status's order; a backend with no rate (new, or its counters restarted:
// service.Rates) has no row.
func TestRateRows(t *testing.T) {
	key := service.Key{VIP: netip.MustParseAddr("192.0.2.1"), Port: 80, Proto: service.TCP}
	be := func(addr string, pk, by, nf uint64) service.BackendReport {
		return service.BackendReport{Addr: netip.MustParseAddrPort(addr), Stats: service.Stats{Packets: pk, Bytes: by, NewFlows: nf}}
	}
	prev := []service.Report{{Name: "web", Key: key, Stats: service.Stats{Packets: 100, Bytes: 1000, NewFlows: 10},
		Backends: []service.BackendReport{be("198.51.100.1:80", 100, 1000, 10), be("198.51.100.3:80", 10, 100, 1)}}}
	cur := []service.Report{{Name: "web", Key: key, Stats: service.Stats{Packets: 300, Bytes: 5000, NewFlows: 14},
		Backends: []service.BackendReport{be("198.51.100.1:80", 50, 500, 4), be("198.51.100.2:80", 250, 4500, 10), be("198.51.100.3:80", 30, 300, 1)}}}
	got := rateRows(prev, cur, 2*time.Second)
	want := []rate{
		{"web " + key.String(), "(all)", service.Rate{Packets: 100, Bytes: 2000, NewFlows: 2}},
		{"", "198.51.100.3:80", service.Rate{Packets: 10, Bytes: 100}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rates:\n got %v\nwant %v", got, want)
	}
	var out bytes.Buffer
	rows := make([]rate, watchRows+7)
	writeRates(&out, rows)
	if n := strings.Count(out.String(), "\n"); n != 1+1+watchRows+1 || !strings.Contains(out.String(), "(7 more rows") {
		t.Errorf("%d rows drawn %d lines, want the header and %d rows and a line for the 7 more:\n%s", len(rows), n, watchRows, out.String())
	}
}

// halb status --watch redraws each interval with the rates since the last
// answer, and returns cleanly when its context ends.
func TestWatch(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "halb.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Uint64
	key := service.Key{VIP: netip.MustParseAddr("192.0.2.1"), Port: 80, Proto: service.TCP}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := calls.Add(1)
		st := daemon.Status{Datapath: "xdp", Services: []service.Report{{Name: "web", Key: key, Stats: service.Stats{Packets: 1000 * n}}}}
		_ = json.NewEncoder(w).Encode(st)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := watch(ctx, &out, sock, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	draws := strings.Count(out.String(), "\x1b[H\x1b[2J")
	if draws < 2 || strings.Count(out.String(), "RATES (per second)") != draws-1 {
		t.Fatalf("%d draws, want 2 and more, each but the first with rates:\n%s", draws, out.String())
	}
	if !strings.Contains(out.String(), "web 192.0.2.1:80/tcp") {
		t.Errorf("no rates row for web:\n%s", out.String())
	}
}
