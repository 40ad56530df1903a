package vrrp

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

func TestVIPSetAddRemove(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vrrp0"}, PeerName: "vrrp1"}); err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName("vrrp0")
	if err != nil {
		t.Fatal(err)
	}
	v := newVIPSet([]netip.Prefix{
		netip.MustParsePrefix("192.0.2.100/24"),
		netip.MustParsePrefix("2001:db8::100/64"),
	})
	// The vipSet acts in the calling thread's namespace.
	in := func(fn func() error) error { return ns.Do(fn) }
	if err := in(func() error { _, err := v.add(link, v.prefixes); return err }); err != nil {
		t.Fatal(err)
	}
	if err := in(func() error { _, err := v.add(link, v.prefixes); return err }); err != nil {
		t.Fatalf("adding twice must be harmless: %v", err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]int{}
	for _, a := range addrs {
		found[a.IPNet.String()] = a.Flags
	}
	if _, ok := found["192.0.2.100/24"]; !ok {
		t.Errorf("IPv4 VIP missing: %v", found)
	}
	if flags, ok := found["2001:db8::100/64"]; !ok || flags&0x02 /* IFA_F_NODAD */ == 0 {
		t.Errorf("IPv6 VIP missing or without NODAD: %v", found)
	}
	// Both carry halb's mark, which the kernel keeps.
	var listed []ifAddr
	if err := in(func() (err error) { listed, err = listAddrs(link.Attrs().Index); return err }); err != nil {
		t.Fatal(err)
	}
	for _, p := range v.prefixes {
		if e, ok := findAddr(listed, p.Addr()); !ok || e.proto != halbAddrProto {
			t.Errorf("%s listed as %+v (found %v), want proto %#x", p, e, ok, halbAddrProto)
		}
	}
	if v.protoKept != 1 {
		t.Errorf("protoKept = %d after an add on a kernel that keeps IFA_PROTO, want 1", v.protoKept)
	}
	if err := in(func() error { return v.remove(link) }); err != nil {
		t.Fatal(err)
	}
	if err := in(func() error { return v.remove(link) }); err != nil {
		t.Fatalf("removing twice must be harmless: %v", err)
	}
	addrs, _ = h.AddrList(link, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if p, _ := netip.ParsePrefix(a.IPNet.String()); v.owns(p.Addr()) {
			t.Errorf("VIP %s still on the link", a.IPNet)
		}
	}

	// Someone else's address equal to a VIP (here at another prefix
	// length) is not added over, is reported, and is never removed.
	other := netip.MustParsePrefix("192.0.2.100/32")
	if err := h.AddrAdd(link, toAddr(other)); err != nil {
		t.Fatal(err)
	}
	var foreign []netip.Prefix
	if err := in(func() (err error) { foreign, err = v.add(link, v.prefixes); return err }); err != nil {
		t.Fatal(err)
	}
	if len(foreign) != 1 || foreign[0] != v.prefixes[0] {
		t.Errorf("add reported %v as someone else's, want [%s]", foreign, v.prefixes[0])
	}
	if err := in(func() error { return v.remove(link) }); err != nil {
		t.Fatal(err)
	}
	addrs, _ = h.AddrList(link, netlink.FAMILY_ALL)
	found = map[string]int{}
	for _, a := range addrs {
		found[a.IPNet.String()] = a.Flags
	}
	if _, ok := found["192.0.2.100/32"]; !ok {
		t.Errorf("the address halb did not add was removed: %v", found)
	}
	if _, ok := found["192.0.2.100/24"]; ok {
		t.Errorf("the VIP was added beside someone else's equal address: %v", found)
	}
	if _, ok := found["2001:db8::100/64"]; ok {
		t.Errorf("halb's IPv6 VIP was not removed: %v", found)
	}
}

// toAddr is p as vishvananda/netlink takes it, for tests that put
// addresses of their own on links (IPv6 without DAD, as halb's VIPs).
func toAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// An address on the interface that equals a VIP and that halb did not add
// (the host's own address by mistake, or one an operator put there)
// survives every state: halb neither deletes it at start nor at BACKUP,
// FAULT or stop, and as Master serves it as it is. Before, halb deleted
// it at start. A VIP that halb added and left behind when it was killed
// carries halb's mark, and the next run does remove it.
func TestForeignVIPSurvives(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	vip := netip.PrefixFrom(v.vip(), 24)
	link := l.link(t, 0)
	if err := l.h[0].AddrAdd(link, toAddr(vip)); err != nil {
		t.Fatal(err)
	}
	limit := 10 * time.Second
	// still checks that a's address is there and still unmarked.
	still := func(when string) {
		t.Helper()
		var list []ifAddr
		if err := l.ns[0].Do(func() (err error) { list, err = listAddrs(link.Attrs().Index); return err }); err != nil {
			t.Fatal(err)
		}
		e, ok := findAddr(list, vip.Addr())
		if !ok {
			t.Fatalf("%s: the address %s that halb did not add is gone", when, vip)
		}
		if e.proto == halbAddrProto {
			t.Fatalf("%s: the address %s carries halb's mark: halb replaced it", when, vip)
		}
	}

	b := newNode(t, "b", l.ns[1], v.config(l, 1, 200, true))
	b.start(t)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 100, true))
	a.start(t)
	waitLog(t, a, "to=BACKUP")
	waitLog(t, a, "halb did not add it")
	time.Sleep(2 * v.masterDown(100)) // some adverts as Backup
	still("BACKUP")

	l.setUp(t, 0, false)
	waitLog(t, a, "to=FAULT")
	still("FAULT")
	l.setUp(t, 0, true)
	waitLogCount(t, a, "to=BACKUP", 2)
	still("BACKUP after FAULT")

	b.stop(syscall.SIGTERM)
	waitLog(t, a, "to=MASTER")
	waitLog(t, a, "not added by halb")
	still("MASTER")
	a.stop(syscall.SIGTERM)
	still("stop")
	t.Logf("the address %s that halb did not add stayed through BACKUP, FAULT, MASTER and stop", vip)

	// A VIP left by a halb that was killed is halb's, and goes.
	if err := l.h[0].AddrDel(link, toAddr(vip)); err != nil {
		t.Fatal(err)
	}
	a = newNode(t, "a2", l.ns[0], v.config(l, 0, 100, true))
	a.start(t)
	waitLog(t, a, "to=MASTER")
	waitAddr(t, l.h[0], v.vip(), true, limit)
	a.stop(syscall.SIGKILL)
	if !hasAddr(l.h[0], v.vip()) {
		t.Fatal("the VIP went with the killed halb: the next check proves nothing")
	}
	b = newNode(t, "b2", l.ns[1], v.config(l, 1, 200, true))
	b.start(t)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	a = newNode(t, "a3", l.ns[0], v.config(l, 0, 100, true))
	a.start(t)
	waitLog(t, a, "to=BACKUP")
	waitAddr(t, l.h[0], v.vip(), false, limit)
	t.Logf("the VIP a killed halb left behind was removed by the next run")
}

// The host's only address given as a VIP (the VRRP address owner's
// set-up, without unicast_src) stays, and is the advert source: the
// instance runs (Backup, then Master when the peer leaves) instead of
// waiting in Fault for an address of its own. Before, halb deleted the
// address at start.
func TestForeignVIPOnlyAddress(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	l.delAddr(t, 0)
	vip := netip.PrefixFrom(v.vip(), 24)
	if err := l.h[0].AddrAdd(l.link(t, 0), toAddr(vip)); err != nil {
		t.Fatal(err)
	}
	limit := 10 * time.Second
	b := newNode(t, "b", l.ns[1], v.config(l, 1, 200, true))
	b.start(t)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 100, true))
	a.start(t)
	waitLog(t, a, "to=BACKUP")
	time.Sleep(2 * v.masterDown(100))
	if log := a.log.String(); strings.Contains(log, "to=FAULT") || strings.Contains(log, "to=MASTER") {
		t.Fatalf("a left BACKUP while b is Master; log:\n%s", log)
	}
	if !hasAddr(l.h[0], v.vip()) {
		t.Fatal("the host's only address, equal to the VIP, is gone")
	}
	b.stop(syscall.SIGTERM)
	waitLog(t, a, "to=MASTER")
	a.stop(syscall.SIGTERM)
	if !hasAddr(l.h[0], v.vip()) {
		t.Fatal("the host's only address, equal to the VIP, went with halb's stop")
	}
}

// The Accept_Mode filter (v3, accept: false) leaves out a VIP that is the
// host's own address: it would drop the host's own traffic (ssh, here a
// ping) in every state. The address owner accepts whatever Accept_Mode
// says (RFC 5798 §6.4.3).
func TestAcceptFilterSparesHostAddress(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	l.delAddr(t, 0)
	if err := l.h[0].AddrAdd(l.link(t, 0), toAddr(netip.PrefixFrom(v.vip(), 24))); err != nil {
		t.Fatal(err)
	}
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 100, true))
	a.start(t)
	waitLog(t, a, "to=MASTER")
	waitLog(t, a, "accept_mode filter leaves out a vip that is the host's own address")
	if err := eventually(5*time.Second, func() error { return ping(l.ns[1], v.vip(), time.Second) }); err != nil {
		t.Fatalf("the host's own address %s, also a VIP, does not answer a ping with halb running: %v", v.vip(), err)
	}
}
