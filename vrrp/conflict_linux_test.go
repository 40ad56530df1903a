package vrrp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// A host that claims the Master's VIP, with a gratuitous ARP (IPv4) or an
// unsolicited Neighbor Advertisement (IPv6), takes the clients' neighbour
// entries for it. The Master logs the claim (with the VIP and the
// claimer's MAC), counts it in `halb status --json`, and answers with its
// own announcement, so the client's entry comes back to the Master's MAC;
// a flood of claims gets a bounded number of answers (one per VIP per
// second). Before, the claim went unanswered and unseen.
//
// On the switched LAN a runs halb (alone: Master), b claims the VIP, c is
// the client.
func TestAddressConflictAnswered(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v6, vmac bool
	}{
		{"ipv4", false, false},
		{"ipv6", true, false},
		{"ipv4-vmac", false, true},
	} {
		v6 := tc.v6
		t.Run(tc.name, func(t *testing.T) {
			s := newSwitched(t)
			limit := 10 * time.Second
			vip := netip.MustParsePrefix("192.0.2.100/24")
			family := netlink.FAMILY_V4
			if v6 {
				vip, family = netip.MustParsePrefix("2001:db8::100/64"), netlink.FAMILY_V6
				lan, _ := s.handles[2].LinkByName("lan0")
				if err := s.handles[2].AddrAdd(lan, toAddr(netip.MustParsePrefix("2001:db8::3/64"))); err != nil {
					t.Fatal(err)
				}
				waitLinkLocal(t, s.handles[0], limit)
			}
			mac := func(i int) net.HardwareAddr {
				lk, err := s.handles[i].LinkByName("lan0")
				if err != nil {
					t.Fatal(err)
				}
				return lk.Attrs().HardwareAddr
			}
			aMAC, bMAC := mac(0), mac(1)
			extra := ""
			if tc.vmac {
				// The VIP and the answers are on the VMAC.
				aMAC, extra = virtualMAC(51, v6), "      use_vmac: true\n"
			}
			sock := filepath.Join(t.TempDir(), "halb.sock")
			a := newNode(t, "a", s.hosts[0], fmt.Sprintf(`log: {level: debug}
control: {socket: %s}
vrrp:
  instances:
    - name: VI_C
      interface: lan0
      vrid: 51
      version: 3
      priority: 150
      advert_interval: 100ms
      garp_master_delay: 0s
      garp_master_repeat: 1
      accept: true
      virtual_ips: [%s]
%s`, sock, vip, extra))
			// accept: c pings the VIP, which a v3 Master without
			// Accept_Mode filters.
			a.start(t)
			waitLog(t, a, "to=MASTER")

			// c's neighbour entry for the VIP, after reaching it.
			if err := eventually(limit, func() error { return ping(s.hosts[2], vip.Addr(), time.Second) }); err != nil {
				t.Fatalf("c cannot reach the VIP: %v", err)
			}
			neigh := func() net.HardwareAddr {
				lk, _ := s.handles[2].LinkByName("lan0")
				list, _ := s.handles[2].NeighList(lk.Attrs().Index, family)
				for _, n := range list {
					if n.IP.Equal(net.IP(vip.Addr().AsSlice())) {
						return n.HardwareAddr
					}
				}
				return nil
			}
			if got := neigh(); !bytes.Equal(got, aMAC) {
				t.Fatalf("c has %v for the VIP, want a's %s", got, aMAC)
			}
			answers := countAnnouncements(t, s.hosts[2], vip.Addr(), aMAC)

			// b claims the VIP.
			claim := claimFrame(t, s.hosts[1], bMAC, vip.Addr())
			sendFrames(t, s.hosts[1], claim, 1, 0)
			waitLog(t, a, "address conflict")
			line := ""
			for _, l := range strings.Split(a.log.String(), "\n") {
				if strings.Contains(l, "address conflict") {
					line = l
				}
			}
			if !strings.Contains(line, "vip="+vip.Addr().String()) || !strings.Contains(line, "mac="+bMAC.String()) || !strings.Contains(line, "instance=VI_C") {
				t.Errorf("the conflict log line does not name the instance, the VIP and b's MAC: %s", line)
			}
			var got net.HardwareAddr
			for start := time.Now(); time.Since(start) < limit; time.Sleep(20 * time.Millisecond) {
				if got = neigh(); bytes.Equal(got, aMAC) {
					break
				}
			}
			if !bytes.Equal(got, aMAC) {
				t.Fatalf("after b's claim c has %v for the VIP, want a's %s back", got, aMAC)
			}
			if n := conflictsInStatus(t, sock, vip.Addr()); n < 1 {
				t.Errorf("halb status --json counts %d conflicts for %s, want at least 1", n, vip.Addr())
			}
			t.Logf("b claimed %s; a logged it, counted it and c has a's %s again", vip.Addr(), aMAC)

			// A flood of claims: answers stay at about one a second.
			time.Sleep(1500 * time.Millisecond) // past the answer above
			before := answers.Load()
			start := time.Now()
			sendFrames(t, s.hosts[1], claim, 1000, time.Millisecond)
			flood := time.Since(start)
			time.Sleep(1500 * time.Millisecond) // answers still in flight
			sent := answers.Load() - before
			counted := conflictsInStatus(t, sock, vip.Addr())
			bound := int64(math.Ceil(flood.Seconds())) + 2
			t.Logf("1000 claims in %v: %d answers (bound %d), %d conflicts counted", flood.Round(time.Millisecond), sent, bound, counted)
			if sent > bound {
				t.Errorf("%d answers to a flood of 1000 claims over %v, want at most %d", sent, flood, bound)
			}
			if sent < 1 {
				t.Errorf("no answer to a flood of 1000 claims")
			}
			if counted < 100 {
				t.Errorf("%d conflicts counted after a flood of 1000 claims, want most of them", counted)
			}
		})
	}
}

// claimFrame is an announcement from mac that vip is at mac: a gratuitous
// ARP, or an unsolicited NA from the claimer's link-local address.
func claimFrame(t *testing.T, ns *netnstest.NS, mac net.HardwareAddr, vip netip.Addr) []byte {
	t.Helper()
	var f []byte
	var err error
	if vip.Is4() {
		f, err = GratuitousARP(mac, vip)
	} else {
		f, err = UnsolicitedNA(mac, netip.MustParseAddr("fe80::bad"), vip)
	}
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// sendFrames sends frame n times from lan0 in ns, pause apart.
func sendFrames(t *testing.T, ns *netnstest.NS, frame []byte, n int, pause time.Duration) {
	t.Helper()
	dst := broadcastMAC
	if bytes.Equal(frame[:6], allNodesMAC) {
		dst = allNodesMAC
	}
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("lan0")
		if err != nil {
			return err
		}
		c, err := packet.Listen(ifi, packet.Raw, 0, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			if _, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
				return err
			}
			time.Sleep(pause)
		}
		return nil
	}); err != nil {
		t.Fatalf("send claims: %v", err)
	}
}

// countAnnouncements counts, until the test ends, the announcements for
// vip from mac that reach lan0 in ns: broadcast gratuitous ARPs, or NAs
// to all nodes (the kernel's answers to c's own questions are unicast).
func countAnnouncements(t *testing.T, ns *netnstest.NS, vip netip.Addr, mac net.HardwareAddr) *atomic.Int64 {
	t.Helper()
	proto := 0x0806
	if vip.Is6() {
		proto = 0x86dd
	}
	var c *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("lan0")
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, proto, nil)
		return err
	}); err != nil {
		t.Fatalf("capture on lan0: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			f := buf[:k]
			if len(f) < 14 || !(bytes.Equal(f[:6], broadcastMAC) || bytes.Equal(f[:6], allNodesMAC)) {
				continue
			}
			parse := arpClaim
			if vip.Is6() {
				parse = naClaim
			}
			if cl, ok := parse(f); ok && cl.ip == vip && bytes.Equal(cl.mac, mac) {
				n.Add(1)
			}
		}
	}()
	return &n
}

// conflictsInStatus is the address_conflicts count for vip that `halb
// status --json` shows for the first instance.
func conflictsInStatus(t *testing.T, sock string, vip netip.Addr) int64 {
	t.Helper()
	out, err := exec.Command(halbBin, "status", "--json", "-s", sock).Output()
	if err != nil {
		t.Fatalf("halb status --json: %v", err)
	}
	var st struct {
		Instances []struct {
			Conflicts map[string]int64 `json:"address_conflicts"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(out, &st); err != nil || len(st.Instances) == 0 {
		t.Fatalf("halb status --json: %v\n%s", err, out)
	}
	return st.Instances[0].Conflicts[vip.String()]
}

// A peer that takes the VIP over by the protocol (here by preemption)
// sends its advert and then its gratuitous ARP: the old Master gives the
// VIP up on the advert and does not answer the ARP, which would pull the
// clients back to it. Repeated for a few takeovers, since the two arrive
// together. The answer is decided on the instance's loop after the
// adverts it has read (TestConflictAnswerWaitsForAdverts), so a loop that
// runs late on a loaded host does not make this flake.
func TestConflictNotAnsweredOnTakeover(t *testing.T) {
	s := newSwitched(t)
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	limit := 10 * time.Second
	a := newNode(t, "a", s.hosts[0], v.config(s.l, 0, 100, true))
	a.start(t)
	waitAddr(t, s.handles[0], v.vip(), true, limit)
	for round := range 3 {
		b := newNode(t, fmt.Sprintf("b%d", round), s.hosts[1], v.config(s.l, 1, 200, true))
		b.start(t)
		waitAddr(t, s.handles[1], v.vip(), true, limit)
		waitAddr(t, s.handles[0], v.vip(), false, limit)
		time.Sleep(500 * time.Millisecond) // past conflictAnswerDelay
		b.stop(syscall.SIGTERM)
		waitAddr(t, s.handles[0], v.vip(), true, limit)
	}
	if strings.Contains(a.log.String(), "address conflict") {
		t.Errorf("a took a takeover by the protocol for a conflict:\n%s", a.log)
	}
}

// The answer to a claim is the instance's decision, taken on its loop
// after the adverts already read: a peer that takes over sends its advert
// before its claim, and however late the old Master's loop comes to them
// (here: well past conflictAnswerDelay, as on a loaded host), the advert
// is handled first, the instance leaves Master and nothing answers the
// claim. With no advert waiting, the same late loop answers it. Before,
// the watch answered on its own timer once conflictAnswerDelay had
// passed, whatever the loop had yet to read: the old Master pulled the
// clients back from the new one.
func TestConflictAnswerWaitsForAdverts(t *testing.T) {
	for _, queued := range []bool{true, false} {
		t.Run(fmt.Sprintf("advert queued %v", queued), func(t *testing.T) {
			testConflictAnswerWaits(t, queued)
		})
	}
}

func testConflictAnswerWaits(t *testing.T, queued bool) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	lan0, _ := h.LinkByName("lan0")
	peer0, _ := h.LinkByName("peer0")
	for _, l := range []netlink.Link{lan0, peer0} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	vip := netip.MustParsePrefix("192.0.2.100/32")
	logs := &syncBuffer{}
	in := NewInstance(config.Instance{Name: "VI_1", Interface: "lan0", VRID: 51, Version: 3, Priority: 100,
		AdvertInterval: 100 * time.Millisecond, Preempt: true, VirtualIPs: config.PlainVIPs(vip)},
		slog.New(slog.NewTextHandler(logs, nil)))
	now := time.Now()
	in.apply(now, in.m.Start(now))
	in.apply(now, in.m.Tick(now.Add(in.m.MasterDownInterval())))
	if in.m.State() != Master {
		t.Fatalf("the instance is %s, want MASTER", in.m.State())
	}
	a := lan0.Attrs()
	ifi := &net.Interface{Index: a.Index, Name: a.Name, MTU: a.MTU, HardwareAddr: a.HardwareAddr, Flags: net.FlagUp}
	var peer *packet.Conn
	err := ns.Do(func() error {
		w, err := startConflictWatch(ifi, nil, netip.Addr{}, []netip.Prefix{vip}, in.onConflict, in.conflictDue)
		if err != nil {
			return err
		}
		in.conflicts = w
		pa := peer0.Attrs()
		peer, err = packet.Listen(&net.Interface{Index: pa.Index, Name: pa.Name, HardwareAddr: pa.HardwareAddr}, packet.Raw, 0x0806, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.stopConflicts(); peer.Close() })

	// The peer's advert (priority 200) is read first, then its claim.
	if queued {
		src, dst := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("224.0.0.18")
		payload, err := (&Advert{Version: 3, VRID: 51, Priority: 200, Interval: 100 * time.Millisecond,
			Addrs: []netip.Addr{vip.Addr()}}).Marshal(nil, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		in.adverts <- packetIn{payload: payload, src: src, dst: dst, ttl: 255}
	}
	claim, err := GratuitousARP(peer0.Attrs().HardwareAddr, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteTo(claim, &packet.Addr{HardwareAddr: broadcastMAC}); err != nil {
		t.Fatal(err)
	}
	var r conflictReport
	select {
	case r = <-in.conflictDue:
	case <-time.After(10 * time.Second):
		t.Fatal("the claim's answer was not due within 10 s")
	}
	// The loop comes to it late.
	time.Sleep(3 * conflictAnswerDelay)
	in.answerDue(time.Now(), r)

	// What left lan0 for the VIP, read on its peer for a second.
	answers := 0
	buf := make([]byte, 1500)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		_ = peer.SetReadDeadline(deadline)
		n, _, err := peer.ReadFrom(buf)
		if err != nil {
			break
		}
		if cl, ok := arpClaim(buf[:n]); ok && cl.ip == vip.Addr() && bytes.Equal(cl.mac, a.HardwareAddr) {
			answers++
		}
	}
	answeredLog := strings.Contains(logs.String(), "answered with our announcement")
	t.Logf("state %s, %d answers, answer logged %v", in.m.State(), answers, answeredLog)
	if queued {
		if in.m.State() != Backup || answers != 0 || answeredLog {
			t.Errorf("with the peer's advert read before the claim: state %s, %d answers (logged %v), want BACKUP and none\n%s",
				in.m.State(), answers, answeredLog, logs)
		}
		return
	}
	if in.m.State() != Master || answers != 1 || !answeredLog {
		t.Errorf("with no advert: state %s, %d answers (logged %v), want MASTER and one\n%s", in.m.State(), answers, answeredLog, logs)
	}
}
