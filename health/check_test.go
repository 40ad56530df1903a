package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// check runs hc's checker against ap once, under timeout.
func check(t *testing.T, hc config.HealthCheck, ap netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	c, err := NewChecker(hc)
	if err != nil {
		t.Fatalf("NewChecker(%+v): %v", hc, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.Check(ctx, Key{Service: "web", Backend: ap})
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// closedPort is a port on 127.0.0.1 that nothing listens on: it was free a
// moment ago.
func closedPort(t *testing.T, network string) netip.AddrPort {
	t.Helper()
	var a net.Addr
	switch network {
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = l.Addr()
		l.Close()
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a = c.LocalAddr()
		c.Close()
	}
	return addrPort(t, a)
}

func TestTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hc := config.HealthCheck{Type: "tcp"}
	if err := check(t, hc, addrPort(t, l.Addr()), 5*time.Second); err != nil {
		t.Errorf("listening port: %v", err)
	}
	err = check(t, hc, closedPort(t, "tcp"), 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("closed port: %v, want connection refused", err)
	}
	if err.Error() != "connect: connection refused" {
		t.Errorf("closed port: %q, want the short form %q", err, "connect: connection refused")
	}
}

func TestHTTP(t *testing.T) {
	var (
		mu                 sync.Mutex
		lastHost, lastPath string
	)
	seen := func() (string, string) {
		mu.Lock()
		defer mu.Unlock()
		return lastHost, lastPath
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastHost, lastPath = r.Host, r.URL.RequestURI()
		mu.Unlock()
		switch r.URL.Path {
		case "/healthz":
			w.WriteHeader(http.StatusOK)
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/sick":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusMovedPermanently)
		case "/slow":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	})
	for _, scheme := range []string{"http", "https"} {
		t.Run(scheme, func(t *testing.T) {
			var srv *httptest.Server
			if scheme == "https" {
				srv = httptest.NewTLSServer(handler) // a self-signed certificate
			} else {
				srv = httptest.NewServer(handler)
			}
			defer srv.Close()
			ap := addrPort(t, srv.Listener.Addr())
			tests := []struct {
				path   string
				expect []int
				ok     bool
				errHas string
			}{
				{"/healthz", []int{200}, true, ""},
				{"/healthz?deep=1", []int{200}, true, ""},
				{"/nocontent", []int{200, 204}, true, ""},
				{"/nocontent", []int{200}, false, "status 204, want 200"},
				{"/sick", []int{200, 204}, false, "status 503, want one of [200 204]"},
				{"/moved", []int{200}, false, "status 301"}, // not followed
				{"/moved", []int{301}, true, ""},
				{"/slow", []int{200}, false, "deadline exceeded"},
			}
			for _, tt := range tests {
				hc := config.HealthCheck{Type: scheme, Path: tt.path, ExpectStatus: tt.expect}
				timeout := 5 * time.Second
				if tt.path == "/slow" {
					timeout = 200 * time.Millisecond
				}
				err := check(t, hc, ap, timeout)
				switch {
				case tt.ok && err != nil:
					t.Errorf("GET %s expecting %v: %v", tt.path, tt.expect, err)
				case !tt.ok && (err == nil || !strings.Contains(err.Error(), tt.errHas)):
					t.Errorf("GET %s expecting %v: %v, want an error with %q", tt.path, tt.expect, err, tt.errHas)
				}
				if host, path := seen(); tt.ok && (path != tt.path || host != ap.String()) {
					t.Errorf("server saw Host %q and %q, want %q and %q", host, path, ap, tt.path)
				}
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		err := check(t, config.HealthCheck{Type: "http", Path: "/"}, closedPort(t, "tcp"), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) || err.Error() != "connect: connection refused" {
			t.Errorf("closed port: %v, want connect: connection refused", err)
		}
	})
	t.Run("https to plain http", func(t *testing.T) {
		srv := httptest.NewServer(handler)
		defer srv.Close()
		if err := check(t, config.HealthCheck{Type: "https", Path: "/healthz"}, addrPort(t, srv.Listener.Addr()), 5*time.Second); err == nil {
			t.Error("https check of a plain HTTP server succeeded")
		}
	})
}

func TestHostHeader(t *testing.T) {
	tests := []struct {
		ap   string
		def  uint16
		want string
	}{
		{"198.51.100.11:80", 80, "198.51.100.11"},
		{"198.51.100.11:8080", 80, "198.51.100.11:8080"},
		{"198.51.100.11:443", 443, "198.51.100.11"},
		{"198.51.100.11:443", 80, "198.51.100.11:443"},
		{"[2001:db8::11]:443", 443, "[2001:db8::11]"},
		{"[2001:db8::11]:8443", 443, "[2001:db8::11]:8443"},
	}
	for _, tt := range tests {
		if got := hostHeader(netip.MustParseAddrPort(tt.ap), tt.def); got != tt.want {
			t.Errorf("hostHeader(%s, %d) = %q, want %q", tt.ap, tt.def, got, tt.want)
		}
	}
}

// udpServer answers every datagram with its payload when echo is set, and
// never answers otherwise. It stops when t ends.
func udpServer(t *testing.T, network, addr string, echo bool) netip.AddrPort {
	t.Helper()
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for range 1000 { // bounded: a test sends a handful
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if echo {
				_, _ = c.WriteTo(buf[:n], from)
			}
		}
	}()
	return addrPort(t, c.LocalAddr())
}

func TestUDP(t *testing.T) {
	hc := config.HealthCheck{Type: "udp"}
	t.Run("echo answers", func(t *testing.T) {
		ap := udpServer(t, "udp", "127.0.0.1:0", true)
		start := time.Now()
		if err := check(t, hc, ap, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		// An answer ends the check; it does not wait for the timeout.
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("took %s with an answering backend", took)
		}
	})
	t.Run("silent but open is healthy", func(t *testing.T) {
		ap := udpServer(t, "udp", "127.0.0.1:0", false)
		if err := check(t, hc, ap, 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("closed port: icmp port unreachable", func(t *testing.T) {
		err := check(t, hc, closedPort(t, "udp"), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) || !strings.HasPrefix(err.Error(), "icmp port unreachable") {
			t.Fatalf("closed port: %v, want icmp port unreachable (ECONNREFUSED)", err)
		}
	})
	t.Run("ipv6 echo and closed", func(t *testing.T) {
		ap := udpServer(t, "udp6", "[::1]:0", true)
		if err := check(t, hc, ap, 5*time.Second); err != nil {
			t.Errorf("echo on ::1: %v", err)
		}
		c, err := net.ListenPacket("udp6", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := addrPort(t, c.LocalAddr())
		c.Close()
		if err := check(t, hc, closed, 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("closed port on ::1: %v, want ECONNREFUSED", err)
		}
	})
	t.Run("cancelled is not healthy", func(t *testing.T) {
		ap := udpServer(t, "udp", "127.0.0.1:0", false)
		c, _ := NewChecker(hc)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		time.AfterFunc(50*time.Millisecond, cancel)
		if err := c.Check(ctx, Key{"dns", ap}); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled check: %v, want context.Canceled", err)
		}
	})
}

func TestNone(t *testing.T) {
	if err := check(t, config.HealthCheck{Type: "none"}, netip.MustParseAddrPort("198.51.100.11:80"), time.Second); err != nil {
		t.Error(err)
	}
}

func TestNewCheckerErrors(t *testing.T) {
	for _, hc := range []config.HealthCheck{
		{Type: "icmp"},
		{Type: ""},
		{Type: "exec"},
		{Type: "exec", Command: []string{""}},
	} {
		if _, err := NewChecker(hc); err == nil {
			t.Errorf("NewChecker(%+v) succeeded", hc)
		}
	}
}
