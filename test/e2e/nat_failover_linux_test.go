package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestNATFailoverKeepsFlows is TestFailoverKeepsFlows for forward: nat,
// set up as keepalived's LVS-NAT pairs are: two halb nodes, each with eth0
// on the clients' LAN and eth1 on the backends' LAN; a VRRP instance holds
// the VIP on eth0 and a second one, in a sync group with it, holds the
// backends' default gateway (203.0.113.1) on eth1, so that the gateway
// moves with the VIP. The backends listen on 8080 at their own addresses
// for the service on 80. 200 connections open through lb1; lb1 is taken
// off both LANs and its halb killed; lb2 takes both VIPs, and its Maglev
// tables send each connection's packets to the backend it had, and its
// reply map, written from the configuration alone, translates the
// backends' replies: at least 99 % complete a request through lb2.
func TestNATFailoverKeepsFlows(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	front := newLAN(t, netnstest.New(t))
	back := newLAN(t, netnstest.New(t))
	clientNS := netnstest.New(t)
	front.plug(clientNS, "sw-client", clientIP)
	onLink(t, clientNS)
	gateway := netip.MustParseAddr("203.0.113.1")
	lbs := map[string]*netnstest.NS{}
	for i, name := range []string{"lb1", "lb2"} {
		ns := netnstest.New(t)
		// XDP_TX and redirects into a veth need an XDP program on its
		// peer.
		front.xdpPass(front.plug(ns, "sw-"+name, netip.AddrFrom4([4]byte{192, 0, 2, byte(2 + i)})))
		back.xdpPass(back.plugAs(ns, "sw-"+name+"b", "eth1", netip.AddrFrom4([4]byte{203, 0, 113, byte(2 + i)})))
		err := ns.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
		lbs[name] = ns
	}
	var addrs []string
	for _, be := range natBackends {
		ns := netnstest.New(t)
		back.plug(ns, "sw-"+be.name, be.addr)
		routeVia(t, ns, "eth0", gateway, netip.Addr{})
		startServer(t, ns, be.name, be.addr, natWebPort)
		if err := ns.Do(func() error { return txChecksumOff("eth0") }); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, be.addr.String())
	}
	if err := clientNS.Do(func() error { return txChecksumOff("eth0") }); err != nil {
		t.Fatal(err)
	}

	dir, fs := t.TempDir(), halbtest.BPFFS(t)
	nodes := map[string]*daemon{}
	for name, priority := range map[string]int{"lb1": 150, "lb2": 100} {
		d := &daemon{t: t, bin: halb, cfg: filepath.Join(dir, name+".yaml"), sock: filepath.Join(dir, name+".sock"), pins: filepath.Join(fs, name)}
		d.text = natPairConfig(d, priority, gateway, addrs)
		if err := os.WriteFile(d.cfg, []byte(d.text), 0o600); err != nil {
			t.Fatal(err)
		}
		d.start(lbs[name])
		nodes[name] = d
	}
	lb1, lb2 := nodes["lb1"], nodes["lb2"]
	lb1.waitState("MASTER")
	lb2.waitState("BACKUP")
	for _, d := range nodes {
		d.waitLive("web", "all three backends live", 3)
	}

	c := &client{ns: clientNS, src: clientIP, vip: vip}
	conns := c.connectMany(t, 51000, nConns)
	spread := map[string]int{}
	for _, cn := range conns {
		spread[cn.backend]++
	}
	t.Logf("%d connections through lb1: %v", nConns, spread)

	// lb1 dies: off both LANs, then its halb killed.
	for _, l := range []struct {
		lan  *lan
		port string
	}{{front, "sw-lb1"}, {back, "sw-lb1b"}} {
		port, err := l.lan.h.LinkByName(l.port)
		if err == nil {
			err = l.lan.h.LinkSetDown(port)
		}
		if err != nil {
			t.Fatalf("unplug lb1's %s: %v", l.port, err)
		}
	}
	lb1.proc.Kill()
	lb2.waitState("MASTER")

	wantRequestsThrough(t, conns, "lb2")
	lb2.stop()
}

// natPairConfig is node d's halb.yaml for TestNATFailoverKeepsFlows:
// the NAT service on both interfaces, and the two VRRP instances, the
// front VIP's and the backends' gateway's, in one sync group.
func natPairConfig(d *daemon, priority int, gateway netip.Addr, backends []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s}\n", d.sock)
	fmt.Fprintf(&b, "datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0, eth1], bpffs: %s}\n", d.pins)
	fmt.Fprintf(&b, "services:\n  - name: web\n    vip: %s\n    port: 80\n    forward: nat\n    backends:\n", vip)
	for _, a := range backends {
		fmt.Fprintf(&b, "      - {address: %s, port: %d, weight: 1}\n", a, natWebPort)
	}
	fmt.Fprintf(&b, "    health_check: {type: tcp, interval: %s, timeout: 300ms, rise: %d, fall: %d}\n", daemonInterval, daemonRise, daemonFall)
	b.WriteString("vrrp:\n  instances:\n")
	fmt.Fprintf(&b, "    - {name: VI_FRONT, interface: eth0, vrid: 51, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/32]}\n", priority, vip)
	fmt.Fprintf(&b, "    - {name: VI_BACK, interface: eth1, vrid: 52, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/24]}\n", priority, gateway)
	b.WriteString("  sync_groups:\n    - {name: NAT, instances: [VI_FRONT, VI_BACK]}\n")
	return b.String()
}
