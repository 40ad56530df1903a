package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// Ports the node serves on every address in these tests: the service
// halb balances, and something else.
const (
	servicePort = 80
	otherPort   = 8080
	// blockedWait bounds a connection or echo that must not be answered;
	// reaching it is the expected outcome, so it is short.
	blockedWait = 700 * time.Millisecond
	// openWait bounds one that must be answered; it only bounds a hang.
	openWait = 5 * time.Second
)

// serveTCP listens on every address of ns on port and accepts until the
// test ends.
func serveTCP(t *testing.T, ns *netnstest.NS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// dial connects from ns to dst once, within timeout.
func dial(ns *netnstest.NS, dst netip.AddrPort, timeout time.Duration) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout("tcp", dst.String(), timeout)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// ping sends one ICMP echo from ns to dst and waits up to timeout for its
// reply.
func ping(ns *netnstest.NS, dst netip.Addr, timeout time.Duration) error {
	return ns.Do(func() error {
		network, listen, proto := "ip4:icmp", "0.0.0.0", 1
		var typ icmp.Type = ipv4.ICMPTypeEcho
		var reply icmp.Type = ipv4.ICMPTypeEchoReply
		if dst.Is6() {
			network, listen, proto = "ip6:ipv6-icmp", "::", 58
			typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
		}
		c, err := icmp.ListenPacket(network, listen)
		if err != nil {
			return err
		}
		defer c.Close()
		id := os.Getpid() & 0xffff
		msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("halb")}}
		b, err := msg.Marshal(nil) // the kernel sums ICMPv6
		if err != nil {
			return err
		}
		if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return err
		}
		if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		for range 100 { // other ICMP (the echo itself over lo, ND) may come first
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != reply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && from.String() == dst.String() {
				return nil
			}
		}
		return errors.New("no echo reply among 100 ICMP messages")
	})
}

// eventually retries fn until it succeeds or limit passes: the first
// packets to a new neighbour may wait for ARP or ND.
func eventually(limit time.Duration, fn func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// reach is what node 1 of l can reach on node 0's VIP.
type reach struct{ service, other, echo bool }

func probe(l *lan, vip netip.Addr) reach {
	return reach{
		service: dial(l.ns[1], netip.AddrPortFrom(vip, servicePort), blockedWait) == nil,
		other:   dial(l.ns[1], netip.AddrPortFrom(vip, otherPort), blockedWait) == nil,
		echo:    ping(l.ns[1], vip, blockedWait) == nil,
	}
}

// The filter, installed on a node that holds the VIP (as a Master does),
// drops what is not a service and lets ND through; removing it opens the
// VIP again. The node's own address is never filtered.
func TestAcceptTable(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			l := newLAN(t, v6)
			vip := netip.MustParsePrefix("192.0.2.100/24")
			if v6 {
				vip = netip.MustParsePrefix("2001:db8::100/64")
			}
			if err := l.ns[0].Do(func() error {
				_, err := newVIPSet([]netip.Prefix{vip}).add(l.link(t, 0), []netip.Prefix{vip})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			serveTCP(t, l.ns[0], servicePort)
			serveTCP(t, l.ns[0], otherPort)
			cfg := &config.Config{
				VRRP: config.VRRP{Instances: []config.Instance{{Name: "VI_T", Version: 3, Priority: 100,
					VirtualIPs: config.PlainVIPs(vip)}}},
				Services: []config.Service{{Name: "web", VIP: vip.Addr(), Port: servicePort, Protocol: "tcp"}},
			}
			table, err := OpenAcceptTable(int(l.ns[0].Handle()))
			if err != nil {
				t.Fatal(err)
			}
			if err := table.Apply(AcceptRules(cfg)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = table.Remove() })
			if !table.Installed() {
				t.Fatal("table not installed after Apply")
			}

			// The service answers (through ND for IPv6: the peer has to
			// resolve the VIP first).
			if err := eventually(openWait, func() error {
				return dial(l.ns[1], netip.AddrPortFrom(vip.Addr(), servicePort), blockedWait)
			}); err != nil {
				t.Fatalf("service port on the VIP: %v", err)
			}
			// One probe bounds each try by blockedWait, which a loaded
			// machine can miss for the port that must answer: tried
			// again, as the checks below are.
			var got reach
			_ = eventually(openWait, func() error {
				if got = probe(l, vip.Addr()); got != (reach{service: true}) {
					return errors.New("not yet")
				}
				return nil
			})
			if want := (reach{service: true}); got != want {
				t.Errorf("with accept false, VIP reach = %+v, want %+v", got, want)
			}
			own := netip.AddrPortFrom(l.addr[0], otherPort)
			if err := eventually(openWait, func() error { return dial(l.ns[1], own, blockedWait) }); err != nil {
				t.Errorf("the node's own address is filtered too: %v", err)
			}
			counters, err := table.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if len(counters) != 1 || counters[0] == 0 {
				t.Errorf("drop counters = %v, want one, above 0", counters)
			}

			// Applying the same rules again is harmless and atomic.
			if err := table.Apply(AcceptRules(cfg)); err != nil {
				t.Fatalf("second apply: %v", err)
			}
			if err := table.Apply(nil); err != nil {
				t.Fatal(err)
			}
			if table.Installed() {
				t.Error("table still there after applying no rules")
			}
			if err := table.Remove(); err != nil {
				t.Errorf("removing an absent table: %v", err)
			}
			_ = eventually(openWait, func() error {
				if got = probe(l, vip.Addr()); got != (reach{true, true, true}) {
					return errors.New("not yet")
				}
				return nil
			})
			if want := (reach{true, true, true}); got != want {
				t.Errorf("without the filter, VIP reach = %+v, want %+v", got, want)
			}
		})
	}
}
