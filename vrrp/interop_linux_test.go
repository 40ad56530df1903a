package vrrp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
)

// These tests pair halb with a real keepalived (Debian's, found on PATH) on
// one link: halb exists to stand in for keepalived, so a halb node must be
// able to back up a keepalived node and be backed up by one, each way, with
// the other's adverts, timers and pre-emption rules.

// keepalived is one keepalived process, VRRP only, in a test namespace.
// Its configuration and pid files live in the test's temporary directory,
// so it never meets a system keepalived or its files.
type keepalived struct {
	name string
	ns   *netnstest.NS
	dir  string
	log  *syncBuffer
	cmd  *exec.Cmd
	done chan struct{}
	// child is the VRRP child's pid, read when signalled.
	child int
	// args are more arguments, like -i ID.
	args []string
}

func newKeepalived(t testing.TB, name string, ns *netnstest.NS, config string) *keepalived {
	t.Helper()
	k := &keepalived{name: name, ns: ns, dir: t.TempDir(), log: &syncBuffer{}}
	if err := os.WriteFile(filepath.Join(k.dir, "keepalived.conf"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("config of %s:\n%s\nlog of %s:\n%s", k.name, config, k.name, k.log)
		}
	})
	return k
}

func (k *keepalived) start(t testing.TB) {
	t.Helper()
	// -n: no daemon; -P: VRRP only; -l -D -G: detailed log on the console,
	// none to syslog; -R: a VRRP child that dies stays dead (a crash is a
	// crash, not a respawn the test did not ask for). Every pid file is in
	// k.dir, so the default /run/keepalived.pid of a system keepalived is
	// never read or written.
	args := []string{"-n", "-P", "-l", "-D", "-G", "-R",
		"-f", filepath.Join(k.dir, "keepalived.conf"),
		"-p", filepath.Join(k.dir, "keepalived.pid"),
		"-r", filepath.Join(k.dir, "vrrp.pid"),
		"-c", filepath.Join(k.dir, "checkers.pid"),
		"-b", filepath.Join(k.dir, "bfd.pid")}
	k.cmd = exec.Command("keepalived", append(args, k.args...)...)
	// keepalived refuses to start ("daemon is already running") while a
	// pid file names a live process, and a zombie counts: the VRRP child
	// of a killed keepalived is reparented to PID 1, which on some hosts
	// reaps it seconds later. stop has made sure these processes are dead.
	for _, f := range []string{"keepalived.pid", "vrrp.pid", "checkers.pid", "bfd.pid"} {
		_ = os.Remove(filepath.Join(k.dir, f))
	}
	k.cmd.Stdout, k.cmd.Stderr = k.log, k.log
	// A group of its own: the VRRP child, which sends the adverts, can then
	// be killed with its parent in one stroke.
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	k.done = make(chan struct{})
	if err := k.ns.Start(k.cmd); err != nil {
		t.Fatalf("start keepalived: %v", err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(k.cmd, k.done)
}

// signal sends sig without waiting. SIGKILL goes to the whole process
// group, so that the VRRP child dies as abruptly as its parent and sends
// no priority-0 advert; SIGTERM goes to the parent, which shuts the child
// down as keepalived does in service.
func (k *keepalived) signal(sig syscall.Signal) {
	if k.cmd == nil || k.cmd.Process == nil {
		return
	}
	select {
	case <-k.done:
		return // reaped: its pid, and so its group id, may be another's now
	default:
	}
	k.child = k.vrrpChild()
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
		return
	}
	_ = k.cmd.Process.Signal(sig)
}

// wait waits for a signalled keepalived to end: it takes about a second
// after SIGTERM (its VRRP child resigns and removes the VIPs first).
func (k *keepalived) wait() {
	if k.cmd == nil || k.cmd.Process == nil {
		return
	}
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
		<-k.done
	}
	k.cmd = nil
	// The VRRP child is not ours to wait for; see that it is gone (or a
	// zombie, which sends nothing) before a restart.
	for start := time.Now(); k.child > 0 && alive(k.child) && time.Since(start) < 10*time.Second; {
		time.Sleep(5 * time.Millisecond)
	}
}

func (k *keepalived) stop(sig syscall.Signal) {
	k.signal(sig)
	k.wait()
}

// vrrpChild is the pid of keepalived's VRRP child, from its pid file; 0
// when unknown.
func (k *keepalived) vrrpChild() int {
	b, err := os.ReadFile(filepath.Join(k.dir, "vrrp.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// count counts the log lines that contain s.
func (k *keepalived) count(s string) int { return strings.Count(k.log.String(), s) }

// waitLog waits until the log holds more than n lines with s; the limit
// only bounds a hang.
func (k *keepalived) waitLog(t *testing.T, s string, n int, limit time.Duration) {
	t.Helper()
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		if k.count(s) > n {
			return
		}
	}
	t.Fatalf("%s did not log %q within %v", k.name, s, limit)
}

// interop is one interop case: a variant of the e2e tests, with or without
// VRRPv2 simple-text authentication.
type interop struct {
	variant
	auth string
	// imported: halb runs `halb import` of the keepalived.conf its
	// keepalived peer would run in its place (interop_import_linux_test.go).
	imported bool
	// shared: both nodes read one file with @node0 / @node1 lines
	// (sharedConfig); peerPriority is the keepalived node's there.
	shared       bool
	peerPriority int
}

const interopAuthPass = "halb-pw"

var interops = []interop{
	{variant: variant{name: "v2-ipv4-multicast", version: 2, interval: time.Second}},
	{variant: variant{name: "v2-ipv4-multicast-auth", version: 2, interval: time.Second}, auth: interopAuthPass},
	{variant: variant{name: "v3-ipv4-multicast", version: 3, interval: 200 * time.Millisecond}},
	{variant: variant{name: "v3-ipv4-unicast", version: 3, unicast: true, interval: 200 * time.Millisecond}},
	{variant: variant{name: "v3-ipv6-multicast", version: 3, v6: true, interval: 200 * time.Millisecond}},
	{variant: variant{name: "v3-ipv6-unicast", version: 3, v6: true, unicast: true, interval: 500 * time.Millisecond}},
}

func (c interop) halbConfig(l *lan, i, priority int) string {
	s := c.config(l, i, priority, true)
	if c.auth != "" {
		s += "      auth_pass: " + c.auth + "\n"
	}
	return s
}

// keepalivedConfig is the keepalived.conf of node i: the same virtual
// router as halbConfig, in keepalived's words. state BACKUP lets priority
// decide who is master, as halb does; keepalived pre-empts by default.
func (c interop) keepalivedConfig(l *lan, i, priority int) string {
	vip := "192.0.2.100/24"
	if c.v6 {
		vip = "2001:db8::100/64"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `global_defs {
	router_id halb-interop-%d
	vrrp_garp_master_delay 1
	vrrp_garp_master_repeat 1
}

vrrp_instance VI_T {
	state BACKUP
	interface lan0
	virtual_router_id 51
	version %d
	priority %d
	advert_int %s
`, i, c.version, priority, strconv.FormatFloat(c.interval.Seconds(), 'f', -1, 64))
	if c.auth != "" {
		fmt.Fprintf(&b, "\tauthentication {\n\t\tauth_type PASS\n\t\tauth_pass %s\n\t}\n", c.auth)
	}
	if c.unicast {
		fmt.Fprintf(&b, "\tunicast_src_ip %s\n\tunicast_peer {\n\t\t%s\n\t}\n", l.addr[i], l.addr[1-i])
	}
	fmt.Fprintf(&b, "\tvirtual_ipaddress {\n\t\t%s\n\t}\n}\n", vip)
	return b.String()
}

// peer is either kind of node, as the interop steps need it: signal
// returns at once, so that takeover times do not include how long the
// signalled process takes to exit; wait waits for that.
type peer interface {
	start(t testing.TB)
	signal(sig syscall.Signal)
	wait()
}

// halbPeer is a halb node as a peer.
type halbPeer struct{ *node }

func (h halbPeer) signal(sig syscall.Signal) {
	if h.cmd != nil && h.cmd.Process != nil {
		_ = h.cmd.Process.Signal(sig)
	}
}

func (h halbPeer) wait() {
	if h.proc == nil {
		return
	}
	select {
	case <-h.proc.Done():
	case <-time.After(10 * time.Second):
		h.proc.Kill()
	}
	h.cmd, h.proc = nil, nil
}

// TestKeepalivedInterop runs halb against keepalived, each way round: the
// higher priority holds the VIP, a SIGKILLed master is replaced within the
// master down interval, the returning one pre-empts, and a SIGTERMed master
// hands over within skew time (RFC 5798 §6.4.2, §6.4.3).
func TestKeepalivedInterop(t *testing.T) {
	netnstest.Require(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		netnstest.SkipOrFail(t, "keepalived not installed (apt-get install -y keepalived): %v", err)
	}
	if out, err := exec.Command("keepalived", "--version").CombinedOutput(); err == nil {
		t.Logf("peer: %s", strings.SplitN(string(out), "\n", 2)[0])
	}
	for _, c := range interops {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, halbMaster := range []bool{true, false} {
				name := map[bool]string{true: "halb-master", false: "keepalived-master"}[halbMaster]
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runInterop(t, c, halbMaster)
				})
			}
		})
	}
}

// runInterop puts halb in namespace 0 and keepalived in namespace 1; the
// one named by halbMaster gets priority 150, the other 100.
func runInterop(t *testing.T, c interop, halbMaster bool) {
	l := newLAN(t, c.v6)
	hp, kp := 100, 150
	if halbMaster {
		hp, kp = 150, 100
	}
	h := newNode(t, "halb", l.ns[0], c.halbNodeConfig(t, l, hp))
	k := c.keepalivedPeer(t, l, hp, kp)
	limit := 5*c.masterDown(100) + 5*time.Second
	vip := c.vip()
	// Neither side may throw away any of the other's adverts: a takeover
	// can succeed while every advert of the peer is dropped, so the
	// VIP's moves alone do not prove the two understand each other.
	defer func() {
		if d := linesWith(h.log.String(), "advert dropped"); d != "" {
			t.Errorf("halb dropped keepalived's adverts:\n%s", d)
		}
		if d := linesWith(k.log.String(), keepalivedRejects...); d != "" {
			t.Errorf("keepalived rejected halb's adverts:\n%s", d)
		}
	}()

	// master/backup are the node that should hold the VIP and the one that
	// should not, with their namespaces' netlink handles.
	var (
		master, backup   peer
		mh, bh           *netlink.Handle
		mName, bName     string
		backupPriority   = 100
		masterPriority   = 150
		masterKeepalived = !halbMaster
	)
	if halbMaster {
		master, backup, mh, bh, mName, bName = halbPeer{h}, k, l.h[0], l.h[1], "halb", "keepalived"
	} else {
		master, backup, mh, bh, mName, bName = k, halbPeer{h}, l.h[1], l.h[0], "keepalived", "halb"
	}

	// The master comes up alone, then the backup joins and must stay
	// backup.
	master.start(t)
	waitAddr(t, mh, vip, true, limit)
	backup.start(t)
	if masterKeepalived {
		k.waitLog(t, "Entering MASTER STATE", 0, limit)
		waitHalb(t, h, "to=BACKUP", limit)
	} else {
		k.waitLog(t, "Entering BACKUP STATE", 0, limit)
	}
	// Long enough for a backup that did not hear or did not accept the
	// master to take the VIP.
	time.Sleep(c.masterDown(backupPriority) + c.interval)
	if hasAddr(bh, vip) || !hasAddr(mh, vip) {
		t.Fatalf("%s (backup) holds the VIP = %v, %s (master) = %v; want false, true",
			bName, hasAddr(bh, vip), mName, hasAddr(mh, vip))
	}
	if n := k.count("Entering MASTER STATE"); !masterKeepalived && n > 0 {
		t.Fatalf("keepalived became MASTER %d times while halb was master", n)
	}

	// SIGKILL: no priority-0 advert, so the backup waits out the master
	// down interval. A killed node cannot remove its VIP either.
	kaMasters := k.count("Entering MASTER STATE")
	start := time.Now()
	master.signal(syscall.SIGKILL)
	waitAddr(t, bh, vip, true, limit)
	took := time.Since(start)
	master.wait()
	if !masterKeepalived {
		k.waitLog(t, "Entering MASTER STATE", kaMasters, limit)
	}
	t.Logf("SIGKILL of %s (master): %s holds the VIP after %v (RFC bound 3×interval+skew = %v)",
		mName, bName, took.Round(time.Millisecond), c.masterDown(backupPriority))

	// The returning master pre-empts the backup, which gives the VIP up.
	kaBackups := k.count("Entering BACKUP STATE")
	start = time.Now()
	master.start(t)
	waitAddr(t, bh, vip, false, limit)
	took = time.Since(start)
	waitAddr(t, mh, vip, true, limit)
	if !masterKeepalived {
		k.waitLog(t, "Entering BACKUP STATE", kaBackups, limit)
	}
	t.Logf("restarted %s pre-empted %s after %v (its master down interval = %v)",
		mName, bName, took.Round(time.Millisecond), c.masterDown(masterPriority))

	// SIGTERM: the master resigns with a priority-0 advert and the backup
	// takes over after its skew time only.
	kaMasters = k.count("Entering MASTER STATE")
	start = time.Now()
	master.signal(syscall.SIGTERM)
	waitAddr(t, bh, vip, true, limit)
	took = time.Since(start)
	master.wait()
	if hasAddr(mh, vip) {
		t.Errorf("%s still holds the VIP after SIGTERM", mName)
	}
	if !masterKeepalived {
		k.waitLog(t, "Entering MASTER STATE", kaMasters, limit)
	}
	t.Logf("SIGTERM of %s (master): %s holds the VIP after %v (skew time %v; RFC bound 3×interval+skew = %v)",
		mName, bName, took.Round(time.Millisecond), c.masterDown(backupPriority)-3*c.interval, c.masterDown(backupPriority))
}

// keepalivedRejects are the log messages of keepalived 2.2's receive checks
// (vrrp_check_packet), each a reason it dropped an advert.
var keepalivedRejects = []string{
	"vrrp packet too ", "invalid TTL/HL", "wrong version", " auth, expecting ", "invalid passwd",
	"advertisement interval mismatch", "Invalid packet type", "unexpected ip number count",
	"ip_tot_len mismatch", "checksum to old version", "icast packet but received",
	"VIPs but received", "not present in MASTER advert", "not a unicast peer", " not in range ",
}

// linesWith returns the lines of log that contain any of subs.
func linesWith(log string, subs ...string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		for _, s := range subs {
			if strings.Contains(line, s) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// waitHalb waits until halb's log holds s.
func waitHalb(t *testing.T, n *node, s string, limit time.Duration) {
	t.Helper()
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		if strings.Contains(n.log.String(), s) {
			return
		}
	}
	t.Fatalf("%s did not log %q within %v", n.name, s, limit)
}
