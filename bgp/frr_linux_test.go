package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// These tests run halb's speaker against FRR's bgpd, a real router, each
// in a network namespace of its own joined by a veth pair. GoBGP opens
// its sockets on whatever thread its goroutines run, so the speaker's
// side of each test runs in a child process that lives wholly in its
// namespace: the test runs itself again there (inLab).

// labEnv carries the lab's description to the child.
const labEnv = "HALB_BGP_TEST_LAB"

// lab is the router and the link the speaker peers over.
type lab struct {
	VTY            frrtest.VTY
	Router4, Host4 netip.Addr
	Router6, Host6 netip.Addr
	RouterASN      uint32
}

// Lab addresses: documentation ranges.
var (
	router4 = netip.MustParsePrefix("192.0.2.254/24")
	host4   = netip.MustParsePrefix("192.0.2.1/24")
	router6 = netip.MustParsePrefix("2001:db8::fe/64")
	host6   = netip.MustParsePrefix("2001:db8::1/64")
)

// childTimeout bounds one test's child process.
const childTimeout = 3 * time.Minute

// inLab gives the calling test a lab whose router runs frrConf(lab), and
// runs the test again in a child process in the speaker's namespace. In
// the child it returns the lab, and the test goes on; in the parent it
// returns nil once the child passed.
func inLab(t *testing.T, routerASN uint32, frrConf func(l *lab) string, opts ...frrtest.Option) *lab {
	t.Helper()
	if v := os.Getenv(labEnv); v != "" {
		var l lab
		if err := json.Unmarshal([]byte(v), &l); err != nil {
			t.Fatal(err)
		}
		return &l
	}
	frrtest.Require(t)
	routerNS, hostNS := netnstest.New(t), netnstest.New(t)
	frrtest.Link(t, routerNS, "rt0", []netip.Prefix{router4, router6}, hostNS, "halb0", []netip.Prefix{host4, host6})
	l := &lab{Router4: router4.Addr(), Host4: host4.Addr(), Router6: router6.Addr(), Host6: host6.Addr(), RouterASN: routerASN}
	r := frrtest.Start(t, routerNS, frrConf(l), opts...)
	l.VTY = r.VTY
	desc, _ := json.Marshal(l)

	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), labEnv+"="+string(desc))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := hostNS.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	t.Logf("the speaker's side, in its namespace:\n%s", out.String())
	if err != nil || !strings.Contains(out.String(), "--- PASS: "+t.Name()) {
		t.Fatalf("the speaker's side failed (%v); the router's logs:\n%s%s", err, r.Logs("bgpd"), r.Logs("bfdd"))
	}
	return nil
}

// frrConf is bgpd's configuration with one neighbor per address given,
// each of remote AS peerASN, and the routes FRR announces to halb (which
// halb must reject). extra lines go into each neighbor's block.
func frrConf(routerASN, peerASN uint32, neighbors []netip.Addr, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id 192.0.2.254\n no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n", routerASN)
	for _, n := range neighbors {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s timers connect 1\n", n, peerASN, n)
		for _, e := range extra {
			fmt.Fprintf(&b, " neighbor %s %s\n", n, e)
		}
	}
	for _, af := range []struct {
		name, network string
		v4            bool
	}{{"ipv4", "203.0.113.0/24", true}, {"ipv6", "2001:db8:ffff::/48", false}} {
		fmt.Fprintf(&b, " address-family %s unicast\n  network %s\n", af.name, af.network)
		for _, n := range neighbors {
			if n.Is4() == af.v4 {
				fmt.Fprintf(&b, "  neighbor %s activate\n", n)
			}
		}
		b.WriteString(" exit-address-family\n")
	}
	return b.String()
}

// startSpeaker runs a speaker for cfg until the test ends, and fails the
// test if Run returns an error.
func startSpeaker(t *testing.T, cfg config.BGP) *Speaker {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

func peerCfg(addr netip.Addr, asn uint32) config.BGPPeer {
	return config.BGPPeer{Address: addr, ASN: config.ASN(asn), Port: 179, HoldTime: 9 * time.Second}
}

// established waits until the speaker and the router both see the
// session to peer (the router's neighbor addr) established.
func established(t *testing.T, l *lab, s *Speaker, peer, addr netip.Addr) PeerStatus {
	t.Helper()
	var st PeerStatus
	frrtest.Eventually(t, 30*time.Second, "session to "+peer.String()+" established", func() error {
		st = peerStatus(t, s, peer)
		if st.State != StateEstablished {
			return fmt.Errorf("halb sees %s (last error %q)", st.State, st.LastError)
		}
		ns, err := l.VTY.Neighbors()
		if err != nil {
			return err
		}
		if n := ns[addr.String()]; n.State != "Established" {
			return fmt.Errorf("the router sees %q", n.State)
		}
		return nil
	})
	return st
}

func peerStatus(t *testing.T, s *Speaker, peer netip.Addr) PeerStatus {
	t.Helper()
	for _, p := range s.Peers() {
		if p.Address == peer {
			return p
		}
	}
	t.Fatalf("Peers() has no %s", peer)
	return PeerStatus{}
}

// routerPaths waits until the router's RIB holds want paths for prefix
// (0: none) and returns them.
func routerPaths(t *testing.T, l *lab, prefix netip.Prefix, want int) []frrtest.Path {
	t.Helper()
	afi := "ipv4"
	if prefix.Addr().Is6() {
		afi = "ipv6"
	}
	var paths []frrtest.Path
	frrtest.Eventually(t, 20*time.Second, fmt.Sprintf("%d paths for %s in the router's RIB", want, prefix), func() error {
		var err error
		if paths, err = l.VTY.Paths(afi, prefix.String()); err != nil {
			return err
		}
		if len(paths) != want {
			all, _ := l.VTY.Run("-d", "bgpd", "-c", "show bgp "+afi+" unicast json")
			return fmt.Errorf("%d paths; the router's RIB:\n%s", len(paths), all)
		}
		return nil
	})
	return paths
}

// verifyNoLeaks checks, once the speaker is closed, that no goroutine of
// it or of GoBGP is left.
func verifyNoLeaks(t *testing.T, s *Speaker) {
	t.Helper()
	s.Close()
	goleak.VerifyNone(t)
}

// A session to FRR comes up; a VIP announced reaches FRR's RIB with its
// communities, large communities and MED and this node as next hop, and
// leaves it when withdrawn; FRR's own routes reach halb and are rejected:
// none is in GoBGP's RIB or in the kernel.
func TestFRRAnnounceWithdraw(t *testing.T) {
	l := inLab(t, 65000, func(l *lab) string { return frrConf(65000, 65001, []netip.Addr{l.Host4}) })
	if l == nil {
		return
	}
	s := startSpeaker(t, config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peerCfg(l.Router4, 65000)}})
	established(t, l, s, l.Router4, l.Host4)

	vip := netip.MustParsePrefix("198.51.100.10/32")
	attrs, err := AttrsOf(config.Announce{Communities: []string{"65000:100", "no-export"}, LargeCommunities: []string{"65000:1:2"}, LocalPref: 100, MED: 7})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second changes nothing
		if err := s.Announce(vip, attrs, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p := routerPaths(t, l, vip, 1)[0]
	if !p.Valid || p.Community.String != "65000:100 no-export" || p.LargeCommunity.String != "65000:1:2" || p.MED != 7 ||
		len(p.Nexthops) == 0 || p.Nexthops[0].IP != l.Host4.String() {
		t.Errorf("the router's path for %s = %+v; want valid, communities 65000:100 no-export, large 65000:1:2, med 7, next hop %s", vip, p, l.Host4)
	}
	frrtest.Eventually(t, 20*time.Second, "the router's kernel route to "+vip.String(), func() error {
		proto, nexthops, err := l.VTY.Installed("ip", vip.String())
		if err != nil {
			return err
		}
		if proto != "bgp" || len(nexthops) != 1 || nexthops[0] != l.Host4.String() {
			return fmt.Errorf("%q via %v", proto, nexthops)
		}
		return nil
	})
	if got := s.Announced(); len(got) != 1 || got[0].Prefix != vip || got[0].Reason != "test" {
		t.Errorf("Announced() = %+v", got)
	}

	// FRR's routes arrive and are rejected.
	frrtest.Eventually(t, 20*time.Second, "the router's route received", func() error {
		if st := peerStatus(t, s, l.Router4); st.Received != 1 || st.Sent != 1 {
			return fmt.Errorf("received %d, sent %d", st.Received, st.Sent)
		}
		return nil
	})
	if got := foreignPaths(t, s); len(got) > 0 {
		t.Errorf("GoBGP's RIB holds the router's routes %v: the import policy must reject them", got)
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "203.0.113.0/24" {
			t.Errorf("the router's route entered the kernel: %v", r)
		}
	}

	if err := s.Withdraw(vip); err != nil {
		t.Fatal(err)
	}
	routerPaths(t, l, vip, 0)
	if err := s.Withdraw(vip); err != nil { // withdrawing twice changes nothing
		t.Fatal(err)
	}
	if got := s.Announced(); len(got) != 0 {
		t.Errorf("Announced() after Withdraw = %+v", got)
	}
	verifyNoLeaks(t, s)
}

// foreignPaths lists the paths in GoBGP's RIB that halb did not
// originate.
func foreignPaths(t *testing.T, s *Speaker) []string {
	t.Helper()
	s.op.Lock()
	srv := s.srv
	s.op.Unlock()
	var out []string
	for _, f := range []gobgp.Family{gobgp.RF_IPv4_UC, gobgp.RF_IPv6_UC} {
		err := srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f}, func(prefix gobgp.NLRI, paths []*apiutil.Path) {
			for _, p := range paths {
				if p.PeerASN != 0 {
					out = append(out, prefix.String())
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// An iBGP session signed with TCP MD5 comes up with the graceful restart
// capability, and local_pref reaches the router (it is sent to iBGP peers
// only).
func TestFRRIBGPWithMD5(t *testing.T) {
	const key = "halb-test-key"
	l := inLab(t, 65001, func(l *lab) string {
		return frrConf(65001, 65001, []netip.Addr{l.Host4}, "password "+key)
	})
	if l == nil {
		return
	}
	peer := peerCfg(l.Router4, 65001)
	peer.Password = key
	peer.GracefulRestart = true
	s := startSpeaker(t, config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peer}})
	established(t, l, s, l.Router4, l.Host4)
	ns, err := l.VTY.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	if gr := ns[l.Host4.String()].Capabilities.GracefulRestart; !strings.Contains(gr, "eceived") {
		t.Errorf("the router's graceful restart capability from halb: %q; want it received", gr)
	}
	vip := netip.MustParsePrefix("198.51.100.20/32")
	if err := s.Announce(vip, Attrs{LocalPref: 250}, "test"); err != nil {
		t.Fatal(err)
	}
	if p := routerPaths(t, l, vip, 1)[0]; !p.Valid || p.LocalPref != 250 {
		t.Errorf("the router's path for %s = %+v; want valid with local preference 250", vip, p)
	}
	verifyNoLeaks(t, s)
}

// Reconfigure adding a peer (an IPv6 session) leaves the session to the
// first up, without a reset; a /128 reaches the router over IPv6; and
// removing the second peer leaves the first alone again.
func TestFRRReconfigureAddsPeerAlone(t *testing.T) {
	l := inLab(t, 65000, func(l *lab) string { return frrConf(65000, 65001, []netip.Addr{l.Host4, l.Host6}) })
	if l == nil {
		return
	}
	one := config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peerCfg(l.Router4, 65000)}}
	s := startSpeaker(t, one)
	first := established(t, l, s, l.Router4, l.Host4)
	ns, err := l.VTY.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	before := ns[l.Host4.String()]
	if before.Established != 1 || before.Dropped != 0 {
		t.Fatalf("the router's first session before: %d made, %d dropped; want 1 and 0", before.Established, before.Dropped)
	}

	two := one
	two.Peers = append([]config.BGPPeer{}, one.Peers[0], peerCfg(l.Router6, 65000))
	if err := s.Reconfigure(two); err != nil {
		t.Fatal(err)
	}
	established(t, l, s, l.Router6, l.Host6)
	vip6 := netip.MustParsePrefix("2001:db8:100::10/128")
	if err := s.Announce(vip6, Attrs{LocalPref: 100}, "test"); err != nil {
		t.Fatal(err)
	}
	if p := routerPaths(t, l, vip6, 1)[0]; !p.Valid || len(p.Nexthops) == 0 || p.Nexthops[0].IP != l.Host6.String() {
		t.Errorf("the router's path for %s = %+v; want valid, next hop %s", vip6, p, l.Host6)
	}
	if err := s.Reconfigure(one); err != nil {
		t.Fatal(err)
	}
	routerPaths(t, l, vip6, 0) // the IPv6 session is gone, and its route with it

	if now := peerStatus(t, s, l.Router4); now.State != StateEstablished || !now.Since.Equal(first.Since) {
		t.Errorf("the first session after two reconfigurations: %s since %s; want established since %s", now.State, now.Since, first.Since)
	}
	ns, err = l.VTY.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	if n := ns[l.Host4.String()]; n.State != "Established" || n.Established != before.Established || n.Dropped != before.Dropped {
		t.Errorf("the router's first session: %s, %d made and %d dropped; want Established, %d made and %d dropped as before",
			n.State, n.Established, n.Dropped, before.Established, before.Dropped)
	}
	verifyNoLeaks(t, s)
}

// A peer that refuses the connection is a state with its reason, retried;
// Run goes on, and the other peer's session comes up.
func TestFRRRefusingPeerIsAState(t *testing.T) {
	l := inLab(t, 65000, func(l *lab) string { return frrConf(65000, 65001, []netip.Addr{l.Host6}) })
	if l == nil {
		return
	}
	refusing := peerCfg(l.Router4, 65000)
	refusing.Port = 1179 // nothing listens there: the router's kernel answers with a reset
	s := startSpeaker(t, config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peerCfg(l.Router6, 65000), refusing}})
	established(t, l, s, l.Router6, l.Host6)
	frrtest.Eventually(t, 30*time.Second, "the refusing peer's state", func() error {
		st := peerStatus(t, s, l.Router4)
		if st.State == StateEstablished || !strings.Contains(st.LastError, "connection refused") {
			return fmt.Errorf("%s, last error %q", st.State, st.LastError)
		}
		return nil
	})
	verifyNoLeaks(t, s)
}

// A peer with bfd: runs a BFD session that the router's bfdd sees up;
// when halb's packets stop reaching the router (a blackhole route on
// halb's side, the link itself stays up), BFD takes the session down long
// before the hold time would.
func TestFRRBFD(t *testing.T) {
	l := inLab(t, 65000, func(l *lab) string {
		return frrConf(65000, 65001, []netip.Addr{l.Host4}, "bfd")
	}, frrtest.WithBFD(""))
	if l == nil {
		return
	}
	peer := peerCfg(l.Router4, 65000)
	peer.BFD = &config.BFD{MinRx: 100 * time.Millisecond, MinTx: 100 * time.Millisecond, Multiplier: 3}
	peer.HoldTime = 60 * time.Second
	s := startSpeaker(t, config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peer}})
	established(t, l, s, l.Router4, l.Host4)
	bfdStatus := func(want string) func() error {
		return func() error {
			peers, err := l.VTY.BFDPeers()
			if err != nil {
				return err
			}
			for _, p := range peers {
				if p.Peer == l.Host4.String() && p.Status == want {
					return nil
				}
			}
			return fmt.Errorf("bfd peers %+v", peers)
		}
	}
	frrtest.Eventually(t, 30*time.Second, "the router's BFD session up", bfdStatus("up"))
	sessions := func() frrtest.Neighbor {
		ns, err := l.VTY.Neighbors()
		if err != nil {
			t.Fatal(err)
		}
		return ns[l.Host4.String()]
	}
	if n := sessions(); n.State != "Established" || n.Established != 1 {
		t.Fatalf("with BFD up the router's session is %s after %d sessions; want the first one Established", n.State, n.Established)
	}

	blackhole := &netlink.Route{Dst: netlink.NewIPNet(l.Router4.AsSlice()), Type: unix.RTN_BLACKHOLE}
	if err := netlink.RouteAdd(blackhole); err != nil {
		t.Fatal(err)
	}
	// Half the hold time: only BFD can have taken the session down by then.
	frrtest.Eventually(t, peer.HoldTime/2, "the router's BFD session down", bfdStatus("down"))
	frrtest.Eventually(t, peer.HoldTime/2, "the router's BGP session down", func() error {
		ns, err := l.VTY.Neighbors()
		if err != nil {
			return err
		}
		if st := ns[l.Host4.String()].State; st == "Established" {
			return errors.New("still established")
		}
		return nil
	})

	// The path back: the session and its BFD come up again, and stay.
	if err := netlink.RouteDel(blackhole); err != nil {
		t.Fatal(err)
	}
	established(t, l, s, l.Router4, l.Host4)
	frrtest.Eventually(t, 30*time.Second, "the router's BFD session up again", bfdStatus("up"))
	if n := sessions(); n.State != "Established" || n.Established != 2 {
		t.Errorf("after the path came back the router's session is %s after %d sessions; want the second one Established", n.State, n.Established)
	}
	verifyNoLeaks(t, s)
}

// A new router_id restarts the speaker: the session is made again and
// what was announced is announced again.
func TestFRRReconfigureGlobalRestarts(t *testing.T) {
	l := inLab(t, 65000, func(l *lab) string { return frrConf(65000, 65001, []netip.Addr{l.Host4}) })
	if l == nil {
		return
	}
	cfg := config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{peerCfg(l.Router4, 65000)}}
	s := startSpeaker(t, cfg)
	established(t, l, s, l.Router4, l.Host4)
	vip := netip.MustParsePrefix("198.51.100.30/32")
	if err := s.Announce(vip, Attrs{LocalPref: 100}, "test"); err != nil {
		t.Fatal(err)
	}
	routerPaths(t, l, vip, 1)

	cfg.RouterID = netip.MustParseAddr("203.0.113.9")
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	frrtest.Eventually(t, 30*time.Second, "the router's second session with the new router id", func() error {
		ns, err := l.VTY.Neighbors()
		if err != nil {
			return err
		}
		if n := ns[l.Host4.String()]; n.State != "Established" || n.Established != 2 || n.RemoteRouterID != "203.0.113.9" {
			return fmt.Errorf("%s after %d sessions, router id %s", n.State, n.Established, n.RemoteRouterID)
		}
		return nil
	})
	routerPaths(t, l, vip, 1)
	verifyNoLeaks(t, s)
}
