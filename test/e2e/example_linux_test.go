package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// exampleConfig is the repository's example, run as it is: the test reads
// it from here and never copies it.
const exampleConfig = "../../configs/halb.yaml"

// TestExampleRunsWithoutIPv6Routes is what issue 14 asks `halb run` to do
// with the example configuration on a host that boots before some of its
// routes: serve every backend it can reach and name the others in `halb
// status`. The balancer's namespace is the host the example describes
// (eth0 with unicast_src 192.0.2.1, the tracked eth1 and eth2), with the
// IPv4 backend network, 198.51.100.0/24, on its LAN and no route at all to
// the IPv6 backends 2001:db8:1::11 and ::12. Only the keys that name host
// paths are moved to the test's own, through HALB_* variables: the
// control socket and the bpffs. The health checks (http on /healthz for
// web, a datagram for dns), the VRRP instances with their sync group,
// track script and notify script run as written.
//
//	client 192.0.2.10 ──┐          ┌── web1..3 198.51.100.11-13 ┐ 192.0.2.100 and
//	                    ├── br0 ───┼── dns1,2  198.51.100.21-22 ├ 192.0.2.101
//	lb 192.0.2.1        │          └── sorry   198.51.100.99    ┘ on lo
//	   198.51.100.1  ───┘
func TestExampleRunsWithoutIPv6Routes(t *testing.T) {
	netnstest.Require(t)
	file, err := filepath.Abs(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	halb := halbtest.Build(t)
	n := newExampleNet(t)

	d := &daemon{t: t, bin: halb, cfg: file, sock: filepath.Join(n.dir, "halb.sock"), pins: filepath.Join(n.fs, "halb")}
	// The example's control.socket and datapath.bpffs are the host's
	// (/run/halb/halb.sock, /sys/fs/bpf/halb): the test's own instead, so
	// that it touches nothing of a halb the host may run. Both keys sit
	// outside lists, so their variables override them.
	t.Setenv("HALB_CONTROL_SOCKET", d.sock)
	t.Setenv("HALB_DATAPATH_BPFFS", d.pins)
	d.start(n.lb)
	start := time.Now()

	// Both instances of the WEB sync group become Master (no peer
	// answers at 192.0.2.2) and hold the VIPs; the http checks bring web's
	// two weighted backends in (the third has weight 0: draining).
	d.waitFor("VI_WEB4 and VI_WEB6 MASTER", func() bool {
		st := exampleStatus(d)
		masters := 0
		for _, in := range st.Instances {
			if in.State == "MASTER" {
				masters++
			}
		}
		return masters == 2
	})
	t.Logf("both instances MASTER %s after the start", time.Since(start).Round(time.Millisecond))
	d.waitLive("web", "web's two weighted backends live", 2)
	d.waitFor("dns's two backends live", func() bool { return len(d.live("dns")) == 2 })
	t.Logf("web's and dns's backends live %s after the start", time.Since(start).Round(time.Millisecond))

	// A request through each IPv4 VIP reaches a backend.
	seen := map[string]int{}
	for i := range 20 {
		name, err := httpGet(n.client, netip.MustParseAddr("192.0.2.100"), 80, 43000+i)
		if err != nil {
			t.Fatalf("request %d to web (192.0.2.100:80): %v", i+1, err)
		}
		seen[name]++
	}
	t.Logf("20 requests to web: %v", seen)
	if seen["web1"] == 0 || seen["web2"] == 0 || total(seen) != 20 {
		t.Errorf("20 requests to web went to %v, want web1 and web2 (web3 drains with weight 0)", seen)
	}
	name, err := udpAsk(n.client, netip.MustParseAddr("192.0.2.101"), 53, "hello")
	if err != nil || (name != "dns1" && name != "dns2") {
		t.Errorf("a datagram to dns (192.0.2.101:53): answered by %q (%v), want dns1 or dns2", name, err)
	}

	// Each IPv6 backend is in halb status with its problem.
	st := exampleStatus(d)
	for _, addr := range []string{"2001:db8:1::11", "2001:db8:1::12"} {
		var found *exampleBackend
		for _, s := range st.Services {
			for i, b := range s.Backends {
				if s.Name == "web6" && strings.Contains(b.Backend, addr) {
					found = &s.Backends[i]
				}
			}
		}
		switch {
		case found == nil:
			t.Errorf("halb status --json shows no backend %s in web6: %+v", addr, st.Services)
		case found.Live || !strings.Contains(found.Problem, "no route"):
			t.Errorf("halb status --json: web6's %s is live=%v with problem %q, want not live and \"no route ...\"", addr, found.Live, found.Problem)
		default:
			t.Logf("web6's %s: %s", found.Backend, found.Problem)
		}
	}
	if d.proc.Exited() {
		t.Fatalf("halb run exited: %v", d.proc.Err())
	}
	stopping := time.Now()
	d.stop()
	t.Logf("halb stopped %s after SIGTERM", time.Since(stopping).Round(time.Millisecond))
}

// exampleNet is the network of TestExampleRunsWithoutIPv6Routes.
type exampleNet struct {
	dir        string
	fs         string // a bpf filesystem for the pins
	lb, client *netnstest.NS
	lan        *lan // 192.0.2.0/24 and 198.51.100.0/24, where a router can be plugged
}

func newExampleNet(t *testing.T) *exampleNet {
	t.Helper()
	n := &exampleNet{dir: t.TempDir()}
	lan := newLAN(t, netnstest.New(t))
	n.lan = lan
	n.lb = netnstest.New(t)
	// XDP_TX into a veth needs an XDP program on its peer.
	lan.xdpPass(lan.plug(n.lb, "sw-lb", netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1")))
	// eth1 and eth2, tracked by VI_WEB4: a veth pair, both ends up.
	h := n.lb.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "eth2"}); err != nil {
		t.Fatalf("add eth1 and eth2: %v", err)
	}
	for _, name := range []string{"eth1", "eth2"} {
		l, err := h.LinkByName(name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("bring up %s: %v", name, err)
		}
	}

	n.client = netnstest.New(t)
	lan.plug(n.client, "sw-client", clientIP)
	onLinkRoute(t, n.client, "198.51.100.0/24")
	if err := n.client.Do(func() error { return txChecksumOff("eth0") }); err != nil {
		t.Fatal(err)
	}

	vips := []netip.Addr{netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("192.0.2.101")}
	for _, be := range []struct {
		name, addr string
		udp        bool
	}{
		{"web1", "198.51.100.11", false}, {"web2", "198.51.100.12", false}, {"web3", "198.51.100.13", false},
		{"dns1", "198.51.100.21", true}, {"dns2", "198.51.100.22", true},
		{"sorry", "198.51.100.99", false},
	} {
		ns := netnstest.New(t)
		addr := netip.MustParseAddr(be.addr)
		lan.plug(ns, "sw-"+be.name, addr)
		onLinkRoute(t, ns, "192.0.2.0/24")
		holdAddrs(t, ns, vips...)
		if be.udp {
			for _, a := range append([]netip.Addr{addr}, vips[1]) {
				serveUDP(t, ns, be.name, netip.AddrPortFrom(a, 53))
			}
		} else {
			serveHTTP(t, ns, be.name)
		}
	}
	// bpffs for the pins below it.
	n.fs = halbtest.BPFFS(t)
	return n
}

// onLinkRoute routes prefix straight onto ns's eth0: the balancer's LAN
// carries both the clients' and the backends' networks.
func onLinkRoute(t *testing.T, ns *netnstest.NS, prefix string) {
	t.Helper()
	h := ns.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	_, dst, err := net.ParseCIDR(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: dst}); err != nil {
		t.Fatalf("route %s onto eth0: %v", prefix, err)
	}
}

// holdAddrs is holdVIP for other VIPs: addrs on lo, and ARP answered
// only for eth0's own addresses.
func holdAddrs(t *testing.T, ns *netnstest.NS, addrs ...netip.Addr) {
	t.Helper()
	h := ns.Netlink(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}); err != nil {
			t.Fatalf("add %s to lo: %v", a, err)
		}
	}
	err = ns.Do(func() error {
		for _, dev := range []string{"all", "eth0"} {
			for knob, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2"} {
				if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", dev, knob), []byte(v), 0o644); err != nil {
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

// serveHTTP answers every request on port 80 of ns with 200 and name: the
// example's http health check (GET /healthz, 200 or 204) and the client's
// requests through the VIP.
func serveHTTP(t *testing.T, ns *netnstest.NS, name string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", ":80")
		return err
	}); err != nil {
		t.Fatalf("%s: listen on port 80: %v", name, err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, name) }),
		ReadHeaderTimeout: opTimeout,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// serveUDP answers each datagram to at in ns with name, from at: bound to
// the VIP, the answer leaves with the VIP as its source, as a DR backend's
// must.
func serveUDP(t *testing.T, ns *netnstest.NS, name string, at netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatalf("%s: listen on udp %s: %v", name, at, err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte(name), from)
		}
	}()
	t.Cleanup(func() { c.Close() })
}

// httpGet asks GET / of vip:port from ns, from the client's address and
// port src, and returns the body's first line: the backend's name. The
// connection is made on ns's thread (net/http would dial on another).
func httpGet(ns *netnstest.NS, vip netip.Addr, port, src int) (string, error) {
	var name string
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: clientIP.AsSlice(), Port: src}}
		c, err := d.Dial("tcp", netip.AddrPortFrom(vip, uint16(port)).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(opTimeout))
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", vip); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if resp.StatusCode != http.StatusOK || err != nil {
			return fmt.Errorf("status %s, body %q (%v)", resp.Status, line, err)
		}
		name = strings.TrimSpace(line)
		return nil
	})
	return name, err
}

// udpAsk sends msg to vip:port from ns and returns the answer.
func udpAsk(ns *netnstest.NS, vip netip.Addr, port uint16, msg string) (string, error) {
	var answer string
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, port)))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1500)
		// A datagram can be lost while the balancer learns the
		// backend's MAC: a few tries, each bounded.
		for try := 0; try < 5; try++ {
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil {
				answer = string(buf[:n])
				return nil
			}
		}
		return fmt.Errorf("no answer to 5 datagrams")
	})
	return answer, err
}

// exampleBackend and exampleStatusJSON are the parts of `halb status
// --json` the test reads.
type exampleBackend struct {
	Backend string `json:"backend"`
	Live    bool   `json:"live"`
	Problem string `json:"problem"`
}

type exampleStatusJSON struct {
	Instances []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"instances"`
	Services []struct {
		Name     string           `json:"name"`
		Backends []exampleBackend `json:"backends"`
	} `json:"services"`
}

func exampleStatus(d *daemon) exampleStatusJSON {
	var st exampleStatusJSON
	out, err := exec.Command(d.bin, "status", "--json", "-s", d.sock).Output()
	if err == nil {
		_ = json.Unmarshal(out, &st)
	}
	return st
}
