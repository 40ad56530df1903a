package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestUDPHostUnreachable: a backend on the link that does not answer ARP
// makes the kernel send the check's socket an ICMP host unreachable. Only
// IP_RECVERR gets that to a connected UDP socket (it is a soft error); the
// check must call the backend unhealthy rather than take the silence for
// health.
func TestUDPHostUnreachable(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hv0"}, PeerName: "hv1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	hv0, err := h.LinkByName("hv0")
	if err != nil {
		t.Fatal(err)
	}
	hv1, err := h.LinkByName("hv1")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := h.AddrAdd(hv0, addr); err != nil {
		t.Fatalf("add address: %v", err)
	}
	for _, l := range []netlink.Link{hv0, hv1} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", l.Attrs().Name, err)
		}
	}
	// hv1 holds no address, so nobody answers ARP for 192.0.2.2. One
	// solicitation 100ms apart: resolution fails well within the timeout.
	err = ns.Do(func() error {
		for key, val := range map[string]string{"mcast_solicit": "1", "retrans_time_ms": "100"} {
			p := fmt.Sprintf("/proc/sys/net/ipv4/neigh/hv0/%s", key)
			if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("neighbour sysctls: %v", err)
	}

	c, err := NewChecker(config.HealthCheck{Type: "udp"})
	if err != nil {
		t.Fatal(err)
	}
	var checkErr error
	err = ns.Do(func() error {
		// The socket is made here, on the namespace's thread; it stays
		// in the namespace for the rest of the check.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		checkErr = c.Check(ctx, Key{Service: "dns", Backend: netip.MustParseAddrPort("192.0.2.2:53")})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(checkErr, syscall.EHOSTUNREACH) || !strings.HasPrefix(checkErr.Error(), "icmp destination unreachable") {
		t.Fatalf("check of a host that does not answer ARP: %v, want icmp destination unreachable (EHOSTUNREACH)", checkErr)
	}

	// And on the same link, a backend that is there and listening is
	// healthy: the unreachable above is about the host, not the link.
	var okErr error
	err = ns.Do(func() error {
		l, err := net.ListenPacket("udp", "192.0.2.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		okErr = c.Check(ctx, Key{Service: "dns", Backend: netip.MustParseAddrPort(l.LocalAddr().String())})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if okErr != nil {
		t.Errorf("silent listener on the link: %v", okErr)
	}
}
