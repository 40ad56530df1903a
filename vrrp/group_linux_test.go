package vrrp

import (
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// Two instances on two links in one sync group: one of them failing on
// the master moves both VIPs to the other node, and its recovery moves
// both back.
func TestSyncGroup(t *testing.T) {
	l := newLAN(t, false)
	// A second link between the same two nodes.
	if err := l.h[0].LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan1"}, PeerName: "peer1",
		PeerNamespace: netlink.NsFd(l.ns[1].Handle())}); err != nil {
		t.Fatal(err)
	}
	peer, err := l.h[1].LinkByName("peer1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.h[1].LinkSetName(peer, "lan1"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		link, err := l.h[i].LinkByName("lan1")
		if err != nil {
			t.Fatal(err)
		}
		a := toAddr(netip.MustParsePrefix([]string{"198.51.100.1/24", "198.51.100.2/24"}[i]))
		if err := l.h[i].AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
		if err := l.h[i].LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	config := func(priority int) string {
		return `log: {level: debug}
vrrp:
  instances:
    - {name: OUT, interface: lan0, vrid: 51, version: 3, priority: ` + itoa(priority) + `, advert_interval: 100ms, virtual_ips: [192.0.2.100/24]}
    - {name: IN, interface: lan1, vrid: 52, version: 3, priority: ` + itoa(priority) + `, advert_interval: 100ms, virtual_ips: [198.51.100.100/24]}
  sync_groups:
    - {name: ROUTER, instances: [OUT, IN]}
`
	}
	a := newNode(t, "a", l.ns[0], config(150))
	b := newNode(t, "b", l.ns[1], config(100))
	out, in := netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("198.51.100.100")
	hasOn := func(i int, addr netip.Addr, link string) bool {
		lk, err := l.h[i].LinkByName(link)
		if err != nil {
			return false
		}
		list, _ := l.h[i].AddrList(lk, netlink.FAMILY_V4)
		for _, x := range list {
			if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == addr {
				return true
			}
		}
		return false
	}
	waitBoth := func(i int) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			if hasOn(i, out, "lan0") && hasOn(i, in, "lan1") && !hasOn(1-i, out, "lan0") && !hasOn(1-i, in, "lan1") {
				return time.Since(start)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("node %d does not hold both VIPs alone", i)
		return 0
	}

	a.start(t)
	b.start(t)
	waitBoth(0)

	// Only the inside instance fails on a (its own address goes: taking
	// the link down would take the carrier off b's end of the veth too);
	// the group moves both instances.
	lan1 := func() netlink.Link {
		lk, err := l.h[0].LinkByName("lan1")
		if err != nil {
			t.Fatal(err)
		}
		return lk
	}
	own := toAddr(netip.MustParsePrefix("198.51.100.1/24"))
	if err := l.h[0].AddrDel(lan1(), own); err != nil {
		t.Fatal(err)
	}
	took := waitBoth(1)
	t.Logf("inside address gone on a: both VIPs on b after %v", took.Round(time.Millisecond))
	waitLog(t, a, "sync group ROUTER: a member is in FAULT")

	if err := l.h[0].AddrAdd(lan1(), own); err != nil {
		t.Fatal(err)
	}
	took = waitBoth(0)
	t.Logf("address back: both VIPs on a after %v", took.Round(time.Millisecond))

	a.stop(syscall.SIGTERM)
	waitBoth(1)
}

func itoa(n int) string { return strconv.Itoa(n) }
