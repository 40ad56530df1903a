package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// These tests run `halb run` with a bgp: section in a namespace of its
// own, peering with FRR's bgpd (a real router) in another, and read what
// the router's RIB holds. A third namespace holds the backend, whose
// health the test turns on and off by listening or not.
//
//	router (rt0 203.0.113.254, 2001:db8:ffff::fe) -- (up0 203.0.113.1, 2001:db8:ffff::1) halb
//	halb (eth0 198.51.100.1) -- (be0 198.51.100.11) backend

// bgpLab is one lab: the router, halb's namespace and the backend's.
type bgpLab struct {
	router    *frrtest.Router
	ns        *netnstest.NS // halb's
	backendNS *netnstest.NS
	pins      string
	sock      string
	cfg       string // the config file's path
}

const (
	labVIP      = "192.0.2.100/32"
	labHalb4    = "203.0.113.1"
	labHalb6    = "2001:db8:ffff::1"
	labBackend  = "198.51.100.11:80"
	labRouterAS = 65000
	labHalbAS   = 65001
)

// frrLabConf is bgpd's configuration: both of halb's addresses as
// neighbors, so that a reload adding the IPv6 peer finds the router
// ready.
const frrLabConf = `router bgp 65000
 bgp router-id 203.0.113.254
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor 203.0.113.1 remote-as 65001
 neighbor 203.0.113.1 timers connect 1
 neighbor 2001:db8:ffff::1 remote-as 65001
 neighbor 2001:db8:ffff::1 timers connect 1
 address-family ipv4 unicast
  neighbor 203.0.113.1 activate
 exit-address-family
 address-family ipv6 unicast
  neighbor 2001:db8:ffff::1 activate
 exit-address-family
`

func newBGPLab(t *testing.T) *bgpLab {
	t.Helper()
	frrtest.Require(t)
	routerNS, ns, backendNS := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	p := netip.MustParsePrefix
	frrtest.Link(t, routerNS, "rt0", []netip.Prefix{p("203.0.113.254/24"), p("2001:db8:ffff::fe/64")},
		ns, "up0", []netip.Prefix{p(labHalb4 + "/24"), p(labHalb6 + "/64")})
	frrtest.Link(t, ns, "eth0", []netip.Prefix{p("198.51.100.1/24")}, backendNS, "be0", []netip.Prefix{p("198.51.100.11/24")})
	fs := bpffsOfTest(t)
	dir := t.TempDir()
	return &bgpLab{
		router:    frrtest.Start(t, routerNS, frrLabConf),
		ns:        ns,
		backendNS: backendNS,
		pins:      filepath.Join(fs, "halb"),
		sock:      filepath.Join(dir, "halb.sock"),
		cfg:       filepath.Join(dir, "halb.yaml"),
	}
}

// write writes halb's config: the web service (announce as given,
// health checked every 200ms, in and out at the first result), the
// peers, and what extra adds (a vrrp: section).
func (l *bgpLab) write(t *testing.T, announce string, peers []string, extra string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s}\ndatapath: {mode: xdp, interfaces: [up0, eth0], bpffs: %s}\n", l.sock, l.pins)
	fmt.Fprintf(&b, `services:
  - name: web
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
    health_check: {type: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 1}
    announce: %s
bgp:
  asn: %d
  router_id: %s
  drain_time: 3s
  peers:
`, announce, labHalbAS, labHalb4)
	for _, p := range peers {
		fmt.Fprintf(&b, "    - {address: %s, asn: %d, hold_time: 9s}\n", p, labRouterAS)
	}
	b.WriteString(extra)
	// Written aside and renamed into place: halb may be reading the file
	// for an earlier SIGHUP (the storm sends them faster than halb
	// reloads), and a file rewritten in place can then be read empty or
	// cut short, a valid config without the bgp section.
	next := l.cfg + ".next"
	if err := os.WriteFile(next, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, l.cfg); err != nil {
		t.Fatal(err)
	}
}

// backendUp makes the backend answer on its port until the returned
// function is called.
func (l *bgpLab) backendUp(t *testing.T) (down func()) {
	t.Helper()
	var ln net.Listener
	if err := l.backendNS.Do(func() (err error) {
		ln, err = net.Listen("tcp", labBackend)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var once bool
	down = func() {
		if !once {
			once = true
			ln.Close()
			<-done
		}
	}
	t.Cleanup(down)
	return down
}

// routed reports whether the router's RIB holds prefix from halb.
func (l *bgpLab) routed(afi, prefix string) (bool, error) {
	paths, err := l.router.Paths(afi, prefix)
	if err != nil {
		return false, err
	}
	for _, p := range paths {
		for _, nh := range p.Nexthops {
			if nh.IP == labHalb4 || nh.IP == labHalb6 {
				return true, nil
			}
		}
	}
	return false, nil
}

// waitRouted waits until the router's RIB holds the VIP from halb (want)
// or does not (!want).
func (l *bgpLab) waitRouted(t *testing.T, want bool, what string) {
	t.Helper()
	frrtest.Eventually(t, 30*time.Second, what, func() error {
		ok, err := l.routed("ipv4", labVIP)
		if err != nil {
			return err
		}
		if ok != want {
			return fmt.Errorf("%w: %s from halb in the router's RIB: %v", frrtest.ErrNotYet, labVIP, ok)
		}
		return nil
	})
}

// bgpStatus is `halb status --json`'s bgp part.
func (l *bgpLab) bgpStatus(t *testing.T) *daemon.BGPStatus {
	t.Helper()
	code, out, errs := run(t, "status", "--json", "-s", l.sock)
	if code != exitOK {
		t.Fatalf("halb status = %d: %s", code, errs)
	}
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.BGP == nil {
		t.Fatalf("halb status has no bgp part:\n%s", out)
	}
	return st.BGP
}

// announcement is the web service's announcement in halb status.
func (l *bgpLab) announcement(t *testing.T) daemon.AnnouncementStatus {
	t.Helper()
	b := l.bgpStatus(t)
	if len(b.Announcements) != 1 || b.Announcements[0].Service != "web" {
		t.Fatalf("announcements: %+v", b.Announcements)
	}
	return b.Announcements[0]
}

// announce: always announces the VIP while the backend is healthy; its
// health failing withdraws it, recovery announces it again. halb status
// shows the session and why; halb drain withdraws it without stopping
// halb until halb undrain.
func TestBGPAnnounceFollowsHealth(t *testing.T) {
	l := newBGPLab(t)
	down := l.backendUp(t)
	l.write(t, "always", []string{"203.0.113.254"}, "")
	p := startHalbIn(t, l.ns, "run", "-c", l.cfg)
	p.waitFor(t, "bgp speaker started")
	l.waitRouted(t, true, "the vip announced while the backend is healthy")

	b := l.bgpStatus(t)
	if len(b.Peers) != 1 || b.Peers[0].State != "established" || b.Peers[0].Since == nil || b.Peers[0].PrefixesSent != 1 {
		t.Errorf("peers in halb status: %+v", b.Peers)
	}
	if a := l.announcement(t); !a.Announced || a.Prefix != labVIP || !strings.HasPrefix(a.Reason, "serving") {
		t.Errorf("announcement in halb status: %+v", a)
	}

	down()
	l.waitRouted(t, false, "the vip withdrawn once the only backend fails")
	if a := l.announcement(t); a.Announced || !strings.HasPrefix(a.Reason, "quorum lost") {
		t.Errorf("announcement with no healthy backend: %+v", a)
	}
	l.backendUp(t)
	l.waitRouted(t, true, "the vip announced again once the backend recovers")

	// halb drain: withdrawn, and still so once the command has waited
	// drain_time; halb still runs. halb undrain announces it again.
	start := time.Now()
	code, out, errs := run(t, "drain", "-s", l.sock)
	if code != exitOK || !strings.Contains(out, labVIP) {
		t.Fatalf("halb drain = %d\n%s%s", code, out, errs)
	}
	if waited := time.Since(start); waited < 3*time.Second {
		t.Errorf("halb drain returned after %v, before drain_time (3s)", waited)
	}
	if ok, err := l.routed("ipv4", labVIP); err != nil || ok {
		t.Errorf("after halb drain the router still has the vip from halb (%v)", err)
	}
	if p.Exited() {
		t.Fatal("halb drain stopped halb")
	}
	if b := l.bgpStatus(t); !strings.Contains(b.Drained, "halb drain by uid 0") || b.Announcements[0].Announced {
		t.Errorf("drained status: %+v", b)
	}
	if code, out, errs := run(t, "undrain", "-s", l.sock); code != exitOK {
		t.Fatalf("halb undrain = %d\n%s%s", code, out, errs)
	}
	l.waitRouted(t, true, "the vip announced again after halb undrain")
}

// SIGTERM with bgp: withdraws the route at the router while halb still
// runs, and halb exits no sooner than drain_time after the signal.
func TestBGPDrainOnSIGTERM(t *testing.T) {
	l := newBGPLab(t)
	l.backendUp(t)
	l.write(t, "always", []string{"203.0.113.254"}, "")
	p := startHalbIn(t, l.ns, "run", "-c", l.cfg)
	l.waitRouted(t, true, "the vip announced")
	if on, arp := l.vipOnLo(t); !on || arp != "1 2" {
		t.Errorf("while halb runs: vip on lo %v, arp_ignore and arp_announce %q, want true and \"1 2\"", on, arp)
	}

	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	withdrawnRunning := false
	frrtest.Eventually(t, 30*time.Second, "the vip withdrawn after SIGTERM", func() error {
		ok, err := l.routed("ipv4", labVIP)
		if err != nil || ok {
			return errors.Join(frrtest.ErrNotYet, err)
		}
		withdrawnRunning = !p.Exited()
		return nil
	})
	if !withdrawnRunning {
		t.Error("the route went only when halb had exited: no drain")
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("halb did not exit after its drain")
	}
	if took := time.Since(start); took < 3*time.Second {
		t.Errorf("halb exited %v after SIGTERM, before drain_time (3s)", took)
	}
	if code := p.exitCode(t); code != 0 {
		t.Errorf("exit status %d after a drain", code)
	}
	if on, arp := l.vipOnLo(t); on || arp != "0 0" {
		t.Errorf("after halb stopped: vip on lo %v, arp_ignore and arp_announce %q, want false and \"0 0\" as before", on, arp)
	}
}

// vipOnLo reports whether the VIP is on lo in halb's namespace, and its
// net.ipv4.conf.all.arp_ignore and arp_announce.
func (l *bgpLab) vipOnLo(t *testing.T) (bool, string) {
	t.Helper()
	lo, err := l.ns.Netlink(t).LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := l.ns.Netlink(t).AddrList(lo, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	on := slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == labVIP })
	var arp []string
	if err := l.ns.Do(func() error {
		for _, name := range []string{"arp_ignore", "arp_announce"} {
			v, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/" + name)
			if err != nil {
				return err
			}
			arp = append(arp, strings.TrimSpace(string(v)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return on, strings.Join(arp, " ")
}

// A reload that adds a peer opens its session and leaves the first one
// as it was: the router counts no new session and no drop for it.
func TestBGPReloadAddsPeerKeepsSession(t *testing.T) {
	l := newBGPLab(t)
	l.backendUp(t)
	l.write(t, "always", []string{"203.0.113.254"}, "")
	p := startHalbIn(t, l.ns, "run", "-c", l.cfg)
	l.waitRouted(t, true, "the vip announced")
	before := l.neighbor(t, labHalb4)

	l.write(t, "always", []string{"203.0.113.254", "2001:db8:ffff::fe"}, "")
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitFor(t, "config reloaded")
	frrtest.Eventually(t, 30*time.Second, "the added ipv6 session established", func() error {
		if n := l.neighbor(t, labHalb6); n.State != "Established" {
			return fmt.Errorf("%w: %s", frrtest.ErrNotYet, n.State)
		}
		return nil
	})
	after := l.neighbor(t, labHalb4)
	if after.State != "Established" || after.Established != before.Established || after.Dropped != before.Dropped {
		t.Errorf("the first session was reset by a reload that only added a peer: before %+v, after %+v", before, after)
	}
	if b := l.bgpStatus(t); len(b.Peers) != 2 {
		t.Errorf("peers after the reload: %+v", b.Peers)
	}
}

func (l *bgpLab) neighbor(t *testing.T, addr string) frrtest.Neighbor {
	t.Helper()
	ns, err := l.router.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	return ns[addr]
}

// announce: master follows the VRRP instance holding the VIP: a single
// node becomes MASTER and announces; its interface going down (FAULT)
// withdraws the route while the BGP session, on another link, stays up;
// the interface back makes it MASTER and announces again.
func TestBGPAnnounceMaster(t *testing.T) {
	l := newBGPLab(t)
	l.backendUp(t)
	l.write(t, "master", []string{"203.0.113.254"}, `vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, version: 3, priority: 150, advert_interval: 100ms, virtual_ips: [192.0.2.100/32]}
`)
	p := startHalbIn(t, l.ns, "run", "-c", l.cfg)
	p.waitFor(t, "bgp speaker started")
	l.waitRouted(t, true, "the vip announced once VI_1 is MASTER")
	if a := l.announcement(t); !a.Announced || a.Reason != "vrrp instance VI_1 is MASTER" {
		t.Errorf("announcement as MASTER: %+v", a)
	}

	h := l.ns.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(eth0); err != nil {
		t.Fatal(err)
	}
	l.waitRouted(t, false, "the vip withdrawn once VI_1 is in FAULT")
	if a := l.announcement(t); a.Announced || a.Reason != "vrrp instance VI_1 is FAULT" {
		t.Errorf("announcement in FAULT: %+v", a)
	}
	if n := l.neighbor(t, labHalb4); n.State != "Established" {
		t.Errorf("the session dropped with eth0: %+v", n)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	l.waitRouted(t, true, "the vip announced again once VI_1 is MASTER again")
}

// bpffsOfTest is a bpffs of the test's own, whose pins are removed
// before it is unmounted.
func bpffsOfTest(t *testing.T) string {
	t.Helper()
	fs := halbtest.BPFFS(t)
	t.Cleanup(func() { removePins(fs) })
	return fs
}
