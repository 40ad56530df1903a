package vrrp

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

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
	v := vipSet{h: h, prefixes: []netip.Prefix{
		netip.MustParsePrefix("192.0.2.100/24"),
		netip.MustParsePrefix("2001:db8::100/64"),
	}}
	if err := v.add(link); err != nil {
		t.Fatal(err)
	}
	if err := v.add(link); err != nil {
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
	if err := v.remove(link); err != nil {
		t.Fatal(err)
	}
	if err := v.remove(link); err != nil {
		t.Fatalf("removing twice must be harmless: %v", err)
	}
	addrs, _ = h.AddrList(link, netlink.FAMILY_ALL)
	for _, a := range addrs {
		if p, _ := netip.ParsePrefix(a.IPNet.String()); v.owns(p.Addr()) {
			t.Errorf("VIP %s still on the link", a.IPNet)
		}
	}
}
