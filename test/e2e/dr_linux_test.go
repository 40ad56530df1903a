package e2e

import (
	"bufio"
	"context"
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
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// The network of TestDR, one bridge in a "switch" namespace and five
// namespaces plugged into it by veths, each with its eth0 on 192.0.2.0/24:
//
//	client 192.0.2.10 ──┐            ┌── be1 192.0.2.11 ┐
//	                    ├── br0 ─────┼── be2 192.0.2.12 ├ 198.51.100.10 on lo
//	lb     192.0.2.2  ──┘            └── be3 192.0.2.13 ┘
//
// The client routes the VIP 198.51.100.10 through the balancer; halb_xdp_lb
// on the balancer's eth0 rewrites the MACs and sends each frame back out
// (XDP_TX) to a backend, which holds the VIP on lo and answers the client
// directly. The balancer has neither the VIP nor IP forwarding: if a
// connection works, DR carried it.
var (
	vip      = netip.MustParseAddr("198.51.100.10")
	clientIP = netip.MustParseAddr("192.0.2.10")
	webKey   = service.Key{VIP: vip, Port: 80, Proto: service.TCP}
	backends = []struct {
		name string
		addr netip.Addr
	}{
		{"be1", netip.MustParseAddr("192.0.2.11")},
		{"be2", netip.MustParseAddr("192.0.2.12")},
		{"be3", netip.MustParseAddr("192.0.2.13")},
	}
)

// Bounds: every wait and every loop ends.
const (
	opTimeout  = 5 * time.Second  // one dial, read or write
	runTimeout = 60 * time.Second // one batch of connections
	liveWait   = 10 * time.Second // backends' MACs resolved
)

// TestDR runs halb's eBPF data path in a balancer namespace, through the
// loader's Datapath as `halb run` does, in front of three real TCP
// servers, and shows: flows spread evenly over the backends; the data path
// forwards while halb is stopped and after it restarts; a drained backend
// gets no new connection and keeps the one it has; bpftool reads the
// pinned maps and finds the program by name; Cleanup leaves nothing. It
// does so on each hook the data path attaches to.
func TestDR(t *testing.T) {
	netnstest.Require(t)
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		netnstest.SkipOrFail(t, "bpftool is not installed (Debian: apt-get install bpftool)")
	}
	for _, v := range []struct {
		mode, xdpMode string
		hook          loader.Hook
		prog          string
	}{
		{config.ModeXDP, "native", loader.HookXDPNative, "halb_xdp_lb"},
		{config.ModeXDP, "generic", loader.HookXDPGeneric, "halb_xdp_lb"},
		{config.ModeTC, "auto", loader.HookTCX, "halb_tc_lb"},
	} {
		t.Run(string(v.hook), func(t *testing.T) {
			testDR(t, bpftool, v.mode, v.xdpMode, v.hook, v.prog)
		})
	}
}

func testDR(t *testing.T, bpftool, mode, xdpMode string, hook loader.Hook, prog string) {
	sw := netnstest.New(t)
	lan := newLAN(t, sw)
	clientNS := netnstest.New(t)
	lan.plug(clientNS, "sw-client", "192.0.2.10/24")
	lb := netnstest.New(t)
	lbPort := lan.plug(lb, "sw-lb", "192.0.2.2/24")
	native := hook == loader.HookXDPNative
	if native {
		// A veth drops the frames native XDP sends into it (XDP_TX)
		// unless its peer has an XDP program to receive them: the
		// switch side of the balancer's veth gets one that passes
		// everything. A physical NIC has no such peer.
		lan.xdpPass(lbPort)
	}
	for _, b := range backends {
		ns := netnstest.New(t)
		lan.plug(ns, "sw-"+b.name, b.addr.String()+"/24")
		holdVIP(t, ns)
		serve(t, ns, b.name)
	}
	h := clientNS.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{
		LinkIndex: eth0.Attrs().Index,
		Dst:       &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Gw:        net.IP{192, 0, 2, 2},
	}); err != nil {
		t.Fatalf("route the VIP through the balancer: %v", err)
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

	root := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC {
			if err := unix.Unmount(root, 0); err != nil {
				t.Errorf("unmount %s: %v", root, err)
			}
		}
	})
	cfg := config.Datapath{
		Mode:             mode,
		Interfaces:       []string{"eth0"},
		XDPMode:          xdpMode,
		BPFFS:            filepath.Join(root, "halb"),
		ConntrackEntries: 65536,
		MaglevTableSize:  65537,
	}
	services := []service.Service{{Name: "web", Key: webKey, Scheduler: "mh", Forward: service.DR}}
	for _, b := range backends {
		services[0].Backends = append(services[0].Backends, service.Backend{Addr: b.addr, Port: 80, Weight: 1})
	}
	ctx := context.Background()

	dp := start(t, lb, cfg)
	if got := dp.Attachments(); len(got) != 1 || got[0].Hook != hook {
		t.Fatalf("attachments %v, want %s on eth0", got, hook)
	}
	if hook == loader.HookTCX {
		if n := tcxPrograms(t, lb, lbIndex(t, lb)); n != 1 {
			t.Fatalf("%d tcx programs on the balancer's eth0, want 1", n)
		}
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 3)

	t.Run("bpftool reads the pins", func(t *testing.T) {
		out := run(t, bpftool, "map", "dump", "pinned", filepath.Join(cfg.BPFFS, "halb_services"))
		for _, field := range []string{`"vip"`, `"port": 80`, `"proto": 6`, `"family": "FAMILY_IPV4"`, `"forward": "FORWARD_DR"`} {
			if !strings.Contains(out, field) {
				t.Errorf("bpftool map dump of halb_services lacks %s:\n%s", field, out)
			}
		}
		out = run(t, bpftool, "map", "dump", "pinned", filepath.Join(cfg.BPFFS, "halb_backends"))
		for _, field := range []string{`"mac"`, `"weight": 1`, `"flags": "BACKEND_F_ACTIVE"`} {
			if !strings.Contains(out, field) {
				t.Errorf("bpftool map dump of halb_backends lacks %s", field)
			}
		}
		out = run(t, bpftool, "prog", "show", "name", prog)
		if !strings.Contains(out, "name "+prog) {
			t.Errorf("bpftool prog show name %s:\n%s", prog, out)
		}
	})

	c := &client{ns: clientNS}
	counts := c.spread(t, 40000, 300)
	t.Logf("300 connections: %v", counts)
	for _, b := range backends {
		// Within ±25% of the mean of 100. The client's ports are fixed,
		// so the hashes, and these figures, are the same on every run.
		if n := counts[b.name]; n < 75 || n > 125 {
			t.Errorf("%s got %d of 300 connections, want 75 to 125: %v", b.name, n, counts)
		}
	}
	logStatus(t, dp)

	// A connection that stays open through the restart and the drain.
	keep := c.connect(t, 39999)
	defer keep.Close()
	keep.ping(t, "before the restart")

	// halb stops: the program stays attached and keeps forwarding.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	keep.ping(t, "while halb is stopped")
	if n := total(c.spread(t, 40400, 30)); n != 30 {
		t.Errorf("%d of 30 connections while halb was stopped", n)
	}

	// halb starts again and adopts what is pinned.
	dp = start(t, lb, cfg)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 3)
	keep.ping(t, "after the restart")

	// Drain keep's backend.
	for i := range services[0].Backends {
		if backends[i].name == keep.backend {
			services[0].Backends[i].Weight = 0
		}
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 2)
	counts = c.spread(t, 41000, 150)
	t.Logf("150 connections with %s drained: %v", keep.backend, counts)
	if counts[keep.backend] != 0 {
		t.Errorf("drained %s got %d new connections", keep.backend, counts[keep.backend])
	}
	if total(counts) != 150 || len(counts) != 2 {
		t.Errorf("%v: want all 150 connections on the two live backends", counts)
	}
	keep.ping(t, "after the drain")
	logStatus(t, dp)

	// Cleanup: nothing attached, nothing pinned.
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
	l, err := lb.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d still on the balancer's eth0 after Cleanup", x.ProgId)
	}
	if n := tcxPrograms(t, lb, l.Attrs().Index); n != 0 {
		t.Errorf("%d tcx programs still on the balancer's eth0 after Cleanup", n)
	}
	if _, err := os.Stat(cfg.BPFFS); !os.IsNotExist(err) {
		t.Errorf("%s still there after Cleanup (%v)", cfg.BPFFS, err)
	}
}

func lbIndex(t *testing.T, lb *netnstest.NS) int {
	t.Helper()
	l, err := lb.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// tcxPrograms counts the programs on ifindex's tcx ingress.
func tcxPrograms(t *testing.T, ns *netnstest.NS, ifindex int) int {
	t.Helper()
	var n int
	err := ns.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx ingress of the balancer's eth0: %v", err)
	}
	return n
}

// start runs a Datapath inside the balancer's namespace, as halb would be
// started there.
func start(t *testing.T, lb *netnstest.NS, cfg config.Datapath) *loader.Datapath {
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

// waitLive waits until the service has n live backends: their MACs known.
func waitLive(t *testing.T, dp *loader.Datapath, n int) {
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
	t      *testing.T
	ns     *netnstest.NS
	h      *netlink.Handle
	bridge int
}

func newLAN(t *testing.T, sw *netnstest.NS) *lan {
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

// plug connects ns to the bridge: eth0 in ns with addr, swName on the
// bridge. It returns swName's ifindex.
func (l *lan) plug(ns *netnstest.NS, swName, addr string) int {
	t := l.t
	t.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: swName, MasterIndex: l.bridge},
		PeerName:      "eth0",
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
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(eth0, a); err != nil {
		t.Fatalf("add %s: %v", addr, err)
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
	// The link resolves ifindex in the namespace of the attaching thread.
	var lk link.Link
	err = l.ns.Do(func() error {
		var err error
		lk, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		t.Fatalf("attach XDP_PASS to the switch port: %v", err)
	}
	t.Cleanup(func() { lk.Close() })
	port, err := l.h.LinkByIndex(ifindex)
	if err != nil || port.Attrs().Xdp == nil || port.Attrs().Xdp.AttachMode != nl.XDP_ATTACHED_DRV {
		t.Fatalf("XDP_PASS on switch port %d not attached natively (%v)", ifindex, err)
	}
}

// holdVIP gives a backend the VIP on lo, and keeps it from answering ARP
// for it (arp_ignore=1: only for addresses of the interface asked on;
// arp_announce=2: never name the VIP as the source of its own requests),
// so that the clients' frames for the VIP go to the balancer alone.
func holdVIP(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("add the VIP to lo: %v", err)
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

// serve runs a TCP server on the VIP in ns: it greets each connection with
// name, then answers each line it reads with "name: line".
func serve(t *testing.T, ns *netnstest.NS, name string) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(vip, 80).String())
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen: %v", name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(2 * runTimeout))
				fmt.Fprintf(conn, "%s\n", name)
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					fmt.Fprintf(conn, "%s: %s\n", name, sc.Text())
				}
			}()
		}
	}()
}

// client makes connections from the client namespace.
type client struct{ ns *netnstest.NS }

// conn is one open connection and the backend that answered it.
type conn struct {
	net.Conn
	r       *bufio.Reader
	backend string
}

// dial connects from the client's port to the VIP and reads the greeting.
// It runs on a thread in the client's namespace.
func dial(port int) (*conn, error) {
	d := net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: clientIP.AsSlice(), Port: port}}
	nc, err := d.Dial("tcp", netip.AddrPortFrom(vip, 80).String())
	if err != nil {
		return nil, err
	}
	c := &conn{Conn: nc, r: bufio.NewReader(nc)}
	_ = nc.SetDeadline(time.Now().Add(opTimeout))
	line, err := c.r.ReadString('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read the greeting from port %d: %w", port, err)
	}
	c.backend = strings.TrimSpace(line)
	return c, nil
}

func (c *client) connect(t *testing.T, port int) *conn {
	t.Helper()
	var cn *conn
	err := c.ns.Do(func() error {
		var err error
		cn, err = dial(port)
		return err
	})
	if err != nil {
		t.Fatalf("connect from port %d: %v", port, err)
	}
	return cn
}

// spread opens n connections from ports first, first+1, ... one after the
// other, and counts the backends that answered.
func (c *client) spread(t *testing.T, first, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	err := c.ns.Do(func() error {
		deadline := time.Now().Add(runTimeout)
		for i := range n {
			if time.Now().After(deadline) {
				return fmt.Errorf("%d connections took over %s", i, runTimeout)
			}
			cn, err := dial(first + i)
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
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

// txChecksumOff turns TX checksum offload off on ifname, as `ethtool -K
// ifname tx off` does (SIOCETHTOOL, ETHTOOL_STXCSUM).
func txChecksumOff(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_STXCSUM}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [24]byte // the rest of struct ifreq's union
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("turn tx checksum offload off on %s: %w", ifname, errno)
	}
	return nil
}
