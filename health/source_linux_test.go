package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// health_check.source (keepalived's bindto): the backend sees the check
// come from that address. In a namespace of its own, the node holds two
// addresses and the backend a third; each check is sent from the source
// named, and a source the node does not hold fails the check.
func TestCheckSource(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.1/32", "192.0.2.2/32", "198.51.100.11/32"} {
		addr, _ := netlink.ParseAddr(a)
		if err := h.AddrAdd(lo, addr); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
	}
	backend := netip.MustParseAddrPort("198.51.100.11:80")

	var tl net.Listener
	var ul net.PacketConn
	err = ns.Do(func() error {
		var err error
		if tl, err = net.Listen("tcp", backend.String()); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", backend.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	defer ul.Close()
	seen := make(chan string, 16)
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			seen <- "tcp " + addrOf(c.RemoteAddr())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			seen <- "udp " + addrOf(from)
			_, _ = ul.WriteTo(buf[:n], from) // an answer: healthy
		}
	}()

	for _, c := range []struct{ typ, source string }{
		{"tcp", "192.0.2.1"}, {"tcp", "192.0.2.2"}, {"udp", "192.0.2.2"}, {"udp", "192.0.2.1"},
	} {
		checker, err := NewChecker(config.HealthCheck{Type: c.typ, Source: netip.MustParseAddr(c.source)})
		if err != nil {
			t.Fatal(err)
		}
		if err := checkIn(t, ns, checker, backend); err != nil {
			t.Fatalf("%s check from %s: %v", c.typ, c.source, err)
		}
		select {
		case got := <-seen:
			if want := c.typ + " " + c.source; got != want {
				t.Errorf("the backend saw %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the backend saw no %s check", c.typ)
		}
	}

	// A source this node does not hold: the check fails, and says from
	// where it was tried.
	checker, err := NewChecker(config.HealthCheck{Type: "tcp", Source: netip.MustParseAddr("203.0.113.9")})
	if err != nil {
		t.Fatal(err)
	}
	checkErr := checkIn(t, ns, checker, backend)
	if !errors.Is(checkErr, syscall.EADDRNOTAVAIL) || !strings.HasPrefix(checkErr.Error(), "from 203.0.113.9: ") {
		t.Errorf("check from an address the node does not hold: %v, want from 203.0.113.9: ... cannot assign requested address", checkErr)
	}
}

// An http check is sent from its source too. Its transport dials on a
// goroutine of its own, which a namespace's locked thread does not
// reach, so this one runs on the host's loopback, where every 127/8
// address is local.
func TestHTTPCheckSource(t *testing.T) {
	from := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case from <- host:
		default:
		}
	}))
	defer srv.Close()
	hc := config.HealthCheck{Type: "http", Source: netip.MustParseAddr("127.0.0.2"), Path: "/", ExpectStatus: []int{200}}
	if err := check(t, hc, addrPort(t, srv.Listener.Addr()), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-from; got != "127.0.0.2" {
		t.Errorf("the server saw the check from %s, want 127.0.0.2", got)
	}
}

// checkIn runs c once against backend inside ns, where its socket is
// made on the namespace's thread.
func checkIn(t *testing.T, ns *netnstest.NS, c Checker, backend netip.AddrPort) error {
	t.Helper()
	var checkErr error
	if err := ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		checkErr = c.Check(ctx, Key{Service: "web", Backend: backend})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return checkErr
}

func addrOf(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return ap.Addr().String()
}
