package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// nConns is how many connections the restart and failover tests keep open
// through the VIP.
const nConns = 200

// TestHitlessRestart keeps 200 TCP connections busy through the VIP while
// halb is killed with SIGKILL and started again, twice: once as it was,
// and once as an upgrade whose halb_ct no longer fits the pinned one.
// Forwarding never stops, no connection fails or changes backend, the
// first restart adopts the pinned programs and maps, and the conntrack
// entries of the connections survive it.
func TestHitlessRestart(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	d := n.daemon(t, halb, "lb")
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1})
	d.start(n.lbs["lb"])
	d.waitLive("web", "all three backends live", 3)

	c := &client{ns: n.client, src: clientIP, vip: vip}
	conns := c.connectMany(t, 50000, nConns)
	progID := n.xdpProgram(t, "lb")
	before := ctKeys(t, d.pins)
	busy := startBusy(conns)

	// SIGKILL: nothing is cleaned up, the program stays attached.
	d.proc.Kill()
	busy.rounds(t, 2)
	if id := n.xdpProgram(t, "lb"); id != progID {
		t.Errorf("XDP program on the balancer's eth0 is %d after SIGKILL, was %d", id, progID)
	}
	d.start(n.lbs["lb"])
	d.waitLog("adopted the pinned data path")
	d.waitLive("web", "all three backends live after the restart", 3)
	busy.rounds(t, 2)
	after := ctKeys(t, d.pins)
	lost := 0
	for k := range before {
		if !after[k] {
			lost++
		}
	}
	t.Logf("restart: halb_ct held %d flows before, %d after; %d lost", len(before), len(after), lost)
	if len(before) < nConns || lost > 0 {
		t.Errorf("halb_ct: %d of %d flows lost across the restart (want at least %d before, none lost)", lost, len(before), nConns)
	}

	// The upgrade: a halb whose halb_ct differs. Here the pin is swapped
	// for a map of another key size while halb is down, as a newer
	// binary would find the older map; the running program keeps its own.
	d.proc.Kill()
	pinIncompatibleCT(t, d.pins)
	busy.rounds(t, 1)
	d.start(n.lbs["lb"])
	d.waitFor("halb logs that it replaces halb_ct", func() bool {
		return regexp.MustCompile(`msg="pinned map does not fit this configuration, replacing it".* map=halb_ct`).MatchString(d.out.String())
	})
	d.waitLive("web", "all three backends live after the upgrade", 3)
	busy.rounds(t, 2)
	// The new program runs on the new map, which the connections' packets
	// filled again, each with the backend Maglev gave it at first.
	if id := n.xdpProgram(t, "lb"); id == progID {
		t.Errorf("the upgrade left the old program %d on eth0", id)
	}
	if got := len(ctKeys(t, d.pins)); got < nConns {
		t.Errorf("the new halb_ct holds %d flows, want the %d connections'", got, nConns)
	}

	res := busy.stop()
	t.Logf("%d connections, %d exchanges through two restarts, %d failed", nConns, res.ok+len(res.failed), len(res.failed))
	if len(res.failed) > 0 {
		t.Errorf("%d exchanges failed, first: %v", len(res.failed), res.failed[0])
	}
	d.stop()
}

// TestFailoverKeepsFlows opens 200 connections through the VIP held by
// lb1, the VRRP Master of a pair, then takes lb1 off the network and kills
// its halb. lb2 takes the VIP and its Maglev tables, the same as lb1's,
// send each connection's packets to the backend it had: at least 99 %
// complete a request through the new Master, with no state shared
// between the nodes.
func TestFailoverKeepsFlows(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb1", "lb2")
	// The client finds the VIP by ARP on the LAN, so a takeover shows
	// in its neighbour table.
	onLink(t, n.client)
	nodes := map[string]*daemon{}
	for _, node := range []struct {
		name     string
		priority int
	}{{"lb1", 150}, {"lb2", 100}} {
		d := n.daemon(t, halb, node.name)
		d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1, vrrpPriority: node.priority})
		d.start(n.lbs[node.name])
		nodes[node.name] = d
	}
	lb1, lb2 := nodes["lb1"], nodes["lb2"]
	lb1.waitState("MASTER")
	lb2.waitState("BACKUP")
	for _, d := range nodes {
		d.waitLive("web", "all three backends live", 3)
	}

	c := &client{ns: n.client, src: clientIP, vip: vip}
	conns := c.connectMany(t, 51000, nConns)
	spread := map[string]int{}
	for _, cn := range conns {
		spread[cn.backend]++
	}
	t.Logf("%d connections through lb1: %v", nConns, spread)

	// lb1 dies: off the network, then its halb killed.
	n.unplug(t, "lb1")
	lb1.proc.Kill()
	lb2.waitState("MASTER")

	wantRequestsThrough(t, conns, "lb2")
	lb2.stop()
}

// wantRequestsThrough has every connection make one request at once,
// TCP retransmitting over a failover's gap, and wants at least 99 % to
// complete through the node via.
func wantRequestsThrough(t *testing.T, conns []*conn, via string) {
	t.Helper()
	_, failed := requestAll(conns, "after failover")
	t.Logf("after the failover %d of %d connections completed a request through %s", len(conns)-len(failed), len(conns), via)
	if len(failed) > len(conns)/100 {
		t.Errorf("%d of %d connections failed after the failover (at most 1%% may): %v", len(failed), len(conns), failed)
	}
}

// daemonNet is the network of the daemon tests: the LAN of TestDR with a
// client, balancers and five backends (be1..be4 and sorry), each backend
// holding the VIP on lo and serving ports 80 and 81.
type daemonNet struct {
	lan     *lan
	client  *netnstest.NS
	lbs     map[string]*netnstest.NS
	servers map[string]*server
	dir     string
	fs      string // a bpf filesystem, for each balancer's pins
}

func newDaemonNet(t *testing.T, balancers ...string) *daemonNet {
	t.Helper()
	n := &daemonNet{lbs: map[string]*netnstest.NS{}, servers: map[string]*server{}, dir: t.TempDir()}
	n.lan = newLAN(t, netnstest.New(t))
	n.client = netnstest.New(t)
	n.lan.plug(n.client, "sw-client", clientIP)
	for i, name := range balancers {
		ns := netnstest.New(t)
		// XDP_TX into a veth needs an XDP program on its peer.
		n.lan.xdpPass(n.lan.plug(ns, "sw-"+name, netip.AddrFrom4([4]byte{192, 0, 2, byte(2 + i)})))
		n.lbs[name] = ns
	}
	for i, name := range []string{"be1", "be2", "be3", "be4", "sorry"} {
		ns := netnstest.New(t)
		n.lan.plug(ns, "sw-"+name, netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)}))
		holdVIP(t, ns)
		n.servers[name] = startServer(t, ns, name, netip.Addr{}, 80)
		startServer(t, ns, name, netip.Addr{}, 81)
	}
	if err := n.client.Do(func() error { return txChecksumOff("eth0") }); err != nil {
		t.Fatal(err)
	}
	// bpffs for the pins, one per balancer below it.
	n.fs = halbtest.BPFFS(t)
	return n
}

// daemon is a halb for balancer name, with its own files and pins.
func (n *daemonNet) daemon(t *testing.T, bin, name string) *daemon {
	return &daemon{t: t, bin: bin, cfg: filepath.Join(n.dir, name+".yaml"), sock: filepath.Join(n.dir, name+".sock"),
		pins: filepath.Join(n.fs, name)}
}

// xdpProgram is the id of the XDP program on balancer name's eth0.
func (n *daemonNet) xdpProgram(t *testing.T, name string) uint32 {
	t.Helper()
	l, err := n.lbs[name].Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	t.Fatalf("no XDP program on %s's eth0", name)
	return 0
}

// unplug takes balancer name off the LAN: its switch port goes down.
func (n *daemonNet) unplug(t *testing.T, name string) {
	t.Helper()
	port, err := n.lan.h.LinkByName("sw-" + name)
	if err == nil {
		err = n.lan.h.LinkSetDown(port)
	}
	if err != nil {
		t.Fatalf("unplug %s: %v", name, err)
	}
}

// onLink routes the VIP from ns straight onto its LAN, where the VRRP
// Master answers ARP for it.
func onLink(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: netlink.NewIPNet(vip.AsSlice())}); err != nil {
		t.Fatalf("route the VIP onto the LAN: %v", err)
	}
}

// connectMany opens n connections from ports first, first+1, ...
func (c *client) connectMany(t testing.TB, first, n int) []*conn {
	t.Helper()
	return c.connectService(t, 80, first, n)
}

// exchange sends a line on an open connection and wants its backend's
// answer within timeout.
func (c *conn) exchange(msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if want := c.backend + ": " + msg + "\n"; err != nil || line != want {
		return fmt.Errorf("answer %q (%v), want %q", line, err, want)
	}
	return nil
}

// busy exchanges a line on every connection, round after round, until
// stopped.
type busy struct {
	mu     sync.Mutex
	round  int
	ok     int
	failed []error
	stopc  chan struct{}
	done   chan struct{}
}

func startBusy(conns []*conn) *busy {
	b := &busy{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		deadline := time.Now().Add(2 * runTimeout)
		for r := 0; time.Now().Before(deadline); r++ {
			select {
			case <-b.stopc:
				return
			default:
			}
			for i, cn := range conns {
				err := cn.exchange(fmt.Sprintf("round %d", r), opTimeout)
				b.mu.Lock()
				if err != nil {
					b.failed = append(b.failed, fmt.Errorf("connection %d (%s), round %d: %w", i, cn.backend, r, err))
				} else {
					b.ok++
				}
				b.mu.Unlock()
			}
			b.mu.Lock()
			b.round++
			b.mu.Unlock()
		}
	}()
	return b
}

// rounds waits for n more rounds over every connection.
func (b *busy) rounds(t testing.TB, n int) {
	t.Helper()
	b.mu.Lock()
	want := b.round + n
	b.mu.Unlock()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		b.mu.Lock()
		r := b.round
		b.mu.Unlock()
		if r >= want {
			return
		}
		if time.Since(start) > runTimeout {
			t.Fatalf("the connections made %d of %d rounds in %s", r, want, runTimeout)
		}
	}
}

type busyResult struct {
	ok     int
	failed []error
}

func (b *busy) stop() busyResult {
	close(b.stopc)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return busyResult{ok: b.ok, failed: b.failed}
}

// ctKeys reads the keys of the pinned halb_ct under pins.
func ctKeys(t *testing.T, pins string) map[string]bool {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pins, "halb_ct"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	keys := map[string]bool{}
	key := make([]byte, m.KeySize())
	value := make([]byte, m.ValueSize())
	it := m.Iterate()
	for i := 0; i < 1<<20 && it.Next(&key, &value); i++ {
		keys[string(bytes.Clone(key))] = true
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read halb_ct: %v", err)
	}
	return keys
}

// pinIncompatibleCT puts an LRU map with another key size where halb_ct is
// pinned, as a halb with another flow key would find it.
func pinIncompatibleCT(t *testing.T, pins string) {
	t.Helper()
	path := filepath.Join(pins, "halb_ct")
	old, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := &ebpf.MapSpec{Name: "halb_ct", Type: ebpf.LRUHash, KeySize: old.KeySize() + 4, ValueSize: old.ValueSize(), MaxEntries: old.MaxEntries()}
	old.Close()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// waitState waits until the daemon's VRRP instance is in state.
func (d *daemon) waitState(state string) {
	d.t.Helper()
	d.waitFor("VRRP "+state, func() bool {
		out, err := runOut(d.bin, "status", "-s", d.sock)
		return err == nil && strings.Contains(out, " "+state+" ")
	})
}

func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}
