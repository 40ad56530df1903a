package vrrp

import (
	"fmt"
	"github.com/halb-lb/halb/internal/halbtest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
)

// These tests run the real halb binary, one process per node, each in a
// network namespace of its own, joined by a veth pair: what a pair of
// load balancers on one LAN looks like.

var halbBin string

// TestMain builds the halb binary for the tests that run it, which all
// need root: as any other user it builds nothing, so that the tests of
// the instance's logic run without root and without root's build cache.
func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "halb-vrrp-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if halbBin, err = halbtest.BuildIn(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lan is two namespaces joined by a veth pair, "lan0" on each side.
type lan struct {
	ns   [2]*netnstest.NS
	h    [2]*netlink.Handle
	addr [2]netip.Addr
}

func newLAN(t *testing.T, v6 bool) *lan {
	t.Helper()
	l := newHosts(t, v6)
	l.connect(t)
	for i := range l.ns {
		l.addAddr(t, i)
	}
	return l
}

// newHosts makes the two namespaces without the link between them.
func newHosts(t *testing.T, v6 bool) *lan {
	t.Helper()
	l := &lan{}
	for i := range l.ns {
		l.ns[i] = netnstest.New(t)
		l.h[i] = l.ns[i].Netlink(t)
		// Link-local addresses must be usable at once: DAD would hold
		// them tentative for a second, and VRRPv3 over IPv6 sends from one.
		if err := l.ns[i].Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644)
		}); err != nil {
			t.Fatal(err)
		}
		l.addr[i] = netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i+1))
		if v6 {
			l.addr[i] = netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", i+1))
		}
	}
	return l
}

// connect joins the namespaces with a veth pair named lan0 on both sides,
// both ends up.
func (l *lan) connect(t *testing.T) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0",
		PeerNamespace: netlink.NsFd(l.ns[1].Handle())}
	if err := l.h[0].LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	peer, err := l.h[1].LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.h[1].LinkSetName(peer, "lan0"); err != nil {
		t.Fatal(err)
	}
	for i := range l.ns {
		l.setUp(t, i, true)
	}
}

func (l *lan) link(t *testing.T, i int) netlink.Link {
	t.Helper()
	link, err := l.h[i].LinkByName("lan0")
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func (l *lan) setUp(t *testing.T, i int, up bool) {
	t.Helper()
	set := l.h[i].LinkSetUp
	if !up {
		set = l.h[i].LinkSetDown
	}
	if err := set(l.link(t, i)); err != nil {
		t.Fatal(err)
	}
}

// addAddr puts node i's own address on its lan0.
func (l *lan) addAddr(t *testing.T, i int) {
	t.Helper()
	if err := l.h[i].AddrAdd(l.link(t, i), l.prefix(i)); err != nil {
		t.Fatal(err)
	}
}

func (l *lan) delAddr(t *testing.T, i int) {
	t.Helper()
	if err := l.h[i].AddrDel(l.link(t, i), l.prefix(i)); err != nil {
		t.Fatal(err)
	}
}

func (l *lan) prefix(i int) *netlink.Addr {
	bits := 24
	if l.addr[i].Is6() {
		bits = 64
	}
	return toAddr(netip.PrefixFrom(l.addr[i], bits))
}

// syncBuffer collects a process's log for the test's failure output.
type syncBuffer = halbtest.Log

// node is one halb process.
type node struct {
	name string
	ns   *netnstest.NS
	cfg  string
	cmd  *exec.Cmd
	proc *halbtest.Proc
	log  *syncBuffer
}

func newNode(t testing.TB, name string, ns *netnstest.NS, config string) *node {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name+".yaml")
	if !strings.Contains(config, "control:") {
		// One halb per control socket: each node has its own.
		config = "control: {socket: " + filepath.Join(dir, name+".sock") + "}\n" + config
	}
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, ns: ns, cfg: path, log: &syncBuffer{}}
	t.Cleanup(func() {
		n.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("log of %s:\n%s", n.name, n.log)
		}
	})
	return n
}

func (n *node) start(t testing.TB) {
	t.Helper()
	n.cmd = exec.Command(halbBin, "run", "-c", n.cfg)
	n.proc = halbtest.Start(t, n.ns, n.cmd, halbtest.Options{Log: n.log})
}

func (n *node) stop(sig syscall.Signal) {
	if n.proc == nil {
		return
	}
	_ = n.proc.Stop(sig, 10*time.Second)
	n.cmd, n.proc = nil, nil
}

// hasAddr reports whether a is on lan0 in the namespace behind h.
func hasAddr(h *netlink.Handle, a netip.Addr) bool {
	link, err := h.LinkByName("lan0")
	if err != nil {
		return false
	}
	list, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	for _, x := range list {
		if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
			return true
		}
	}
	return false
}

// waitAddr waits until a's presence on lan0 is want and returns how long
// that took. The limit only bounds a hang; the figures are printed, not
// asserted.
func waitAddr(t testing.TB, h *netlink.Handle, a netip.Addr, want bool, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if hasAddr(h, a) == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s present = %v after %v, want %v", a, !want, limit, want)
	return 0
}

type variant struct {
	name     string
	version  int
	v6       bool
	unicast  bool
	interval time.Duration
}

func (v variant) config(l *lan, i, priority int, preempt bool) string {
	vip := "192.0.2.100/24"
	if v.v6 {
		vip = "2001:db8::100/64"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `log: {level: debug}
vrrp:
  instances:
    - name: VI_T
      interface: lan0
      vrid: 51
      version: %d
      priority: %d
      advert_interval: %s
      preempt: %v
      garp_master_delay: 1s
      garp_master_repeat: 1
      virtual_ips: [%s]
`, v.version, priority, v.interval, preempt, vip)
	if v.unicast {
		fmt.Fprintf(&b, "      unicast_src: %s\n      unicast_peers: [%s]\n", l.addr[i], l.addr[1-i])
	}
	return b.String()
}

func (v variant) vip() netip.Addr {
	if v.v6 {
		return netip.MustParseAddr("2001:db8::100")
	}
	return netip.MustParseAddr("192.0.2.100")
}

// masterDown is RFC 5798's bound for a backup of priority p to take over.
func (v variant) masterDown(p int) time.Duration {
	skew := time.Duration(256-p) * v.interval / 256
	if v.version == 2 {
		skew = time.Duration(256-p) * time.Second / 256
	}
	return 3*v.interval + skew
}

var variants = []variant{
	{"v2-ipv4-multicast", 2, false, false, time.Second},
	{"v3-ipv4-multicast", 3, false, false, 100 * time.Millisecond},
	{"v3-ipv4-unicast", 3, false, true, 200 * time.Millisecond},
	{"v3-ipv6-multicast", 3, true, false, 200 * time.Millisecond},
	{"v3-ipv6-unicast", 3, true, true, 200 * time.Millisecond},
}

// The higher priority holds the VIP; SIGKILL moves it to the backup within
// the master down interval; the returning node pre-empts; SIGTERM hands
// over within skew time.
func TestFailover(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			l := newLAN(t, v.v6)
			a := newNode(t, "a", l.ns[0], v.config(l, 0, 150, true))
			b := newNode(t, "b", l.ns[1], v.config(l, 1, 100, true))
			limit := 5*v.masterDown(100) + 5*time.Second

			b.start(t)
			waitAddr(t, l.h[1], v.vip(), true, limit) // alone, b becomes master
			a.start(t)
			took := waitAddr(t, l.h[0], v.vip(), true, limit)
			waitAddr(t, l.h[1], v.vip(), false, limit)
			t.Logf("a (150) pre-empted b (100) after %v", took.Round(time.Millisecond))

			a.stop(syscall.SIGKILL)
			took = waitAddr(t, l.h[1], v.vip(), true, limit)
			t.Logf("SIGKILL of master: backup holds the VIP after %v (RFC bound 3×interval+skew = %v)",
				took.Round(time.Millisecond), v.masterDown(100))

			// A killed halb cannot take its VIP down; the restarted one
			// removes it at once and takes it back only by pre-emption.
			a.start(t)
			took = waitAddr(t, l.h[1], v.vip(), false, limit)
			waitAddr(t, l.h[0], v.vip(), true, limit)
			t.Logf("returning a pre-empted after %v", took.Round(time.Millisecond))

			a.stop(syscall.SIGTERM)
			took = waitAddr(t, l.h[1], v.vip(), true, limit)
			if hasAddr(l.h[0], v.vip()) {
				t.Error("a still holds the VIP after SIGTERM")
			}
			t.Logf("SIGTERM of master: backup holds the VIP after %v (skew time %v)",
				took.Round(time.Millisecond), v.masterDown(100)-3*v.interval)
		})
	}
}

// With preempt: false the returning higher-priority node stays Backup.
func TestNoPreempt(t *testing.T) {
	v := variants[1]
	l := newLAN(t, false)
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 150, false))
	b := newNode(t, "b", l.ns[1], v.config(l, 1, 100, false))
	limit := 5*v.masterDown(100) + 5*time.Second
	b.start(t)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	a.start(t)
	// a runs once it is Backup (a halb starting on a loaded machine
	// takes longer than the window below); then it has several master
	// down intervals to (wrongly) take over.
	waitLog(t, a, "to=BACKUP")
	time.Sleep(3 * v.masterDown(150))
	if hasAddr(l.h[0], v.vip()) || !hasAddr(l.h[1], v.vip()) {
		t.Fatal("with preempt: false the higher-priority node took the VIP")
	}
	if strings.Contains(a.log.String(), "to=MASTER") {
		t.Errorf("a did not stay BACKUP:\n%s", a.log)
	}
}
