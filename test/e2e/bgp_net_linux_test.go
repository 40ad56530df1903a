package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// The network of the BGP tests: a router running FRR (zebra and bgpd)
// between a client and the LAN of TestDR, where halb nodes announce the
// VIP to it and it spreads the client's flows over them with ECMP:
//
//	client 203.0.113.10 ── cl0 203.0.113.1  router  eth0 192.0.2.254 ──┐
//	                                                                   br0
//	node1 192.0.2.2 ┐                          ┌ be1 192.0.2.11 ┐      │
//	node2 192.0.2.3 ├─────────── br0 ──────────┼ be2 192.0.2.12 ├ VIP on lo
//	node3 192.0.2.4 ┘                          └ be3 192.0.2.13 ┘
//
// The router learns the VIP, 198.51.100.10/32, from the nodes alone: it
// holds no static route to it, and no node holds the VIP (the nodes'
// XDP data paths take its frames). Each node sends a flow's frames on to
// the backend its Maglev table names, and the backend answers the client
// through the router (DR). The router hashes flows on their ports
// (fib_multipath_hash_policy=1), so one client's connections spread
// over the nodes.
var (
	bgpRouterLAN = netip.MustParseAddr("192.0.2.254")
	bgpRouterCl  = netip.MustParsePrefix("203.0.113.1/24")
	bgpClientIP  = netip.MustParsePrefix("203.0.113.10/24")
	bgpVIPRoute  = netip.PrefixFrom(vip, 32)
)

// The router's AS and the nodes' (eBGP; the same AS on every node, so
// that the router takes their paths as equal: multipath).
const (
	bgpRouterASN = 65000
	bgpNodeASN   = 65001
)

// Bounds of the BGP tests' waits: a session established, a route
// announced or withdrawn. Far above what they take; they only catch a
// hang.
const (
	bgpSessionWait = 30 * time.Second
	bgpRouteWait   = 30 * time.Second
)

// bgpNet is the network above with FRR and the backends' servers
// running; nodes are added with node and started with their halb.
type bgpNet struct {
	t       testing.TB
	bin     string
	lan     *lan
	router  *netnstest.NS
	frr     *frrtest.Router
	client  *client
	servers map[string]*server // the backends' servers on port 80, by name
	nodes   []*bgpNode
	dir, fs string
}

// bgpNode is one halb node on the LAN.
type bgpNode struct {
	name string
	addr netip.Addr
	ns   *netnstest.NS
	port int  // its switch port's ifindex
	gone bool // stopped or lost: it announces nothing
	*daemon
}

// nodeSpec is what a node's configuration says beside the service.
type nodeSpec struct {
	announce  string        // always | master
	holdTime  time.Duration // the hold time the node proposes
	drainTime time.Duration
	bfd       bool // single-hop BFD to the router
	// vrrpPriority, when set, runs a VRRP instance holding the VIP on
	// eth0 (for announce: master).
	vrrpPriority int
}

// newBGPNet builds the network with n nodes, whose halb is bin, and
// starts FRR; bfd starts FRR's bfdd too, and asks for BFD on each
// session.
func newBGPNet(t testing.TB, bin string, n int, bfd bool) *bgpNet {
	t.Helper()
	frrtest.Require(t)
	bn := &bgpNet{t: t, bin: bin, servers: map[string]*server{}, dir: t.TempDir()}
	bn.lan = newLAN(t, netnstest.New(t))
	bn.router = netnstest.New(t)
	bn.lan.plug(bn.router, "sw-router", bgpRouterLAN)
	clientNS := netnstest.New(t)
	frrtest.Link(t, bn.router, "cl0", []netip.Prefix{bgpRouterCl}, clientNS, "eth0", []netip.Prefix{bgpClientIP})
	bn.client = &client{ns: clientNS, src: bgpClientIP.Addr(), vip: vip}
	defaultRoute(t, clientNS, "eth0", bgpRouterCl.Addr())
	routerSysctls(t, bn.router)
	// Native XDP forwards the client's segments as they come, so they
	// must carry a whole checksum (see newBed).
	if err := clientNS.Do(func() error { return txChecksumOff("eth0") }); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ns := netnstest.New(t)
		addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(2 + i)})
		name := fmt.Sprintf("node%d", i+1)
		port := bn.lan.plug(ns, "sw-"+name, addr)
		// XDP_TX into a veth needs an XDP program on its peer.
		bn.lan.xdpPass(port)
		bn.nodes = append(bn.nodes, &bgpNode{name: name, addr: addr, ns: ns, port: port})
	}
	for _, be := range backends {
		ns := netnstest.New(t)
		bn.lan.plug(ns, "sw-"+be.name, be.addr)
		holdVIP(t, ns)
		defaultRoute(t, ns, "eth0", bgpRouterLAN)
		bn.servers[be.name] = startServer(t, ns, be.name, netip.Addr{}, 80)
	}
	bn.fs = halbtest.BPFFS(t)
	var opts []frrtest.Option
	if bfd {
		opts = append(opts, frrtest.WithBFD(bfddConf))
	}
	bn.frr = frrtest.Start(t, bn.router, bn.frrConf(bfd), opts...)
	return bn
}

// frrConf is the router's bgpd configuration: every node a passive
// neighbor (the nodes open the sessions), the hold time the nodes
// propose offered too (bgpHold; with BFD, bgpHoldBFD), and up to 8 equal
// paths installed as one multipath route.
func (bn *bgpNet) frrConf(bfd bool) string {
	hold := bgpHold
	if bfd {
		hold = bgpHoldBFD
	}
	var b strings.Builder
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n", bgpRouterASN, bgpRouterLAN)
	for _, nd := range bn.nodes {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s passive\n", nd.addr, bgpNodeASN, nd.addr)
		fmt.Fprintf(&b, " neighbor %s timers %d %d\n", nd.addr, int(hold.Seconds())/3, int(hold.Seconds()))
		if bfd {
			fmt.Fprintf(&b, " neighbor %s bfd profile fast\n", nd.addr)
		}
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n")
	for _, nd := range bn.nodes {
		fmt.Fprintf(&b, "  neighbor %s activate\n", nd.addr)
	}
	b.WriteString(" exit-address-family\n")
	return b.String()
}

// bfddConf is the router's BFD profile for the nodes: a packet every
// 100 ms each way, down after 3 missed (300 ms), as the nodes ask.
const bfddConf = "bfd\n profile fast\n  detect-multiplier 3\n  receive-interval 100\n  transmit-interval 100\n exit\nexit\n"

// routerSysctls make the router forward, and hash flows over a
// multipath route by their ports too (layer 4), so that one client's
// connections spread over the nodes.
func routerSysctls(t testing.TB, ns *netnstest.NS) {
	t.Helper()
	err := ns.Do(func() error {
		for k, v := range map[string]string{"ipv4/ip_forward": "1", "ipv4/fib_multipath_hash_policy": "1"} {
			if err := os.WriteFile(filepath.Join("/proc/sys/net", k), []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("router sysctls: %v", err)
	}
}

// defaultRoute routes everything from ns through gw on ifName.
func defaultRoute(t testing.TB, ns *netnstest.NS, ifName string, gw netip.Addr) {
	t.Helper()
	h := ns.Netlink(t)
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		t.Fatalf("default route through %s: %v", gw, err)
	}
}

// start writes node nd's configuration and starts its halb.
func (bn *bgpNet) start(nd *bgpNode, spec nodeSpec) {
	t := bn.t
	t.Helper()
	nd.daemon = &daemon{t: t, bin: bn.bin, cfg: filepath.Join(bn.dir, nd.name+".yaml"),
		sock: filepath.Join(bn.dir, nd.name+".sock"), pins: filepath.Join(bn.fs, nd.name)}
	nd.text = nodeConfig(nd, spec)
	if err := os.WriteFile(nd.cfg, []byte(nd.text), 0o600); err != nil {
		t.Fatal(err)
	}
	nd.daemon.start(nd.ns)
}

// startAll starts every node with spec (announce: always) and waits
// until the router routes the VIP through all of them.
func (bn *bgpNet) startAll(spec nodeSpec) {
	bn.t.Helper()
	for _, nd := range bn.nodes {
		bn.start(nd, spec)
	}
	bn.established(bn.nodes...)
	for _, nd := range bn.nodes {
		nd.waitLive("web", nd.name+": all three backends live", 3)
	}
	bn.waitRoute(fmt.Sprintf("the VIP through all %d nodes", len(bn.nodes)), bn.nodes...)
}

// nodeConfig is node nd's halb configuration: the service web on the VIP
// with the three backends, announced as spec says to the router.
func nodeConfig(nd *bgpNode, spec nodeSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s, metrics: \"\"}\n", nd.sock)
	fmt.Fprintf(&b, "datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0], bpffs: %s}\n", nd.pins)
	fmt.Fprintf(&b, "bgp:\n  asn: %d\n  router_id: %s\n  drain_time: %s\n  peers:\n", bgpNodeASN, nd.addr, spec.drainTime)
	fmt.Fprintf(&b, "    - {address: %s, asn: %d, hold_time: %s", bgpRouterLAN, bgpRouterASN, spec.holdTime)
	if spec.bfd {
		b.WriteString(", bfd: {min_rx: 100ms, min_tx: 100ms, multiplier: 3}")
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "services:\n  - name: web\n    vip: %s\n    port: 80\n    announce: %s\n    backends:\n", vip, spec.announce)
	for _, be := range backends {
		fmt.Fprintf(&b, "      - {address: %s}\n", be.addr)
	}
	fmt.Fprintf(&b, "    health_check: {type: tcp, interval: %s, timeout: 300ms, rise: %d, fall: %d}\n", daemonInterval, daemonRise, daemonFall)
	if spec.vrrpPriority > 0 {
		fmt.Fprintf(&b, "vrrp:\n  instances:\n    - {name: VI_1, interface: eth0, vrid: 51, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/32]}\n",
			spec.vrrpPriority, vip)
	}
	return b.String()
}

// established waits until the router has an established session with
// each of the nodes.
func (bn *bgpNet) established(nodes ...*bgpNode) {
	t := bn.t
	t.Helper()
	frrtest.Eventually(t, bgpSessionWait, "sessions established", func() error {
		ns, err := bn.frr.Neighbors()
		if err != nil {
			return err
		}
		for _, nd := range nodes {
			if st := ns[nd.addr.String()].State; st != "Established" {
				return fmt.Errorf("the router's session with %s is %q", nd.name, st)
			}
		}
		return nil
	})
}

// bfdUp waits until the router's BFD session with each node is up.
func (bn *bgpNet) bfdUp() {
	t := bn.t
	t.Helper()
	frrtest.Eventually(t, bgpSessionWait, "BFD up with every node", func() error {
		peers, err := bn.frr.BFDPeers()
		if err != nil {
			return err
		}
		up := map[string]bool{}
		for _, p := range peers {
			up[p.Peer] = p.Status == "up"
		}
		for _, nd := range bn.nodes {
			if !up[nd.addr.String()] {
				return fmt.Errorf("the router's BFD peers: %+v", peers)
			}
		}
		return nil
	})
}

// ribPath is one path of the VIP's route in the router's RIB, with
// what `show bgp` says of multipath.
type ribPath struct {
	Valid     bool `json:"valid"`
	Multipath bool `json:"multipath"`
	Nexthops  []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
	Bestpath struct {
		Overall bool `json:"overall"`
	} `json:"bestpath"`
}

// ribNextHops is the next hops of the VIP's paths in the router's BGP
// RIB, sorted: the nodes that announce it. Each path must be valid, and
// with more than one, each must be best or multipath.
func (bn *bgpNet) ribNextHops() ([]string, error) {
	var out struct {
		Prefix string    `json:"prefix"`
		Paths  []ribPath `json:"paths"`
	}
	if err := bn.frr.Show("show bgp ipv4 unicast "+bgpVIPRoute.String(), &out); err != nil {
		return nil, err
	}
	if out.Prefix != bgpVIPRoute.String() {
		return nil, nil // no route: {} or a covering one
	}
	var hops []string
	for _, p := range out.Paths {
		if len(p.Nexthops) != 1 {
			return nil, fmt.Errorf("a path with next hops %+v, want one", p.Nexthops)
		}
		if !p.Valid || len(out.Paths) > 1 && !p.Multipath && !p.Bestpath.Overall {
			return nil, fmt.Errorf("path via %s: valid %v, multipath %v, best %v", p.Nexthops[0].IP, p.Valid, p.Multipath, p.Bestpath.Overall)
		}
		hops = append(hops, p.Nexthops[0].IP)
	}
	slices.Sort(hops)
	return hops, nil
}

// kernelNextHops is the next hops of the VIP's route in the router's
// kernel (zebra's work), sorted; none when it has no route.
func (bn *bgpNet) kernelNextHops() ([]string, error) {
	routes, err := bn.router.Netlink(bn.t).RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil, err
	}
	var hops []string
	for _, r := range routes {
		if r.Gw != nil {
			hops = append(hops, r.Gw.String())
		}
		for _, nh := range r.MultiPath {
			hops = append(hops, nh.Gw.String())
		}
	}
	slices.Sort(hops)
	return hops, nil
}

// addrsOf is the nodes' addresses, sorted as the next hops are.
func addrsOf(nodes ...*bgpNode) []string {
	var out []string
	for _, nd := range nodes {
		out = append(out, nd.addr.String())
	}
	slices.Sort(out)
	return out
}

// waitRoute waits until the router's RIB, and its kernel, route the VIP
// through exactly the nodes given (none: no route), and returns how long
// the RIB took.
func (bn *bgpNet) waitRoute(what string, nodes ...*bgpNode) time.Duration {
	bn.t.Helper()
	return bn.routeSince(time.Now(), what, nodes...)
}

// routeSince is waitRoute for a change that began at since: it returns
// the time from since to the first poll of the RIB that saw the nodes.
func (bn *bgpNet) routeSince(since time.Time, what string, nodes ...*bgpNode) time.Duration {
	bn.t.Helper()
	want := addrsOf(nodes...)
	var ribAt time.Duration
	bn.pollRoute(what, func() error { return bn.routeIs(want, since, &ribAt) })
	return ribAt
}

// withdrawnSince waits until nd's path has left the router's RIB and
// returns the time from since to the first poll that saw it gone. It
// looks at nd's path alone: on a loaded machine another node's session
// may drop meanwhile (a BFD of 100 ms × 3 missed by a stalled process)
// and come back seconds later, and its return says nothing of how soon
// the router gave up nd.
func (bn *bgpNet) withdrawnSince(since time.Time, what string, nd *bgpNode) time.Duration {
	bn.t.Helper()
	var gone time.Duration
	bn.pollRoute(what, func() error {
		rib, err := bn.ribNextHops()
		switch {
		case err != nil:
			return err
		case slices.Contains(rib, nd.addr.String()):
			return fmt.Errorf("the router's RIB has the VIP via %v", rib)
		}
		gone = time.Since(since)
		return nil
	})
	return gone
}

// pollRoute polls done every 20 ms until it holds, and fails the test
// when it does not within bgpRouteWait. A poll of the RIB (vtysh) takes
// some 10 to 50 ms more.
func (bn *bgpNet) pollRoute(what string, done func() error) {
	t := bn.t
	t.Helper()
	deadline := time.Now().Add(bgpRouteWait)
	for {
		err := done()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, bgpRouteWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// routeIs errs unless the RIB and the kernel route the VIP through want;
// it sets *ribAt, if still 0, to the time since since when the RIB does.
func (bn *bgpNet) routeIs(want []string, since time.Time, ribAt *time.Duration) error {
	rib, err := bn.ribNextHops()
	if err != nil {
		return err
	}
	if !slices.Equal(rib, want) {
		return fmt.Errorf("the router's RIB has the VIP via %v, want %v", rib, want)
	}
	if *ribAt == 0 {
		*ribAt = time.Since(since)
	}
	kernel, err := bn.kernelNextHops()
	if err != nil {
		return err
	}
	if !slices.Equal(kernel, want) {
		return fmt.Errorf("the router's kernel routes the VIP via %v, want %v", kernel, want)
	}
	return nil
}

// newFlows is the flows node nd's data path scheduled for web, from its
// `halb status --json`.
func (nd *bgpNode) newFlows() (uint64, error) {
	out, err := runOut(nd.bin, "status", "--json", "-s", nd.sock)
	if err != nil {
		return 0, err
	}
	var st struct {
		Services []struct {
			Name     string `json:"name"`
			NewFlows uint64 `json:"new_flows"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return 0, err
	}
	for _, s := range st.Services {
		if s.Name == "web" {
			return s.NewFlows, nil
		}
	}
	return 0, fmt.Errorf("%s: no service web in halb status", nd.name)
}

// holdsOnLo reports whether ns has addr on lo, as a host route.
func holdsOnLo(t testing.TB, ns *netnstest.NS, addr netip.Addr) bool {
	t.Helper()
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ones, bits := a.Mask.Size()
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr && ones == bits {
			return true
		}
	}
	return false
}

// arpWhoHas asks, from ns's ifName with address src, who has target (an
// ARP request, broadcast), and returns the MACs that answer within a
// second.
func arpWhoHas(t testing.TB, ns *netnstest.NS, ifName string, src, target netip.Addr) []net.HardwareAddr {
	t.Helper()
	var macs []net.HardwareAddr
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifName)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ARP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		if _, err := unix.Write(fd, arpRequest(ifi.HardwareAddr, src, target)); err != nil {
			return fmt.Errorf("send an arp request: %w", err)
		}
		buf := make([]byte, 1500)
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
			n, err := unix.Read(fd, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if mac, ok := arpReplyFrom(buf[:n], target); ok {
				macs = append(macs, mac)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("arp who-has %s on %s: %v", target, ifName, err)
	}
	return macs
}

// arpRequest is the broadcast frame asking who has target, from mac and
// src (RFC 826).
func arpRequest(mac net.HardwareAddr, src, target netip.Addr) []byte {
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, mac...)
	f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, sizes, request
	f = append(f, mac...)
	f = append(f, src.AsSlice()...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	return append(f, target.AsSlice()...)
}

// arpReplyFrom is the sender MAC of f when f is an ARP reply for target.
func arpReplyFrom(f []byte, target netip.Addr) (net.HardwareAddr, bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP || binary.BigEndian.Uint16(f[20:]) != 2 {
		return nil, false
	}
	if !bytes.Equal(f[28:32], target.AsSlice()) {
		return nil, false
	}
	return net.HardwareAddr(bytes.Clone(f[22:28])), true
}
