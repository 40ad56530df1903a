package e2e

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// The network of TestDR and TestTUN, one bridge in a "switch" namespace and
// five namespaces plugged into it by veths, each with its eth0 on
// 192.0.2.0/24 and 2001:db8::/64:
//
//	client 192.0.2.10 ::10 ──┐          ┌── be1 192.0.2.11 ::11 ┐ 198.51.100.10 and
//	                         ├── br0 ───┼── be2 192.0.2.12 ::12 ├ 2001:db8:100::10
//	lb     192.0.2.2  ::2  ──┘          └── be3 192.0.2.13 ::13 ┘ on lo
//
// The client routes the VIPs through the balancer, where halb's data path
// on eth0 sends each frame back out to a backend, which holds the VIPs on
// lo and answers the client directly. The balancer holds neither VIP and
// has no route to them: if a connection works, the data path carried it.
var (
	vip       = netip.MustParseAddr("198.51.100.10")
	vip6      = netip.MustParseAddr("2001:db8:100::10")
	clientIP  = netip.MustParseAddr("192.0.2.10")
	clientIP6 = netip.MustParseAddr("2001:db8::10")
	lbIP      = netip.MustParseAddr("192.0.2.2")
	lbIP6     = netip.MustParseAddr("2001:db8::2")
	webKey    = service.Key{VIP: vip, Port: 80, Proto: service.TCP}
	backends  = []struct {
		name        string
		addr, addr6 netip.Addr
	}{
		{"be1", netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::11")},
		{"be2", netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("2001:db8::12")},
		{"be3", netip.MustParseAddr("192.0.2.13"), netip.MustParseAddr("2001:db8::13")},
	}
)

// Bounds: every wait and every loop ends.
const (
	opTimeout  = 5 * time.Second  // one dial, read or write
	runTimeout = 60 * time.Second // one batch of connections
	liveWait   = 10 * time.Second // backends' MACs resolved
)

// bed is the network above, with the TCP servers running.
type bed struct {
	lan      *lan
	lb       *netnstest.NS
	lbPort   int // the switch's side of the balancer's veth
	client   *client
	client6  *client
	backends []*netnstest.NS // in the order of backends
}

// newBed builds the network for a data path on hook.
func newBed(t testing.TB, hook loader.Hook) *bed {
	t.Helper()
	b := &bed{lan: newLAN(t, netnstest.New(t)), lb: netnstest.New(t)}
	clientNS := netnstest.New(t)
	b.client = &client{ns: clientNS, src: clientIP, vip: vip}
	b.client6 = &client{ns: clientNS, src: clientIP6, vip: vip6}
	b.lan.plug(clientNS, "sw-client", clientIP, clientIP6)
	b.lbPort = b.lan.plug(b.lb, "sw-lb", lbIP, lbIP6)
	native := hook == loader.HookXDPNative
	if native {
		// A veth drops the frames native XDP sends into it (XDP_TX)
		// unless its peer has an XDP program to receive them: the
		// switch side of the balancer's veth gets one that passes
		// everything. A physical NIC has no such peer.
		b.lan.xdpPass(b.lbPort)
	}
	for _, be := range backends {
		ns := netnstest.New(t)
		b.lan.plug(ns, "sw-"+be.name, be.addr, be.addr6)
		holdVIP(t, ns)
		serve(t, ns, be.name, vip)
		serve(t, ns, be.name, vip6)
		b.backends = append(b.backends, ns)
	}
	h := clientNS.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ dst, gw netip.Addr }{{vip, lbIP}, {vip6, lbIP6}} {
		err := h.RouteAdd(&netlink.Route{
			LinkIndex: eth0.Attrs().Index,
			Dst:       &net.IPNet{IP: r.dst.AsSlice(), Mask: net.CIDRMask(r.dst.BitLen(), r.dst.BitLen())},
			Gw:        r.gw.AsSlice(),
		})
		if err != nil {
			t.Fatalf("route %s through the balancer: %v", r.dst, err)
		}
	}
	if native {
		// With TX checksum offload a veth hands on TCP segments whose
		// checksum is only partly computed, leaving the rest to the
		// hardware; native XDP forwards the bytes as they are, and the
		// backend drops them. On the skb path (generic XDP, tc) the
		// kernel finishes the checksum; a client behind a real NIC
		// sends finished ones.
		if err := clientNS.Do(func() error { return txChecksumOff("eth0") }); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// datapathConfig is the data path's configuration for mode on the
// balancer's eth0, pinned in a bpffs of the test's own.
func datapathConfig(t testing.TB, mode, xdpMode string) config.Datapath {
	t.Helper()
	root := halbtest.BPFFS(t)
	return config.Datapath{
		Mode:             mode,
		Interfaces:       []string{"eth0"},
		XDPMode:          xdpMode,
		BPFFS:            filepath.Join(root, "halb"),
		ConntrackEntries: 65536,
		MaglevTableSize:  65537,
	}
}

// webService is the service on key with the three backends at weight 1,
// at their IPv4 or IPv6 addresses as key's VIP is.
func webService(name string, key service.Key, fwd service.Forward) service.Service {
	s := service.Service{Name: name, Key: key, Scheduler: "mh", Forward: fwd}
	for _, b := range backends {
		a := b.addr
		if key.VIP.Is6() {
			a = b.addr6
		}
		s.Backends = append(s.Backends, service.Backend{Addr: a, Port: 80, Weight: 1})
	}
	return s
}

// drain sets the weight of backend name to 0 in s.
func drain(s *service.Service, name string) {
	for i, b := range backends {
		if b.name == name {
			s.Backends[i].Weight = 0
		}
	}
}

// checkSpread wants n connections spread over the three backends within
// ±25% of the mean. The client's ports are fixed, so the hashes, and these
// figures, are the same on every run.
func checkSpread(t *testing.T, what string, counts map[string]int, n int) {
	t.Helper()
	lo, hi := n/3*3/4, n/3*5/4
	for _, b := range backends {
		if c := counts[b.name]; c < lo || c > hi {
			t.Errorf("%s: %s got %d of %d connections, want %d to %d: %v", what, b.name, c, n, lo, hi, counts)
		}
	}
}

// start runs a Datapath inside the balancer's namespace, as halb would be
// started there.
func start(t testing.TB, lb *netnstest.NS, cfg config.Datapath) *loader.Datapath {
	t.Helper()
	var dp *loader.Datapath
	err := lb.Do(func() error {
		var err error
		dp, err = loader.NewDatapath(cfg, cfg.Mode, slog.New(slog.NewTextHandler(t.Output(), nil)))
		return err
	})
	if err != nil {
		t.Fatalf("NewDatapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// waitLive waits until the services have n live backends in all: for DR,
// their MACs known.
func waitLive(t testing.TB, dp *loader.Datapath, n int) {
	t.Helper()
	deadline := time.Now().Add(liveWait)
	for {
		st, err := dp.Status()
		if err != nil {
			t.Fatal(err)
		}
		live := 0
		for _, s := range st {
			for _, b := range s.Backends {
				if b.Live {
					live++
				}
			}
		}
		if live == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d live backends after %s, want %d: %+v", live, liveWait, n, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func logStatus(t *testing.T, dp *loader.Datapath) {
	t.Helper()
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		t.Logf("service %s id %d: %+v", s.Key, s.ID, s.Stats)
		for _, b := range s.Backends {
			t.Logf("  backend %s id %d weight %d live %v mac %s: %+v", b.Addr, b.ID, b.Weight, b.Live, b.MAC, b.Stats)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func total(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// lan is the bridge in the switch namespace.
type lan struct {
	t      testing.TB
	ns     *netnstest.NS
	h      *netlink.Handle
	bridge int
}

func newLAN(t testing.TB, sw *netnstest.NS) *lan {
	t.Helper()
	l := &lan{t: t, ns: sw, h: sw.Netlink(t)}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := l.h.LinkAdd(br); err != nil {
		t.Fatalf("add br0: %v", err)
	}
	if err := l.h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	l.bridge = br.Attrs().Index
	return l
}

// plug connects ns to the bridge: eth0 in ns with addrs on the LAN's
// prefixes, swName on the bridge. It returns swName's ifindex.
func (l *lan) plug(ns *netnstest.NS, swName string, addrs ...netip.Addr) int {
	return l.plugAs(ns, swName, "eth0", addrs...)
}

// plugAs is plug with ifName in ns rather than eth0.
func (l *lan) plugAs(ns *netnstest.NS, swName, ifName string, addrs ...netip.Addr) int {
	t := l.t
	t.Helper()
	// No duplicate address detection, for the link-local address either:
	// the test made every address on this LAN, and until DAD of the
	// link-local one ends (a second or two) neighbour discovery of the
	// others does not complete.
	err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: swName, MasterIndex: l.bridge},
		PeerName:      ifName,
		PeerNamespace: netlink.NsFd(int(ns.Handle())),
	}
	if err := l.h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", swName, err)
	}
	port, err := l.h.LinkByName(swName)
	if err == nil {
		err = l.h.LinkSetUp(port)
	}
	if err != nil {
		t.Fatalf("bring up %s: %v", swName, err)
	}
	h := ns.Netlink(t)
	eth0, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		bits := 24
		if a.Is6() {
			bits = 64
		}
		na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(eth0, na); err != nil {
			t.Fatalf("add %s to %s of %s: %v", a, ifName, swName, err)
		}
	}
	if err := h.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	return port.Attrs().Index
}

// xdpPass attaches a program that passes every frame to the switch port
// ifindex, natively.
func (l *lan) xdpPass(ifindex int) {
	t := l.t
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "halbtest_pass",
		Type:         ebpf.XDP,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		t.Fatalf("load XDP_PASS: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	attachXDP(t, l.ns, prog, ifindex)
	port, err := l.h.LinkByIndex(ifindex)
	if err != nil || port.Attrs().Xdp == nil || port.Attrs().Xdp.AttachMode != nl.XDP_ATTACHED_DRV {
		t.Fatalf("XDP_PASS on switch port %d not attached natively (%v)", ifindex, err)
	}
}

// attachXDP attaches prog natively to ifindex in ns until t ends.
func attachXDP(t testing.TB, ns *netnstest.NS, prog *ebpf.Program, ifindex int) {
	t.Helper()
	// The link resolves ifindex in the namespace of the attaching thread.
	var lk link.Link
	err := ns.Do(func() error {
		var err error
		lk, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		t.Fatalf("attach %s to interface %d: %v", prog, ifindex, err)
	}
	t.Cleanup(func() { lk.Close() })
}

// holdVIP gives a backend the VIPs on lo, and keeps it from answering ARP
// for the IPv4 one (arp_ignore=1: only for addresses of the interface asked
// on; arp_announce=2: never name the VIP as the source of its own
// requests), so that the clients' frames for the VIP go to the balancer
// alone. Neighbour discovery answers only for eth0's own addresses.
func holdVIP(t testing.TB, ns *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{vip, vip6} {
		na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(lo, na); err != nil {
			t.Fatalf("add the VIP %s to lo: %v", a, err)
		}
	}
	err = ns.Do(func() error {
		for _, dev := range []string{"all", "eth0"} {
			for knob, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2"} {
				// /proc/sys/net shows the namespace of the thread
				// that opens it.
				p := filepath.Join("/proc/sys/net/ipv4/conf", dev, knob)
				if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// serve runs a TCP server on addr port 80 in ns: it greets each connection
// with name, then answers each line it reads with "name: line".
func serve(t testing.TB, ns *netnstest.NS, name string, addr netip.Addr) {
	t.Helper()
	startServer(t, ns, name, addr, 80)
}

// client makes connections from src in the client namespace to vip.
type client struct {
	ns       *netnstest.NS
	src, vip netip.Addr
}

// conn is one open connection and the backend that answered it.
type conn struct {
	net.Conn
	r       *bufio.Reader
	backend string
}

// dial connects from the client's port to the VIP and reads the greeting.
// It runs on a thread in the client's namespace.
func (c *client) dial(port int) (*conn, error) { return c.dialService(80, port) }

// dialService is dial to another port of the VIP.
func (c *client) dialService(svcPort uint16, port int) (*conn, error) {
	d := net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: c.src.AsSlice(), Port: port}}
	nc, err := d.Dial("tcp", netip.AddrPortFrom(c.vip, svcPort).String())
	if err != nil {
		return nil, err
	}
	cn := &conn{Conn: nc, r: bufio.NewReader(nc)}
	_ = nc.SetDeadline(time.Now().Add(opTimeout))
	line, err := cn.r.ReadString('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read the greeting from port %d: %w", port, err)
	}
	cn.backend = strings.TrimSpace(line)
	return cn, nil
}

func (c *client) connect(t *testing.T, port int) *conn {
	t.Helper()
	var cn *conn
	err := c.ns.Do(func() error {
		var err error
		cn, err = c.dial(port)
		return err
	})
	if err != nil {
		t.Fatalf("connect to %s from port %d: %v", c.vip, port, err)
	}
	return cn
}

// spread opens n connections from ports first, first+1, ... one after the
// other, and counts the backends that answered.
func (c *client) spread(t testing.TB, first, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	err := c.ns.Do(func() error {
		deadline := time.Now().Add(runTimeout)
		for i := range n {
			if time.Now().After(deadline) {
				return fmt.Errorf("%d connections took over %s", i, runTimeout)
			}
			cn, err := c.dial(first + i)
			if err != nil {
				return fmt.Errorf("connection %d of %d to %s: %w", i+1, n, c.vip, err)
			}
			counts[cn.backend]++
			cn.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v (so far %v)", err, counts)
	}
	return counts
}

// ping sends a line on an open connection and wants its backend's answer.
func (c *conn) ping(t *testing.T, when string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(c, "ping %s\n", when); err != nil {
		t.Fatalf("%s: write to %s: %v", when, c.backend, err)
	}
	line, err := c.r.ReadString('\n')
	if want := c.backend + ": ping " + when + "\n"; err != nil || line != want {
		t.Fatalf("%s: connection to %s answered %q (%v), want %q", when, c.backend, line, err, want)
	}
}

// echo sends line on an open connection and wants it back from its
// backend.
func (c *conn) echo(t *testing.T, line string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		t.Fatalf("write %d bytes to %s: %v", len(line), c.backend, err)
	}
	got, err := c.r.ReadString('\n')
	if want := c.backend + ": " + line + "\n"; err != nil || got != want {
		t.Fatalf("%d bytes to %s: answer of %d bytes (%v), want %d", len(line), c.backend, len(got), err, len(want))
	}
}

// txChecksumOff turns TX checksum offload off on ifname, as `ethtool -K
// ifname tx off` does.
func txChecksumOff(ifname string) error {
	return ethtoolOff(ifname, unix.ETHTOOL_STXCSUM, "tx checksum offload")
}

// tsoOff turns TCP segmentation offload off on ifname, as `ethtool -K
// ifname tso off` does.
func tsoOff(ifname string) error {
	return ethtoolOff(ifname, unix.ETHTOOL_STSO, "tcp segmentation offload")
}

// ethtoolOff sets the ethtool feature that cmd, an ETHTOOL_S* command, sets
// to off on ifname (SIOCETHTOOL).
func ethtoolOff(ifname string, cmd uint32, what string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [24]byte // the rest of struct ifreq's union
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("turn %s off on %s: %w", what, ifname, errno)
	}
	return nil
}
