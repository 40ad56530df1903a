package e2e

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"go.yaml.in/yaml/v3"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// natGateway is the backends' side VIP of the NAT pairs: their default
// gateway with forward: nat, the balancer's source with forward: fullnat.
var natGateway = netip.MustParseAddr("203.0.113.1")

// TestNATFailoverKeepsFlows is TestFailoverKeepsFlows for forward: nat,
// set up as keepalived's LVS-NAT pairs are, with the README's NAT pair
// (its block run as both nodes' file): two halb nodes, each with eth0 on
// the clients' LAN and eth1 on the backends' LAN; a VRRP instance holds
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
	p := newNATPair(t, natPairOptions{forward: "nat", readme: true})
	conns := p.connect(t)
	p.failover(t)
	wantRequestsThrough(t, conns, "lb2")
	p.lb2.stop()
}

// TestFullNATFailover is what of a forward: fullnat flow survives a
// failover, on TestNATFailoverKeepsFlows' pair with backends that have
// no route but their link's. A flow's source port toward its backend is
// derived from the flow (its hash names a port of the pool, the next
// free of 8 on a collision), never drawn, so:
//
//   - with a shared snat_address (203.0.113.1, held by the backends'
//     side VRRP instance in the front VIP's sync group: the README's full
//     NAT pair, its block run as both nodes' file), lb2 gives each
//     flow the address and port lb1 gave it, and the backend's
//     connection goes on: a connection completes a request through lb2
//     exactly when lb2's halb_fnat gives it lb1's port (one that had to
//     probe past a collision may get another), and at least 99 % do;
//   - with no snat_address, each node's own address on the backends'
//     LAN is the source: every flow reaches its backend from an address
//     it has no connection with, and every connection is lost.
func TestFullNATFailover(t *testing.T) {
	netnstest.Require(t)
	t.Run("shared snat_address", func(t *testing.T) {
		p := newNATPair(t, natPairOptions{forward: "fullnat", readme: true})
		conns := p.connect(t)
		before := fnatSources(t, p.lb1)
		p.failover(t)
		errs := exchangeAll(conns, "after failover")
		after := fnatSources(t, p.lb2)
		var lost []string
		for i, cn := range conns {
			port := cn.LocalAddr().(*net.TCPAddr).Port
			src1, src2 := before[port], after[port]
			if !src1.IsValid() || src1.Addr() != natGateway {
				t.Fatalf("connection from port %d: lb1's halb_fnat gave it %s, want a port of %s", port, src1, natGateway)
			}
			if same := src1 == src2; same != (errs[i] == nil) {
				t.Errorf("connection from port %d to %s: lb1 gave it %s, lb2 %s, and its request after the failover: %v",
					port, cn.backend, src1, src2, errs[i])
			}
			if errs[i] != nil {
				lost = append(lost, fmt.Sprintf("%d (%s, %s then %s): %v", port, cn.backend, src1, src2, errs[i]))
			}
		}
		t.Logf("after the failover %d of %d connections completed a request through lb2, each on lb1's source port", len(conns)-len(lost), len(conns))
		if len(lost) > len(conns)/100 {
			t.Errorf("%d of %d connections lost (at most 1%% may be): %v", len(lost), len(conns), lost)
		}
		p.lb2.stop()
	})
	t.Run("own addresses", func(t *testing.T) {
		p := newNATPair(t, natPairOptions{forward: "fullnat"})
		conns := p.connect(t)
		p.failover(t)
		errs := exchangeAll(conns, "after failover")
		after := fnatSources(t, p.lb2)
		lb2Addr := netip.MustParseAddr("203.0.113.3")
		lost := 0
		for i, cn := range conns {
			port := cn.LocalAddr().(*net.TCPAddr).Port
			if src := after[port]; src.Addr() != lb2Addr {
				t.Errorf("connection from port %d: lb2's halb_fnat gave it %s, want a port of lb2's own %s", port, src, lb2Addr)
			}
			if errs[i] == nil {
				t.Errorf("connection from port %d to %s completed a request after the failover: its backend knew it from lb1's address", port, cn.backend)
			} else {
				lost++
			}
		}
		t.Logf("after the failover %d of %d connections lost, as they must be; the first: %v", lost, len(conns), errs[0])
		p.lb2.stop()
	})
}

// natPair is the two balancers of the NAT failover tests, their
// backends serving, the client on the front LAN.
type natPair struct {
	front, back *lan
	client      *client
	lbs         map[string]*netnstest.NS
	lb1, lb2    *daemon
}

// natPairOptions say which pair newNATPair builds.
type natPairOptions struct {
	forward string // nat or fullnat
	// readme: both nodes run the README's pair of that forward (the
	// block below readmePairMarkers[forward], readmePair), its VIP,
	// backends and snat_address; else natPairConfig with vip, the
	// three backends and no snat_address.
	readme bool
}

// newNATPair builds the pair and starts both halbs: lb1 MASTER, lb2
// BACKUP, both with every backend of their file live (the three, or the
// README's). With nat the backends' default
// gateway is natGateway; with fullnat they have no route but their
// link's.
func newNATPair(t *testing.T, o natPairOptions) *natPair {
	t.Helper()
	forward := o.forward
	halb := halbtest.Build(t)
	p := &natPair{lbs: map[string]*netnstest.NS{}}
	p.front = newLAN(t, netnstest.New(t))
	p.back = newLAN(t, netnstest.New(t))
	clientNS := netnstest.New(t)
	p.front.plug(clientNS, "sw-client", clientIP)
	onLink(t, clientNS)
	for i, name := range []string{"lb1", "lb2"} {
		ns := netnstest.New(t)
		// XDP_TX and redirects into a veth need an XDP program on its
		// peer.
		p.front.xdpPass(p.front.plug(ns, "sw-"+name, netip.AddrFrom4([4]byte{192, 0, 2, byte(2 + i)})))
		p.back.xdpPass(p.back.plugAs(ns, "sw-"+name+"b", "eth1", netip.AddrFrom4([4]byte{203, 0, 113, byte(2 + i)})))
		err := ns.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
		p.lbs[name] = ns
	}
	var addrs []string
	for _, be := range natBackends {
		ns := netnstest.New(t)
		p.back.plug(ns, "sw-"+be.name, be.addr)
		if forward == "nat" {
			routeVia(t, ns, "eth0", natGateway, netip.Addr{})
		} else if rs, err := ns.Netlink(t).RouteGet(clientIP.AsSlice()); err == nil {
			t.Fatalf("%s routes to the client %s: %v", be.name, clientIP, rs)
		}
		startServer(t, ns, be.name, be.addr, natWebPort)
		if err := ns.Do(func() error { return txChecksumOff("eth0") }); err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, be.addr.String())
	}
	if err := clientNS.Do(func() error { return txChecksumOff("eth0") }); err != nil {
		t.Fatal(err)
	}
	p.client = &client{ns: clientNS, src: clientIP, vip: vip}
	var readme map[string]any
	live := len(addrs)
	if o.readme {
		readme = readmePair(t, forward, addrs)
		svc := readme["services"].([]any)[0].(map[string]any)
		p.client.vip = netip.MustParseAddr(svc["vip"].(string)) // on the front LAN
		live = len(svc["backends"].([]any))
	}

	dir, fs := t.TempDir(), halbtest.BPFFS(t)
	nodes := map[string]*daemon{}
	for name, priority := range map[string]int{"lb1": 150, "lb2": 100} {
		d := &daemon{t: t, bin: halb, cfg: filepath.Join(dir, name+".yaml"), sock: filepath.Join(dir, name+".sock"), pins: filepath.Join(fs, name)}
		d.text = natPairConfig(d, priority, forward, addrs)
		if readme != nil {
			d.text = readmeNodeConfig(t, d, priority, readme)
		}
		if err := os.WriteFile(d.cfg, []byte(d.text), 0o600); err != nil {
			t.Fatal(err)
		}
		d.start(p.lbs[name])
		nodes[name] = d
	}
	p.lb1, p.lb2 = nodes["lb1"], nodes["lb2"]
	p.lb1.waitState("MASTER")
	p.lb2.waitState("BACKUP")
	for _, d := range nodes {
		d.waitLive("web", "every backend live", live)
	}
	return p
}

// connect opens nConns connections through lb1.
func (p *natPair) connect(t *testing.T) []*conn {
	t.Helper()
	conns := p.client.connectMany(t, 51000, nConns)
	spread := map[string]int{}
	for _, cn := range conns {
		spread[cn.backend]++
	}
	t.Logf("%d connections through lb1: %v", nConns, spread)
	return conns
}

// failover takes lb1 off both LANs, kills its halb, and waits for lb2 to
// become MASTER.
func (p *natPair) failover(t *testing.T) {
	t.Helper()
	for _, l := range []struct {
		lan  *lan
		port string
	}{{p.front, "sw-lb1"}, {p.back, "sw-lb1b"}} {
		port, err := l.lan.h.LinkByName(l.port)
		if err == nil {
			err = l.lan.h.LinkSetDown(port)
		}
		if err != nil {
			t.Fatalf("unplug lb1's %s: %v", l.port, err)
		}
	}
	p.lb1.proc.Kill()
	p.lb2.waitState("MASTER")
}

// natPairConfig is node d's halb.yaml for the NAT pairs: the service on
// both interfaces, forward nat or fullnat (no snat_address), and the
// front VIP's VRRP instance; with nat, a second instance holding
// natGateway on eth1, in one sync group with the first.
func natPairConfig(d *daemon, priority int, forward string, backends []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s}\n", d.sock)
	fmt.Fprintf(&b, "datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0, eth1], bpffs: %s}\n", d.pins)
	fmt.Fprintf(&b, "services:\n  - name: web\n    vip: %s\n    port: 80\n    forward: %s\n", vip, forward)
	b.WriteString("    backends:\n")
	for _, a := range backends {
		fmt.Fprintf(&b, "      - {address: %s, port: %d, weight: 1}\n", a, natWebPort)
	}
	fmt.Fprintf(&b, "    health_check: {type: tcp, interval: %s, timeout: 300ms, rise: %d, fall: %d}\n", daemonInterval, daemonRise, daemonFall)
	b.WriteString("vrrp:\n  instances:\n")
	fmt.Fprintf(&b, "    - {name: VI_FRONT, interface: eth0, vrid: 51, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/32]}\n", priority, vip)
	if forward == "nat" {
		fmt.Fprintf(&b, "    - {name: VI_BACK, interface: eth1, vrid: 52, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/24]}\n", priority, natGateway)
		b.WriteString("  sync_groups:\n    - {name: NAT, instances: [VI_FRONT, VI_BACK]}\n")
	}
	return b.String()
}

// readmePairMarkers are the lines above the README's NAT and full NAT
// pairs, by forward.
var readmePairMarkers = map[string]string{
	"nat":     "<!-- nat pair: test/e2e/nat_failover_linux_test.go runs this block on both nodes -->",
	"fullnat": "<!-- fullnat pair: test/e2e/nat_failover_linux_test.go runs this block on both nodes -->",
}

// readmePair is the README's pair of forward, parsed. Its one service must
// be of that forward, its backends among this network's, the backends'
// side VIP natGateway, and with fullnat its snat_address natGateway too.
func readmePair(t *testing.T, forward string, backends []string) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(readmeBlock(t, readmePairMarkers[forward], "```yaml")), &doc); err != nil {
		t.Fatalf("the README's %s pair: %v", forward, err)
	}
	svc := doc["services"].([]any)[0].(map[string]any)
	var got []string
	for _, b := range svc["backends"].([]any) {
		got = append(got, b.(map[string]any)["address"].(string))
	}
	back := fmt.Sprint(doc["vrrp"].(map[string]any)["instances"].([]any)[1].(map[string]any)["virtual_ips"])
	wantSNAT := map[string]any{"nat": nil, "fullnat": natGateway.String()}[forward]
	if !slices.ContainsFunc(got, func(a string) bool { return !slices.Contains(backends, a) }) &&
		svc["forward"] == forward && svc["snat_address"] == wantSNAT && back == "["+natGateway.String()+"/24]" {
		return doc
	}
	t.Fatalf("the README's %s pair has backends %v, forward %v, snat_address %v, backends' side VIPs %s; the test's network has %v and %s",
		forward, got, svc["forward"], svc["snat_address"], back, backends, natGateway)
	return nil
}

// readmeNodeConfig is the README's pair as node d's file: as written, but
// for what the test's nodes need (their socket and pins, native XDP on
// the veths, the priority, VRRPv3 adverts every 100 ms and the health
// checks' pace, so that the test takes seconds).
func readmeNodeConfig(t *testing.T, d *daemon, priority int, readme map[string]any) string {
	t.Helper()
	doc := map[string]any{}
	maps.Copy(doc, readme)
	doc["control"] = map[string]any{"socket": d.sock}
	dp := maps.Clone(readme["datapath"].(map[string]any))
	dp["mode"], dp["xdp_mode"], dp["bpffs"] = "xdp", "native", d.pins
	doc["datapath"] = dp
	v := maps.Clone(readme["vrrp"].(map[string]any))
	var instances []any
	for _, in := range v["instances"].([]any) {
		in := maps.Clone(in.(map[string]any))
		in["priority"], in["version"], in["advert_interval"] = priority, 3, "100ms"
		instances = append(instances, in)
	}
	v["instances"] = instances
	doc["vrrp"] = v
	var services []any
	for _, s := range readme["services"].([]any) {
		s := maps.Clone(s.(map[string]any))
		s["health_check"] = map[string]any{"type": "tcp", "interval": daemonInterval.String(), "timeout": "300ms", "rise": daemonRise, "fall": daemonFall}
		services = append(services, s)
	}
	doc["services"] = services
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// fnatSources reads node d's pinned halb_fnat: the source address and
// port it gave each full NAT flow toward its backend, by the client's
// port. The offsets are bpf/halb.h's struct fnat_key and fnat_flow
// (snat at 16, snat_port at 34; client_port at 28).
func fnatSources(t *testing.T, d *daemon) map[int]netip.AddrPort {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(d.pins, "halb_fnat"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	out := map[int]netip.AddrPort{}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		snat := netip.AddrFrom16([16]byte(k[16:32])).Unmap()
		out[int(binary.NativeEndian.Uint16(v[28:30]))] = netip.AddrPortFrom(snat, binary.NativeEndian.Uint16(k[34:36]))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
