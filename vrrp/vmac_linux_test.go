package vrrp

import (
	"bytes"
	"encoding/binary"
	"errors"
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
		lk, err := s.handles[i].LinkByName("vrrp.51")
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
	wait(func() bool { return onVMAC(0) }, "the VIP on a's vrrp.51")
	b.start(t)
	waitLog(t, b, "to=BACKUP")
	if err := dial(); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("with a as master, a connection to the VIP = %v, want refused by a", err)
	}
	if got := neighMAC(); !bytes.Equal(got, vmac) {
		lan, _ := s.handles[0].LinkByName("lan0")
		vm, _ := s.handles[0].LinkByName("vrrp.51")
		var dbg string
		_ = s.hosts[0].Do(func() error {
			for _, f := range []string{"all/arp_ignore", "lan0/arp_ignore", "lan0/arp_filter", "vrrp.51/arp_ignore"} {
				b, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + f)
				dbg += f + "=" + string(bytes.TrimSpace(b)) + " "
			}
			return nil
		})
		t.Fatalf("c resolved the VIP to %v, want the virtual MAC %s (a lan0 %s vmac %s; %s)", got, vmac, lan.Attrs().HardwareAddr, vm.Attrs().HardwareAddr, dbg)
	}
	t.Logf("a is master: c reaches the VIP at %s", vmac)

	a.stop(syscall.SIGTERM)
	wait(func() bool { return onVMAC(1) }, "the VIP on b's vrrp.51")
	wait(func() bool { return dial() == nil }, "a connection from c accepted by b")
	if got := neighMAC(); !bytes.Equal(got, vmac) {
		t.Fatalf("after the failover c has %v for the VIP, want the virtual MAC %s", got, vmac)
	}
	t.Logf("b is master: c reaches it at the same %s", vmac)
	if _, err := s.handles[0].LinkByName("vrrp.51"); err == nil {
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
// on vrrp.<vrid>) and IPv6 (00:00:5e:00:02:<vrid> on vrrp6.<vrid>), before
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
			vmac, vmacIf, family := virtualMAC(51, tc.v6), vmacName(51, tc.v6), netlink.FAMILY_V4
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
				lk, err := s.handles[i].LinkByName(vmacIf)
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
						t.Fatalf("node %d does not hold %s on %s alone after %v", i, v.vip(), vmacIf, limit)
					}
				}
			}
			// checkAdverts reads the Master's next adverts (priority prio)
			// and wants each from want; a Backup must send none.
			checkAdverts := func(who string, prio uint8, want net.HardwareAddr) {
				t.Helper()
				for len(adverts) > 0 {
					<-adverts // sent before the state the test looks at
				}
				timeout := time.After(limit)
				for n := 0; n < 5; {
					select {
					case a := <-adverts:
						if a.vrid != 51 {
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
