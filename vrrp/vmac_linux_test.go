package vrrp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
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
