package vrrp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
)

// switched is a LAN of three hosts on a bridge in a "switch" namespace:
// a and b run halb, c observes.
type switched struct {
	swh     *netlink.Handle
	hosts   []*netnstest.NS
	handles []*netlink.Handle
	ports   []netlink.Link
	l       *lan // a and b, for the node helpers
}

func newSwitched(t testing.TB) *switched {
	t.Helper()
	sw := netnstest.New(t)
	swh := sw.Netlink(t)
	if err := swh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	br, _ := swh.LinkByName("br0")
	if err := swh.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	hosts := make([]*netnstest.NS, 3)
	handles := make([]*netlink.Handle, 3)
	ports := make([]netlink.Link, 3)
	for i := range hosts {
		hosts[i] = netnstest.New(t)
		handles[i] = hosts[i].Netlink(t)
		port := fmt.Sprintf("port%d", i)
		if err := swh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "lan0",
			PeerNamespace: netlink.NsFd(hosts[i].Handle())}); err != nil {
			t.Fatal(err)
		}
		p, _ := swh.LinkByName(port)
		ports[i] = p
		if err := swh.LinkSetMaster(p, br); err != nil {
			t.Fatal(err)
		}
		if err := swh.LinkSetUp(p); err != nil {
			t.Fatal(err)
		}
		lan, _ := handles[i].LinkByName("lan0")
		if err := handles[i].AddrAdd(lan, toAddr(netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/24", i+1)))); err != nil {
			t.Fatal(err)
		}
		if err := handles[i].LinkSetUp(lan); err != nil {
			t.Fatal(err)
		}
	}
	l := &lan{ns: [2]*netnstest.NS{hosts[0], hosts[1]}, h: [2]*netlink.Handle{handles[0], handles[1]},
		addr: [2]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}
	return &switched{swh: swh, hosts: hosts, handles: handles, ports: ports, l: l}
}

// A partition gives two Masters; when it heals exactly one remains within
// three advert intervals, and a third host's neighbour entry for the VIP
// ends on the winner's MAC.
//
// The LAN is a bridge in a "switch" namespace with a port for each of a, b
// and an observer c. Isolating a's and b's ports from each other (bridge
// port isolation) partitions the two nodes while both still reach c.
func TestSplitBrainHeals(t *testing.T) {
	s := newSwitched(t)
	swh, hosts, handles, ports, l := s.swh, s.hosts, s.handles, s.ports, s.l
	// c learns MACs from gratuitous ARP, as switches and routers do.
	if err := hosts[2].Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/lan0/arp_accept", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	mac := func(i int) net.HardwareAddr {
		lk, _ := handles[i].LinkByName("lan0")
		return lk.Attrs().HardwareAddr
	}
	macA, macB := mac(0), mac(1)
	lanC, _ := handles[2].LinkByName("lan0")
	waitNeigh := func(t *testing.T, who string, want net.HardwareAddr) {
		t.Helper()
		var last net.HardwareAddr
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(20 * time.Millisecond) {
			neighs, _ := handles[2].NeighList(lanC.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range neighs {
				if n.IP.Equal(net.IP(v.vip().AsSlice())) {
					last = n.HardwareAddr
				}
			}
			if bytes.Equal(last, want) {
				t.Logf("c's neighbour entry for %s is %s's MAC %s", v.vip(), who, want)
				return
			}
		}
		t.Fatalf("c's neighbour entry for %s is %v, want %s's MAC %s", v.vip(), last, who, want)
	}
	a := newNode(t, "a", hosts[0], v.config(l, 0, 150, true))
	b := newNode(t, "b", hosts[1], v.config(l, 1, 100, true))
	a.start(t)
	waitAddr(t, handles[0], v.vip(), true, 10*time.Second)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	isolate := func(on bool) {
		for _, p := range ports[:2] {
			if err := swh.LinkSetIsolated(p, on); err != nil {
				t.Fatal(err)
			}
		}
	}
	isolate(true)
	waitAddr(t, handles[1], v.vip(), true, 10*time.Second)
	if !hasAddr(handles[0], v.vip()) {
		t.Fatal("a gave the VIP up during the partition")
	}
	t.Log("partitioned: both nodes are MASTER")
	waitNeigh(t, "b", macB)

	isolate(false)
	took := waitAddr(t, handles[1], v.vip(), false, 10*time.Second)
	t.Logf("healed: b stepped down after %v (3 advert intervals = %v)", took.Round(time.Millisecond), 3*v.interval)
	if !hasAddr(handles[0], v.vip()) {
		t.Fatal("the winner a does not hold the VIP")
	}

	// c's neighbour entry for the VIP must end on a's MAC: a announced
	// again when it heard b.
	waitNeigh(t, "a", macA)
}
