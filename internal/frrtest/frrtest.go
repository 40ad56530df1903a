// Package frrtest runs FRR (zebra and bgpd from Debian's frr package) as a
// real BGP router for tests: in a network namespace the test made, with
// its own configuration, pid files and vty sockets in a directory of the
// test's, and asked what it learnt with vtysh's JSON output.
//
// It must never touch an FRR the host runs: it starts its daemons with
// their own paths, signals only the PIDs it started, and leaves nothing
// behind when the test ends. A test that cannot run FRR (no root, frr not
// installed) is skipped, and fails when CI=true.
package frrtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// The daemons of Debian's frr package.
const (
	BGPd  = "/usr/lib/frr/bgpd"
	Zebra = "/usr/lib/frr/zebra"
	BFDd  = "/usr/lib/frr/bfdd"
	VTYsh = "vtysh"
)

// Option changes what Start starts.
type Option func(*options)

type options struct {
	bfd     bool
	bfdConf string
}

// WithBFD starts bfdd too, with the configuration bfddConf ("" for
// none), so that bgpd's "neighbor X bfd" runs BFD sessions (on UDP 3784
// in the router's namespace). `show bfd peers` (VTY.BFDPeers) shows them.
func WithBFD(bfddConf string) Option {
	return func(o *options) { o.bfd, o.bfdConf = true, bfddConf }
}

// Require skips t, or fails it when CI=true, unless it runs as root and
// FRR is installed.
func Require(t testing.TB) {
	t.Helper()
	netnstest.Require(t)
	for _, p := range []string{BGPd, Zebra} {
		if _, err := os.Stat(p); err != nil {
			netnstest.SkipOrFail(t, "FRR is not installed (apt-get install frr): %v", err)
		}
	}
	if _, err := exec.LookPath(VTYsh); err != nil {
		netnstest.SkipOrFail(t, "FRR's vtysh is not installed (apt-get install frr): %v", err)
	}
}

// VTY asks the daemons whose vty sockets are in Dir; it is all a process
// needs to query a Router another process started.
type VTY struct {
	Dir string
}

// Router is zebra and bgpd running in one network namespace. zebra is
// what puts the routes bgpd selects into the namespace's kernel (and lets
// bgpd see its connected networks, so that next hops resolve).
type Router struct {
	VTY
	NS    *netnstest.NS
	procs []*proc
}

// proc is one daemon Start started.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan error // Wait's result
}

// readyTimeout bounds the wait for a daemon's vty socket to answer.
const readyTimeout = 20 * time.Second

// Start starts zebra and bgpd in ns, bgpd with the configuration
// bgpdConf (frr.conf syntax: "router bgp 65000 ..."), and waits until
// both answer on their vty sockets. They are stopped when t ends.
func Start(t testing.TB, ns *netnstest.NS, bgpdConf string, opts ...Option) *Router {
	t.Helper()
	Require(t)
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := t.TempDir()
	r := &Router{VTY: VTY{Dir: dir}, NS: ns}
	t.Cleanup(func() { r.Stop(t) })
	r.prepareDir(t)
	write(t, filepath.Join(dir, "zebra.conf"), "")
	write(t, filepath.Join(dir, "bgpd.conf"), bgpdConf)
	zserv := filepath.Join(dir, "zserv.api")
	// zebra insists that its user is in the vty group (frrvty): frr is,
	// root is not. bgpd skips the check (-S) and runs as root.
	r.start(t, "zebra", Zebra, "-u", "frr", "-g", "frr", "-z", zserv)
	if o.bfd {
		write(t, filepath.Join(dir, "bfdd.conf"), o.bfdConf)
		r.start(t, "bfdd", BFDd, "-u", "frr", "-g", "frr", "-z", zserv, "--bfdctl", filepath.Join(dir, "bfdd.sock"))
	}
	r.start(t, "bgpd", BGPd, "-S", "-z", zserv)
	return r
}

// prepareDir makes the directory the frr user can write, and the
// directories above it, which the test framework made root's alone, ones
// it can pass through.
func (r *Router) prepareDir(t testing.TB) {
	t.Helper()
	u, err := user.Lookup("frr")
	if err != nil {
		netnstest.SkipOrFail(t, "FRR's user frr is missing (apt-get install frr): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(r.Dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	for d := r.Dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// start starts one daemon in the namespace and waits until its vty
// socket answers.
func (r *Router) start(t testing.TB, name, bin string, args ...string) {
	t.Helper()
	args = append([]string{
		"-f", filepath.Join(r.Dir, name+".conf"),
		"-i", filepath.Join(r.Dir, name+".pid"),
		"--vty_socket", r.Dir,
		"--log", "file:" + filepath.Join(r.Dir, name+".log"),
	}, args...)
	cmd := exec.Command(bin, args...)
	out, err := os.Create(filepath.Join(r.Dir, name+".out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := r.NS.Start(cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan error, 1)}
	r.procs = append(r.procs, p)
	go func() { p.exited <- cmd.Wait() }()
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := r.Run("-d", name, "-c", "show version"); err == nil {
			return
		}
		select {
		case err := <-p.exited:
			p.exited <- err // for Stop
			t.Fatalf("%s exited at start (%v):\n%s", name, err, r.Logs(name))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer on its vty socket in %s:\n%s", name, readyTimeout, r.Logs(name))
		}
	}
}

// Stop stops the daemons Start started, bgpd first, by their PIDs:
// SIGTERM, then SIGKILL after stopTimeout. Stopping twice is harmless.
func (r *Router) Stop(t testing.TB) {
	for i := len(r.procs) - 1; i >= 0; i-- {
		p := r.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.exited
			t.Logf("frrtest: %s did not stop on SIGTERM in %s: killed", p.name, stopTimeout)
		}
	}
	r.procs = nil
}

const stopTimeout = 5 * time.Second

// Logs is the named daemon's log and output, for a failing test.
func (r *Router) Logs(name string) string {
	var b strings.Builder
	for _, f := range []string{name + ".log", name + ".out"} {
		data, _ := os.ReadFile(filepath.Join(r.Dir, f))
		fmt.Fprintf(&b, "--- %s\n%s", f, data)
	}
	return b.String()
}

// Run runs vtysh against the daemons with args ("-c", "show ...").
func (v VTY) Run(args ...string) ([]byte, error) {
	cmd := exec.Command(VTYsh, append([]string{"--vty_socket", v.Dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("vtysh %s: %w: %s%s", strings.Join(args, " "), err, stderr.Bytes(), out)
	}
	return out, nil
}

// Show runs one show command and decodes its JSON output into v ("json"
// is added to cmd).
func (v VTY) Show(cmd string, out any) error {
	daemon := "bgpd"
	if strings.HasPrefix(cmd, "show bfd") {
		daemon = "bfdd"
	}
	data, err := v.Run("-d", daemon, "-c", cmd+" json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: %w: %.500s", cmd, err, data)
	}
	return nil
}

// Configure applies configuration lines to bgpd as if typed after
// "configure terminal" ("router bgp 65000", "neighbor X remote-as 65001").
func (v VTY) Configure(lines ...string) error {
	args := []string{"-d", "bgpd", "-c", "configure terminal"}
	for _, l := range lines {
		args = append(args, "-c", l)
	}
	out, err := v.Run(args...)
	if err == nil && len(bytes.TrimSpace(out)) > 0 {
		return fmt.Errorf("configure: %s", out) // vtysh prints what it refused
	}
	return err
}

// Neighbor is one session as bgpd shows it.
type Neighbor struct {
	RemoteAs int    `json:"remoteAs"`
	State    string `json:"bgpState"` // "Established", "Active", ...
	// UpEstablishedEpoch is when the session was established, in Unix
	// seconds (bgpd works it out from the uptime: it may move by one).
	UpEstablishedEpoch int64 `json:"bgpTimerUpEstablishedEpoch"`
	// Established and Dropped count the sessions made and lost since
	// the neighbor was configured: a reset shows in both.
	Established int    `json:"connectionsEstablished"`
	Dropped     int    `json:"connectionsDropped"`
	LastReset   string `json:"lastResetDueTo"`
	// RemoteRouterID is the BGP identifier the peer sent.
	RemoteRouterID string `json:"remoteRouterId"`
	Capabilities   struct {
		// GracefulRestart is "advertised", "received" or
		// "advertisedAndReceived" (RFC 4724).
		GracefulRestart string `json:"gracefulRestart"`
	} `json:"neighborCapabilities"`
}

// Neighbors is bgpd's `show bgp neighbors`, by address.
func (v VTY) Neighbors() (map[string]Neighbor, error) {
	out := map[string]Neighbor{}
	return out, v.Show("show bgp neighbors", &out)
}

// BFDPeer is one BFD session as bfdd shows it.
type BFDPeer struct {
	Peer   string `json:"peer"`
	Status string `json:"status"` // "up", "down", "init"
}

// BFDPeers is bfdd's `show bfd peers` (Start with WithBFD).
func (v VTY) BFDPeers() ([]BFDPeer, error) {
	var out []BFDPeer
	return out, v.Show("show bfd peers", &out)
}

// Path is one path of a prefix in bgpd's RIB, as `show bgp ... PREFIX
// json` details it.
type Path struct {
	Valid     bool   `json:"valid"`
	LocalPref uint32 `json:"locPrf"`
	MED       uint32 `json:"metric"`
	Community struct {
		String string `json:"string"`
	} `json:"community"`
	LargeCommunity struct {
		String string `json:"string"`
	} `json:"largeCommunity"`
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
	Peer struct {
		PeerID string `json:"peerId"`
	} `json:"peer"`
	Bestpath struct {
		Overall bool `json:"overall"`
	} `json:"bestpath"`
}

// Paths is what bgpd's RIB holds for prefix ("192.0.2.100/32"): none when
// it has no route to it. afi is "ipv4" or "ipv6".
func (v VTY) Paths(afi, prefix string) ([]Path, error) {
	var out struct {
		Prefix string `json:"prefix"`
		Paths  []Path `json:"paths"`
	}
	if err := v.Show("show bgp "+afi+" unicast "+prefix, &out); err != nil {
		return nil, err
	}
	if out.Prefix != prefix {
		return nil, nil // a covering route, or {} for none
	}
	return out.Paths, nil
}

// Installed is what zebra put in the router's kernel for prefix
// ("192.0.2.100/32"): the protocol of the selected route ("bgp") and the
// next hops installed (several for ECMP); "" and none when the kernel
// has no route to exactly prefix. afi is "ip" or "ipv6".
func (v VTY) Installed(afi, prefix string) (protocol string, nexthops []string, err error) {
	data, err := v.Run("-d", "zebra", "-c", "show "+afi+" route "+prefix+" json")
	if err != nil {
		return "", nil, err
	}
	var out map[string][]struct {
		Protocol  string `json:"protocol"`
		Selected  bool   `json:"selected"`
		Installed bool   `json:"installed"`
		Nexthops  []struct {
			IP  string `json:"ip"`
			FIB bool   `json:"fib"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return "", nil, fmt.Errorf("show %s route %s: %w: %.500s", afi, prefix, err, data)
	}
	for _, r := range out[prefix] {
		if !r.Selected || !r.Installed {
			continue
		}
		for _, nh := range r.Nexthops {
			if nh.FIB {
				nexthops = append(nexthops, nh.IP)
			}
		}
		return r.Protocol, nexthops, nil
	}
	return "", nil, nil
}

// Eventually polls cond every 100ms until it returns nil, and fails t
// with its last error after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ErrNotYet is what a condition of Eventually may return while it waits.
var ErrNotYet = errors.New("not yet")

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
