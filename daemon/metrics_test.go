package daemon

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
)

// A backend whose check reaches another port (health_check.port) is
// still labelled with its own address and port: the check's port names
// no backend. The backend's own port is closed and the check's is open,
// so the series says healthy only if the check went to the other port.
func TestMetricsBackendLabelIgnoresCheckPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	checkPort := l.Addr().(*net.TCPAddr).Port
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backendPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	mon := health.NewMonitor(health.Options{})
	svc := config.Service{Name: "web", VIP: netip.MustParseAddr("192.0.2.100"), Port: 80, Protocol: "tcp",
		Backends:    []config.Backend{{Address: netip.MustParseAddr("127.0.0.1"), Port: backendPort, Weight: 1}},
		HealthCheck: config.HealthCheck{Type: health.TypeTCP, Port: checkPort, Interval: 50 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}}
	if err := mon.Update([]config.Service{svc}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mon.Run(ctx) }()
	defer func() { cancel(); <-done }()

	reg := prometheus.NewRegistry()
	parts := fixedParts{}
	backend := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(backendPort)).String()
	want := `
# HELP halb_backend_healthy 1 when the backend passes its health check.
# TYPE halb_backend_healthy gauge
halb_backend_healthy{backend="` + backend + `",service="web"} 1
`
	reg.MustRegister(collector{&parts})
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		// A backend starts presumed healthy: only a confirmed state
		// says where the check went.
		parts.health = mon.Snapshot()
		err := testutil.GatherAndCompare(reg, strings.NewReader(want), "halb_backend_healthy")
		if err == nil && len(parts.health) == 1 && parts.health[0].Confirmed {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("check on port %d, backend on %d: %v", checkPort, backendPort, err)
		}
	}
}
