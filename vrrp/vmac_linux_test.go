package vrrp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

// With use_vmac the VIP lives on a macvlan with 00:00:5e:00:01:<vrid>, and
// a third host finds the VIP at that MAC whichever node is Master: before
// and after a failover, its neighbour entry does not change, yet its
// connections reach the new Master.
func TestVMAC(t *testing.T) {
	s := newSwitched(t)
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	// accept: the test tells the nodes apart by connecting to the VIP,
	// which a v3 Master without Accept_Mode filters.
	a := newNode(t, "a", s.hosts[0], v.config(s.l, 0, 150, true)+"      use_vmac: true\n      accept: true\n")
	b := newNode(t, "b", s.hosts[1], v.config(s.l, 1, 100, true)+"      use_vmac: true\n      accept: true\n")
	vmac := net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, 51}

	onVMAC := func(i int) bool {
		lk, err := s.handles[i].LinkByName(vmacOf(t, s.handles[i], false))
		if err != nil {
			return false
		}
		list, _ := s.handles[i].AddrList(lk, netlink.FAMILY_V4)
		for _, x := range list {
			if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == v.vip() {
				return true
			}
		}
		return false
	}
	wait := func(cond func() bool, what string) {
		t.Helper()
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
			if cond() {
				return
			}
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	// b listens on the VIP's port 8080; a does not: a connection that is
	// accepted has reached b, one that is refused has reached a.
	var ln net.Listener
	if err := s.hosts[1].Do(func() (err error) {
		ln, err = net.Listen("tcp4", ":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func() error {
		return s.hosts[2].Do(func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(v.vip(), 8080).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	neighMAC := func() net.HardwareAddr {
		lk, _ := s.handles[2].LinkByName("lan0")
		ns, _ := s.handles[2].NeighList(lk.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range ns {
			if n.IP.Equal(net.IP(v.vip().AsSlice())) {
				return n.HardwareAddr
			}
		}
		return nil
	}

	a.start(t)
	wait(func() bool { return onVMAC(0) }, "the VIP on a's VMAC")
	b.start(t)
	waitLog(t, b, "to=BACKUP")
	if err := dial(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("with a as master, a connection to the VIP = %v, want refused by a", err)
	}
	if got := neighMAC(); !bytes.Equal(got, vmac) {
		lan, _ := s.handles[0].LinkByName("lan0")
		vm, _ := s.handles[0].LinkByName(vmacOf(t, s.handles[0], false))
		var dbg string
		_ = s.hosts[0].Do(func() error {
			for _, f := range []string{"all/arp_ignore", "lan0/arp_ignore", "lan0/arp_filter", vmacOf(t, s.handles[0], false) + "/arp_ignore"} {
				b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + f)
				dbg += f + "=" + string(bytes.TrimSpace(b)) + " "
			}
			return nil
		})
		t.Fatalf("c resolved the VIP to %v, want the virtual MAC %s (a lan0 %s vmac %s; %s)", got, vmac, lan.Attrs().HardwareAddr, vm.Attrs().HardwareAddr, dbg)
	}
	t.Logf("a is master: c reaches the VIP at %s", vmac)

	a.stop(syscall.SIGTERM)
	wait(func() bool { return onVMAC(1) }, "the VIP on b's VMAC")
	wait(func() bool { return dial() == nil }, "a connection from c accepted by b")
	if got := neighMAC(); !bytes.Equal(got, vmac) {
		t.Fatalf("after the failover c has %v for the VIP, want the virtual MAC %s", got, vmac)
	}
	t.Logf("b is master: c reaches it at the same %s", vmac)
	if _, err := s.handles[0].LinkByName(vmacOf(t, s.handles[0], false)); err == nil {
		t.Error("a left its VMAC interface behind after SIGTERM")
	}
}

// advertSeen is one VRRP advert as a third host's interface saw it.
type advertSeen struct {
	src      net.HardwareAddr // the Ethernet source
	vrid     uint8
	priority uint8
}

// captureAdverts passes every VRRP advert (IPv4 or IPv6) arriving on
// lan0 in ns to the returned channel until the test ends; adverts that
// find the channel full are dropped.
func captureAdverts(t *testing.T, ns *netnstest.NS) <-chan advertSeen {
	t.Helper()
	var c *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("lan0")
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, 0x0003 /* ETH_P_ALL */, nil)
		return err
	}); err != nil {
		t.Fatalf("capture on lan0: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	out := make(chan advertSeen, 256)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if a, ok := parseAdvertFrame(buf[:n]); ok {
				select {
				case out <- a:
				default:
				}
			}
		}
	}()
	return out
}

// parseAdvertFrame finds the VRRP header in an Ethernet frame: IPv4 or
// IPv6 (without extension headers, as VRRP sends), protocol 112.
func parseAdvertFrame(f []byte) (advertSeen, bool) {
	if len(f) < 14 {
		return advertSeen{}, false
	}
	var vrrp []byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		ip := f[14:]
		if len(ip) < 20 || ip[9] != 112 {
			return advertSeen{}, false
		}
		vrrp = ip[int(ip[0]&0x0f)*4:]
	case 0x86dd:
		ip := f[14:]
		if len(ip) < 40 || ip[6] != 112 {
			return advertSeen{}, false
		}
		vrrp = ip[40:]
	default:
		return advertSeen{}, false
	}
	if len(vrrp) < 3 {
		return advertSeen{}, false
	}
	return advertSeen{src: slices.Clone(net.HardwareAddr(f[6:12])), vrid: vrrp[1], priority: vrrp[2]}, true
}

// With use_vmac the VIP lives on the macvlan whichever way the adverts
// leave: from the VMAC with the virtual MAC as their source (RFC 5798
// §7.3), or with vmac_xmit_base from the base interface with its own MAC.
// A third host checks both from the wire, for IPv4 (00:00:5e:00:01:<vrid>
// on vrrp.<vrid>.<index>) and IPv6 (00:00:5e:00:02:<vrid> on
// vrrp6.<vrid>.<index>), before
// and after a failover, and finds the VIP at the virtual MAC throughout.
func TestVMACAdvertSource(t *testing.T) {
	for _, tc := range []struct {
		name     string
		v6       bool
		xmitBase bool
	}{
		{"ipv4", false, false},
		{"ipv4-xmit-base", false, true},
		{"ipv6", true, false},
		{"ipv6-xmit-base", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSwitched(t)
			v := variant{tc.name, 3, tc.v6, false, 100 * time.Millisecond}
			vmac, family := virtualMAC(51, tc.v6), netlink.FAMILY_V4
			limit := 10 * time.Second
			if tc.v6 {
				family = netlink.FAMILY_V6
				// c pings the VIP from an address of its prefix; a and b
				// advertise from their link-local addresses, which must
				// have finished DAD (newSwitched does not turn it off).
				lan, _ := s.handles[2].LinkByName("lan0")
				if err := s.handles[2].AddrAdd(lan, toAddr(netip.MustParsePrefix("2001:db8::3/64"))); err != nil {
					t.Fatal(err)
				}
				for i := range 2 {
					waitLinkLocal(t, s.handles[i], limit)
				}
			}
			extra := "      use_vmac: true\n      accept: true\n"
			if tc.xmitBase {
				extra += "      vmac_xmit_base: true\n"
			}
			a := newNode(t, "a", s.hosts[0], v.config(s.l, 0, 150, true)+extra)
			b := newNode(t, "b", s.hosts[1], v.config(s.l, 1, 100, true)+extra)
			adverts := captureAdverts(t, s.hosts[2])
			base := func(i int) net.HardwareAddr {
				lk, err := s.handles[i].LinkByName("lan0")
				if err != nil {
					t.Fatal(err)
				}
				return lk.Attrs().HardwareAddr
			}
			// onVMAC reports whether node i holds the VIP on its VMAC, and
			// not on lan0.
			onVMAC := func(i int) bool {
				lk, err := s.handles[i].LinkByName(vmacOf(t, s.handles[i], tc.v6))
				if err != nil {
					return false
				}
				list, _ := s.handles[i].AddrList(lk, family)
				for _, x := range list {
					if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == v.vip() {
						return !hasAddr(s.handles[i], v.vip())
					}
				}
				return false
			}
			waitVMAC := func(i int) {
				t.Helper()
				for start := time.Now(); !onVMAC(i); time.Sleep(10 * time.Millisecond) {
					if time.Since(start) > limit {
						t.Fatalf("node %d does not hold %s on %s alone after %v", i, v.vip(), vmacOf(t, s.handles[i], tc.v6), limit)
					}
				}
			}
			// checkAdverts reads the Master's next adverts (priority prio)
			// and wants each from want; a Backup must send none. What was
			// sent before the state the test looks at is left out: what c
			// has read so far, and, as c's reader may lag on a loaded
			// machine, what comes before the Master's first advert (the
			// old Master's last ones and its priority 0).
			checkAdverts := func(who string, prio uint8, want net.HardwareAddr) {
				t.Helper()
				for len(adverts) > 0 {
					<-adverts
				}
				timeout := time.After(limit)
				for n := 0; n < 5; {
					select {
					case a := <-adverts:
						if a.vrid != 51 || n == 0 && a.priority != prio {
							continue
						}
						if a.priority != prio {
							t.Fatalf("advert of priority %d from %s while %s (priority %d) is Master", a.priority, a.src, who, prio)
						}
						if !bytes.Equal(a.src, want) {
							t.Fatalf("%s's advert left with source MAC %s, want %s", who, a.src, want)
						}
						n++
					case <-timeout:
						t.Fatalf("c saw no 5 adverts from %s within %v", who, limit)
					}
				}
				t.Logf("%s is Master: c sees its adverts from %s", who, want)
			}
			// checkNeigh has c reach the VIP and wants the virtual MAC in
			// its neighbour entry: the VMAC answered ARP / NS.
			checkNeigh := func(who string) {
				t.Helper()
				if err := eventually(limit, func() error { return ping(s.hosts[2], v.vip(), time.Second) }); err != nil {
					t.Fatalf("c cannot ping the VIP with %s as Master: %v", who, err)
				}
				lk, _ := s.handles[2].LinkByName("lan0")
				neighs, _ := s.handles[2].NeighList(lk.Attrs().Index, family)
				var got net.HardwareAddr
				for _, n := range neighs {
					if n.IP.Equal(net.IP(v.vip().AsSlice())) {
						got = n.HardwareAddr
					}
				}
				if !bytes.Equal(got, vmac) {
					t.Fatalf("with %s as Master c has %v for %s, want the virtual MAC %s", who, got, v.vip(), vmac)
				}
				t.Logf("%s is Master: c reaches %s at %s", who, v.vip(), vmac)
			}

			wantA, wantB := vmac, vmac
			if tc.xmitBase {
				wantA, wantB = base(0), base(1)
			}
			a.start(t)
			waitVMAC(0)
			b.start(t)
			waitLog(t, b, "to=BACKUP")
			// b must hear a's adverts, whichever MAC they carry, and stay
			// Backup: a private VMAC takes frames from its own MAC for
			// itself, so b reads them on its VMAC.
			time.Sleep(2 * v.masterDown(100))
			if onVMAC(1) || strings.Contains(b.log.String(), "to=MASTER") {
				t.Fatalf("b became Master beside a: it did not hear a's adverts")
			}
			checkAdverts("a", 150, wantA)
			checkNeigh("a")

			a.stop(syscall.SIGTERM)
			waitVMAC(1)
			checkAdverts("b", 100, wantB)
			checkNeigh("b")
		})
	}
}

// waitLinkLocal waits until lan0 behind h has an IPv6 link-local address
// that DAD no longer holds tentative.
func waitLinkLocal(t *testing.T, h *netlink.Handle, limit time.Duration) {
	t.Helper()
	lk, err := h.LinkByName("lan0")
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); time.Since(start) < limit; time.Sleep(20 * time.Millisecond) {
		list, _ := h.AddrList(lk, netlink.FAMILY_V6)
		for _, a := range list {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return
			}
		}
	}
	t.Fatalf("no usable IPv6 link-local address on lan0 after %v", limit)
}

// vmacOf is the name of VRID 51's VMAC on lan0 behind h.
func vmacOf(t testing.TB, h *netlink.Handle, v6 bool) string {
	t.Helper()
	lk, err := h.LinkByName("lan0")
	if err != nil {
		t.Fatal(err)
	}
	return vmacName(51, v6, lk.Attrs().Index)
}

// One VRID with use_vmac on two interfaces: each instance gets a VMAC of
// its own (named after its base interface), both become Master and keep
// their VMAC, and each stop removes only its own. Before, both wanted
// vrrp.51: the second deleted the first one's and stayed in Fault (file
// exists). A link that has a VMAC's name but was not made by halb is never
// removed: the instance that wants the name faults instead.
func TestVMACSameVRIDTwoInterfaces(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	for i, name := range []string{"lan0", "lan1"} {
		peer := fmt.Sprintf("peer%d", i)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
			t.Fatal(err)
		}
		if p, err := h.LinkByName(peer); err != nil || h.LinkSetUp(p) != nil {
			t.Fatalf("bring %s up: %v", peer, err)
		}
		lk, _ := h.LinkByName(name)
		if err := h.AddrAdd(lk, toAddr(netip.MustParsePrefix([]string{"192.0.2.1/24", "198.51.100.1/24"}[i]))); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(lk); err != nil {
			t.Fatal(err)
		}
	}
	index := func(name string) int {
		lk, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return lk.Attrs().Index
	}
	names := []string{vmacName(51, false, index("lan0")), vmacName(51, false, index("lan1"))}
	if names[0] == names[1] {
		t.Fatalf("both VMACs are named %s", names[0])
	}
	vips := []netip.Addr{netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("198.51.100.100")}
	cfg := `log: {level: debug}
vrrp:
  instances:
    - {name: VI_0, interface: lan0, vrid: 51, version: 3, priority: 150, advert_interval: 100ms, use_vmac: true, virtual_ips: [192.0.2.100/24]}
    - {name: VI_1, interface: lan1, vrid: 51, version: 3, priority: 150, advert_interval: 100ms, use_vmac: true, virtual_ips: [198.51.100.100/24]}
`
	// holds reports whether the VMAC named name is up with vip on it, a
	// macvlan on base with the virtual MAC.
	holds := func(name, base string, vip netip.Addr) bool {
		lk, err := h.LinkByName(name)
		if err != nil || lk.Attrs().ParentIndex != index(base) || !bytes.Equal(lk.Attrs().HardwareAddr, virtualMAC(51, false)) {
			return false
		}
		list, _ := h.AddrList(lk, netlink.FAMILY_V4)
		for _, a := range list {
			if x, ok := netip.AddrFromSlice(a.IP); ok && x.Unmap() == vip {
				return true
			}
		}
		return false
	}
	limit := 10 * time.Second
	n := newNode(t, "n", ns, cfg)
	n.start(t)
	for start := time.Now(); !holds(names[0], "lan0", vips[0]) || !holds(names[1], "lan1", vips[1]); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > limit {
			t.Fatalf("after %v: %s holds %s = %v, %s holds %s = %v; want both", limit,
				names[0], vips[0], holds(names[0], "lan0", vips[0]), names[1], vips[1], holds(names[1], "lan1", vips[1]))
		}
	}
	// Some adverts later, both still Master on their own VMAC.
	time.Sleep(time.Second)
	if !holds(names[0], "lan0", vips[0]) || !holds(names[1], "lan1", vips[1]) {
		t.Fatalf("a VMAC lost its VIP: %s %v, %s %v", names[0], holds(names[0], "lan0", vips[0]), names[1], holds(names[1], "lan1", vips[1]))
	}
	if log := n.log.String(); strings.Count(log, "to=MASTER") != 2 || strings.Contains(log, "to=FAULT") {
		t.Fatalf("want both instances Master and no fault; log:\n%s", log)
	}
	t.Logf("VRID 51 is Master on lan0 (%s) and lan1 (%s)", names[0], names[1])
	n.stop(syscall.SIGTERM)
	for _, name := range names {
		if _, err := h.LinkByName(name); err == nil {
			t.Errorf("%s left behind after SIGTERM", name)
		}
	}

	// Someone else's link under the name lan1's VMAC would have.
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: names[1]}}); err != nil {
		t.Fatal(err)
	}
	n = newNode(t, "n2", ns, cfg)
	n.start(t)
	waitLog(t, n, "not the VMAC halb makes")
	for start := time.Now(); !holds(names[0], "lan0", vips[0]); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > limit {
			t.Fatalf("VI_0 does not hold %s on %s beside the foreign %s", vips[0], names[0], names[1])
		}
	}
	n.stop(syscall.SIGTERM)
	lk, err := h.LinkByName(names[1])
	if err != nil {
		t.Fatalf("the bridge %s that halb did not make was removed", names[1])
	}
	if lk.Type() != "bridge" {
		t.Fatalf("%s is a %s now, want the bridge left as it was", names[1], lk.Type())
	}
	if _, err := h.LinkByName(names[0]); err == nil {
		t.Errorf("%s left behind after SIGTERM", names[0])
	}
}

// TestVMACName checks that names fit IFNAMSIZ and differ for every VRID,
// family and base index, up to the largest index.
func TestVMACName(t *testing.T) {
	seen := map[string]string{}
	for _, idx := range []int{1, 2, 99999, 100000, 999999, 1000000, 1 << 20, 1<<31 - 1} {
		for _, vrid := range []int{1, 51, 99, 255} {
			for _, v6 := range []bool{false, true} {
				name := vmacName(vrid, v6, idx)
				key := fmt.Sprintf("vrid %d v6 %v index %d", vrid, v6, idx)
				if len(name) > maxIfName || strings.ContainsAny(name, "/: ") {
					t.Errorf("%s: name %q is not a valid interface name", key, name)
				}
				if other, ok := seen[name]; ok {
					t.Errorf("%s and %s both get %q", key, other, name)
				}
				seen[name] = key
			}
		}
	}
	if got := vmacName(51, false, 2); got != "vrrp.51.2" {
		t.Errorf("vmacName(51, IPv4, 2) = %q, want vrrp.51.2", got)
	}
}

// A macvlan with the virtual MAC that halb did not make (keepalived's
// vrrp.51, or one an older halb left) keeps halb's VMAC down: the error
// names it, and it stays.
func TestVMACMACTaken(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	base, _ := h.LinkByName("lan0")
	if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "vrrp.51", ParentIndex: base.Attrs().Index,
		HardwareAddr: virtualMAC(51, false)}, Mode: netlink.MACVLAN_MODE_PRIVATE}); err != nil {
		t.Fatal(err)
	}
	old, _ := h.LinkByName("vrrp.51")
	for _, l := range []netlink.Link{base, old} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	err := ns.Do(func() error {
		_, err := ensureVMAC(base, 51, false)
		return err
	})
	t.Logf("ensureVMAC beside vrrp.51: %v", err)
	if err == nil || !strings.Contains(err.Error(), "vrrp.51 on lan0 already has MAC") {
		t.Errorf("ensureVMAC beside another macvlan with the MAC: %v, want an error naming vrrp.51", err)
	}
	if _, err := h.LinkByName("vrrp.51"); err != nil {
		t.Errorf("the macvlan halb did not make is gone: %v", err)
	}
	// The failed call leaves nothing of its own: no VMAC named as halb
	// names them, and the base interface's settings as they were.
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; n == vmacName(51, false, base.Attrs().Index) || l.Attrs().Alias == vmacAlias {
			t.Errorf("after the failure %s (alias %q) is left on the host", n, l.Attrs().Alias)
		}
	}
	if got := baseSettings(t, ns, "lan0"); got != "0 0 0" {
		t.Errorf("lan0's arp_ignore arp_filter arp_announce after the failure: %s, want 0 0 0 as before", got)
	}
}

// baseSettings reads ifname's arp_ignore, arp_filter and arp_announce in ns.
func baseSettings(t *testing.T, ns *netnstest.NS, ifname string) string {
	t.Helper()
	var vals []string
	err := ns.Do(func() error {
		for _, k := range []string{"arp_ignore", "arp_filter", "arp_announce"} {
			b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + ifname + "/" + k)
			if err != nil {
				return err
			}
			vals = append(vals, strings.TrimSpace(string(b)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(vals, " ")
}

// The base interface's ARP settings halb changes for its VMACs are put
// back when the last VMAC on it goes (as keepalived does), and a setting
// someone changed in between is theirs and stays.
func TestVMACBaseSettingsRestored(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	base, _ := h.LinkByName("lan0")
	if err := h.LinkSetUp(base); err != nil {
		t.Fatal(err)
	}
	idx := base.Attrs().Index
	ensure := func(vrid int, v6 bool) {
		t.Helper()
		if err := ns.Do(func() error { _, err := ensureVMAC(base, vrid, v6); return err }); err != nil {
			t.Fatalf("ensureVMAC %d: %v", vrid, err)
		}
	}
	remove := func(vrid int, v6 bool) {
		t.Helper()
		if err := ns.Do(func() error { return removeVMAC(vrid, v6, idx) }); err != nil {
			t.Fatalf("removeVMAC %d: %v", vrid, err)
		}
	}
	if got := baseSettings(t, ns, "lan0"); got != "0 0 0" {
		t.Fatalf("lan0 starts with %s, want 0 0 0", got)
	}
	ensure(51, false)
	ensure(51, false) // found again, as at each netlink event
	ensure(52, true)
	if got := baseSettings(t, ns, "lan0"); got != "1 1 2" {
		t.Errorf("lan0 with two VMACs: %s, want 1 1 2", got)
	}
	remove(51, false)
	if got := baseSettings(t, ns, "lan0"); got != "1 1 2" {
		t.Errorf("lan0 with one VMAC left: %s, want 1 1 2 until the last goes", got)
	}
	remove(52, true)
	if got := baseSettings(t, ns, "lan0"); got != "0 0 0" {
		t.Errorf("lan0 with its VMACs gone: %s, want 0 0 0 as before", got)
	}

	// arp_filter changed by the user while halb's VMAC is there: theirs.
	ensure(53, false)
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lan0/arp_filter", []byte("0"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	remove(53, false)
	if got := baseSettings(t, ns, "lan0"); got != "0 0 0" {
		t.Errorf("lan0 after a VMAC whose arp_filter the user reset: %s, want 0 0 0", got)
	}
	if err := ns.Do(func() error {
		for _, k := range []string{"arp_ignore", "arp_announce"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/lan0/"+k, []byte("3"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ensure(54, false)
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lan0/arp_announce", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	remove(54, false)
	if got := baseSettings(t, ns, "lan0"); got != "3 0 1" {
		t.Errorf("lan0 set to 3 0 3, halb's VMAC, the user's arp_announce 1, VMAC gone: %s, want 3 0 1", got)
	}
}
