package frrtest

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

// Link joins namespaces a and b with a veth pair, nameA in a and nameB in
// b, both up, and gives each end its addresses (ADDRESS/LENGTH). IPv6
// addresses are usable at once (no duplicate address detection), so that
// a session over them can start without waiting.
func Link(t testing.TB, a *netnstest.NS, nameA string, addrsA []netip.Prefix, b *netnstest.NS, nameB string, addrsB []netip.Prefix) {
	t.Helper()
	ha, hb := a.Netlink(t), b.Netlink(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(b.Handle())}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", nameA, nameB, err)
	}
	up(t, ha, nameA, addrsA)
	up(t, hb, nameB, addrsB)
}

func up(t testing.TB, h *netlink.Handle, name string, addrs []netip.Prefix) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	for _, p := range addrs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatalf("add %s to %s: %v", p, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("bring up %s: %v", name, err)
	}
}
