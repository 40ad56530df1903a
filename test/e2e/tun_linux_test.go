package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

var webKey6 = service.Key{VIP: vip6, Port: 80, Proto: service.TCP}

// The counters of decap.c's enum decap_counter, the keys of decap_counts.
const (
	decapIPIP uint32 = iota
	decapIP6IP6
	decapPlainVIP
)

// TestTUN runs halb's eBPF data path in the network of TestDR with
// forward: tun, IPIP for the IPv4 VIP and IP6IP6 for the IPv6 one. The test
// kernel need not have ipip or ip6tnl devices: each backend's eth0 has
// decap.c's XDP program, which strips the outer header of a packet
// tunnelled to the backend, hands the inner one to the stack, where the
// VIP on lo takes it, and drops any packet that reaches the VIP without a
// tunnel. It shows, for each family and on each hook the data path
// attaches to: flows spread evenly over the backends, every one of them
// through the tunnel; a client's full-size segments, too big for the
// tunnel, get through once the client has learnt the tunnel's MTU from
// the ICMP errors XDP answers them with (tc sees them as GSO packets,
// which it does not check against the MTU); a drained backend gets no new
// connection and keeps the one it has.
func TestTUN(t *testing.T) {
	netnstest.Require(t)
	forHooks(t, testTUN)
}

// forHooks runs f as a subtest on each hook the data path attaches to,
// with the datapath.mode and xdp_mode that choose it.
func forHooks(t *testing.T, f func(t *testing.T, mode, xdpMode string, hook loader.Hook)) {
	for _, v := range []struct {
		mode, xdpMode string
		hook          loader.Hook
	}{
		{config.ModeXDP, "native", loader.HookXDPNative},
		{config.ModeXDP, "generic", loader.HookXDPGeneric},
		{config.ModeTC, "auto", loader.HookTCX},
	} {
		t.Run(string(v.hook), func(t *testing.T) { f(t, v.mode, v.xdpMode, v.hook) })
	}
}

func testTUN(t *testing.T, mode, xdpMode string, hook loader.Hook) {
	bed := newBed(t, hook)
	var decaps []*decapObjects
	for i, b := range backends {
		decaps = append(decaps, decapsulate(t, bed.backends[i], b.addr, b.addr6))
	}
	if hook == loader.HookXDPGeneric {
		// Over a veth, a sender with TSO hands generic XDP packets of
		// up to 64 KB, which the program cannot tunnel: the outer one
		// would exceed the MTU, and XDP cannot segment (too-big); the
		// ICMP error it answers with does not help, as the sender's
		// packets are larger than its path MTU by design. A
		// sender behind a real NIC sends no packet larger than the
		// MTU, and GRO is off on an interface with generic XDP. tc
		// sees the same packets as GSO and leaves their MTU to the
		// segmentation at egress; native XDP on a veth turns GSO off
		// on the peer.
		if err := bed.client.ns.Do(func() error { return tsoOff("eth0") }); err != nil {
			t.Fatal(err)
		}
	}
	// The program asks the kernel's FIB for the tunnels' next hops, which
	// it answers only for an interface that forwards. The balancer still
	// has no route to the VIPs: a packet the program passed would not
	// reach a backend.
	err := bed.lb.Do(func() error {
		for _, p := range []string{"/proc/sys/net/ipv4/conf/eth0/forwarding", "/proc/sys/net/ipv6/conf/eth0/forwarding"} {
			if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	cfg := datapathConfig(t, mode, xdpMode)
	services := []service.Service{webService("web", webKey, service.TUN), webService("web6", webKey6, service.TUN)}
	ctx := context.Background()
	dp := start(t, bed.lb, cfg)
	if got := dp.Attachments(); len(got) != 1 || got[0].Hook != hook {
		t.Fatalf("attachments %v, want %s on eth0", got, hook)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 6)
	// Live tunnel ends take flows before their next hops' MACs are known
	// (XDP drops those packets until then): wait for the MACs, so that no
	// connection waits for a retransmitted SYN.
	waitNeighbours(t, bed.lb)

	clients := []*client{bed.client, bed.client6}
	spreads := make([]map[string]int, len(clients))
	for i, c := range clients {
		spreads[i] = c.spread(t, 40000, 300)
		t.Logf("300 connections to %s: %v", c.vip, spreads[i])
		checkSpread(t, fmt.Sprintf("300 connections to %s", c.vip), spreads[i], 300)
	}
	// Each connection sent its backend a SYN, an ACK and a FIN at least,
	// all of them through the tunnel of its family.
	for i, b := range backends {
		n := readDecap(t, decaps[i])
		t.Logf("%s decapsulated %d IPIP and %d IP6IP6 packets, dropped %d to a VIP without a tunnel",
			b.name, n[decapIPIP], n[decapIP6IP6], n[decapPlainVIP])
		if want := 3 * uint64(spreads[0][b.name]); n[decapIPIP] < want {
			t.Errorf("%s decapsulated %d IPIP packets for %d connections, want %d at least", b.name, n[decapIPIP], spreads[0][b.name], want)
		}
		if want := 3 * uint64(spreads[1][b.name]); n[decapIP6IP6] < want {
			t.Errorf("%s decapsulated %d IP6IP6 packets for %d connections, want %d at least", b.name, n[decapIP6IP6], spreads[1][b.name], want)
		}
	}
	logStatus(t, dp)

	// Connections that stay open through the drain of their backends.
	var keeps []*conn
	for _, c := range clients {
		keep := c.connect(t, 39999)
		defer keep.Close()
		keep.ping(t, "before the drain")
		// More than one segment, the first ones full-size, which
		// the tunnel's outer header makes too big for the link:
		// XDP answers with ICMP, and the client sends smaller ones.
		keep.echo(t, strings.Repeat("x", 8000))
		keeps = append(keeps, keep)
	}
	for i := range services {
		drain(&services[i], keeps[i].backend)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 4)
	for i, c := range clients {
		counts := c.spread(t, 41000, 150)
		t.Logf("150 connections to %s with %s drained: %v", c.vip, keeps[i].backend, counts)
		if counts[keeps[i].backend] != 0 {
			t.Errorf("%s: drained %s got %d new connections", c.vip, keeps[i].backend, counts[keeps[i].backend])
		}
		if total(counts) != 150 || len(counts) != 2 {
			t.Errorf("%s: %v: want all 150 connections on the two live backends", c.vip, counts)
		}
		keeps[i].ping(t, "after the drain")
	}
	logStatus(t, dp)
	for i, b := range backends {
		if n := readDecap(t, decaps[i]); n[decapPlainVIP] != 0 {
			t.Errorf("%s dropped %d packets that reached a VIP without a tunnel", b.name, n[decapPlainVIP])
		}
	}
	drops, err := dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data path drops: %v", drops)
	for reason, n := range drops {
		if n != 0 && reason != loader.DropTooBigAnswered {
			t.Errorf("the data path dropped %d packets as %s", n, reason)
		}
	}
	// One answered packet for each family at least, on XDP; tc answers
	// none and needs none.
	answered := drops[loader.DropTooBigAnswered]
	if xdp := hook != loader.HookTCX; xdp && answered < 2 || !xdp && answered != 0 {
		t.Errorf("%s answered %d packets too big for the tunnel with ICMP", hook, answered)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// decapsulate loads decap.c's program for a backend at end4 and end6 and
// attaches it to eth0 in ns, natively, until t ends.
func decapsulate(t *testing.T, ns *netnstest.NS, end4, end6 netip.Addr) *decapObjects {
	t.Helper()
	spec, err := loadDecap()
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{
		"tunnel_end4": end4.As4(), "tunnel_end6": end6.As16(),
		"vip4": vip.As4(), "vip6": vip6.As16(),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			t.Fatalf("set %s in decap.c: %v", name, err)
		}
	}
	var objs decapObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load decap.c: %v", err)
	}
	t.Cleanup(func() { objs.Close() })
	eth0, err := ns.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	attachXDP(t, ns, objs.HalbtestDecap, eth0.Attrs().Index)
	return &objs
}

// readDecap reads a decapsulator's counters.
func readDecap(t *testing.T, objs *decapObjects) [decapPlainVIP + 1]uint64 {
	t.Helper()
	var n [decapPlainVIP + 1]uint64
	for k := range n {
		if err := objs.DecapCounts.Lookup(uint32(k), &n[k]); err != nil {
			t.Fatalf("read decap_counts[%d]: %v", k, err)
		}
	}
	return n
}

// waitNeighbours waits until the balancer knows the MACs of every
// backend's addresses.
func waitNeighbours(t *testing.T, lb *netnstest.NS) {
	t.Helper()
	var addrs []netip.Addr
	for _, b := range backends {
		addrs = append(addrs, b.addr, b.addr6)
	}
	waitKnown(t, lb, addrs)
}

// waitKnown waits until the neighbour table of lb holds a MAC for each of
// addrs.
func waitKnown(t *testing.T, lb *netnstest.NS, addrs []netip.Addr) {
	t.Helper()
	h := lb.Netlink(t)
	const valid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
		netlink.NUD_PROBE | netlink.NUD_STALE | netlink.NUD_DELAY
	deadline := time.Now().Add(liveWait)
	for {
		list, err := h.NeighList(0, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		known := map[netip.Addr]bool{}
		for _, n := range list {
			if a, ok := netip.AddrFromSlice(n.IP); ok && n.State&valid != 0 {
				known[a.Unmap()] = true
			}
		}
		var missing []netip.Addr
		for _, a := range addrs {
			if !known[a] {
				missing = append(missing, a)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the balancer knows no MAC for %v after %s: %v", missing, liveWait, list)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
