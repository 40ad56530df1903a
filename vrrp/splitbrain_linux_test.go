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

// newTrunked is the LAN of newSwitched split over two switches joined by
// a trunk, a veth pair between their bridges: a is alone on one switch, b
// and the observer c share the other. Taking the trunk down is a partition
// made by a veth going down between the nodes, as a cable or inter-switch
// link fails, while a's and b's own links keep their carrier: a veth
// downed at either node would instead take that node's lan0 to
// NO-CARRIER, which is a Fault, not a partition.
func newTrunked(t testing.TB) (s *switched, trunk func(up bool)) {
	t.Helper()
	sws := [2]*netnstest.NS{netnstest.New(t), netnstest.New(t)}
	var swh [2]*netlink.Handle
	var br [2]netlink.Link
	for i, sw := range sws {
		swh[i] = sw.Netlink(t)
		if err := swh[i].LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
			t.Fatalf("add br0 to switch %d: %v", i, err)
		}
		var err error
		if br[i], err = swh[i].LinkByName("br0"); err != nil {
			t.Fatal(err)
		}
		if err := swh[i].LinkSetUp(br[i]); err != nil {
			t.Fatal(err)
		}
	}
	// plug gives the switch sw a port named port whose peer, called peer,
	// lives in the namespace at fd; the switch's end is enslaved and up.
	plug := func(sw int, port, peer string, fd netlink.NsFd) netlink.Link {
		if err := swh[sw].LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: peer,
			PeerNamespace: fd}); err != nil {
			t.Fatalf("add %s to switch %d: %v", port, sw, err)
		}
		p, err := swh[sw].LinkByName(port)
		if err != nil {
			t.Fatal(err)
		}
		if err := swh[sw].LinkSetMaster(p, br[sw]); err != nil {
			t.Fatal(err)
		}
		if err := swh[sw].LinkSetUp(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s = &switched{swh: swh[0], hosts: make([]*netnstest.NS, 3), handles: make([]*netlink.Handle, 3),
		ports: make([]netlink.Link, 3)}
	for i, sw := range []int{1, 0, 0} { // a on switch 1; b and c on switch 0
		s.hosts[i] = netnstest.New(t)
		s.handles[i] = s.hosts[i].Netlink(t)
		s.ports[i] = plug(sw, fmt.Sprintf("port%d", i), "lan0", netlink.NsFd(s.hosts[i].Handle()))
		lan, err := s.handles[i].LinkByName("lan0")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.handles[i].AddrAdd(lan, toAddr(netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/24", i+1)))); err != nil {
			t.Fatal(err)
		}
		if err := s.handles[i].LinkSetUp(lan); err != nil {
			t.Fatal(err)
		}
	}
	plug(0, "trunk0", "trunk1", netlink.NsFd(sws[1].Handle()))
	t1, err := swh[1].LinkByName("trunk1")
	if err != nil {
		t.Fatal(err)
	}
	if err := swh[1].LinkSetMaster(t1, br[1]); err != nil {
		t.Fatal(err)
	}
	if err := swh[1].LinkSetUp(t1); err != nil {
		t.Fatal(err)
	}
	s.l = &lan{ns: [2]*netnstest.NS{s.hosts[0], s.hosts[1]}, h: [2]*netlink.Handle{s.handles[0], s.handles[1]},
		addr: [2]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}
	trunk = func(up bool) {
		t.Helper()
		set := swh[0].LinkSetDown
		if up {
			set = swh[0].LinkSetUp
		}
		lk, err := swh[0].LinkByName("trunk0")
		if err == nil {
			err = set(lk)
		}
		if err != nil {
			t.Fatalf("trunk0 up=%v: %v", up, err)
		}
	}
	return s, trunk
}

// A partition gives two Masters; when it heals exactly one remains within
// three advert intervals, and a third host's neighbour entry for the VIP
// ends on the winner's MAC.
//
// Two models of the partition, both leaving every node's own link up (a
// node whose link goes down is in Fault and is no Master at all):
//   - isolated-ports: one bridge with a port for each of a, b and the
//     observer c; bridge port isolation cuts a from b while both still
//     reach c, so c sees both Masters announce.
//   - trunk-down: a on one switch, b and c on another, and the veth
//     between the switches goes down (newTrunked): the partition the issue
//     describes, a veth down between the nodes; c sees only b's side.
func TestSplitBrainHeals(t *testing.T) {
	t.Run("isolated-ports", func(t *testing.T) {
		s := newSwitched(t)
		healSplitBrain(t, s, func(cut bool) {
			for _, p := range s.ports[:2] {
				if err := s.swh.LinkSetIsolated(p, cut); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
	t.Run("trunk-down", func(t *testing.T) {
		s, trunk := newTrunked(t)
		healSplitBrain(t, s, func(cut bool) { trunk(!cut) })
	})
}

// healSplitBrain runs a (priority 150) and b (100) on s, partitions them
// with cut(true) and heals with cut(false). cut(false) must heal with its
// first system call: the clock starts when it returns.
func healSplitBrain(t *testing.T, s *switched, cut func(bool)) {
	hosts, handles, l := s.hosts, s.handles, s.l
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
	// After the heal the Masters' adverts cross in either order. When b
	// hears a first (mostly: b's next advert is up to an interval away)
	// it steps down without a word, a never hears it and does not
	// announce again, and only a's refresh brings c, which learnt b's MAC
	// in the partition, back to a. Without a refresh the test passed only
	// while a's second takeover burst (garp_master_delay) came after the
	// heal, and failed whenever b started a second late.
	const refresh = "      garp_master_refresh: 1s\n"
	a := newNode(t, "a", hosts[0], v.config(l, 0, 150, true)+refresh)
	b := newNode(t, "b", hosts[1], v.config(l, 1, 100, true)+refresh)
	a.start(t)
	waitAddr(t, handles[0], v.vip(), true, 10*time.Second)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	cut(true)
	waitAddr(t, handles[1], v.vip(), true, 10*time.Second)
	if !hasAddr(handles[0], v.vip()) {
		t.Fatal("a gave the VIP up during the partition")
	}
	t.Log("partitioned: both nodes are MASTER")
	waitNeigh(t, "b", macB)

	cut(false)
	// The step-down happened after the last poll that still found the VIP
	// on b began and before the first that did not ended; the difference
	// is the poll granularity (5 ms of sleep plus one netlink dump,
	// longer when the shared machine delays this goroutine), the only
	// slack the assertion allows. The bound is the issue's: b must hear
	// one of a's adverts, due every interval, and step down at once.
	healed := time.Now()
	var present, gone time.Duration
	for {
		before := time.Since(healed)
		if !hasAddr(handles[1], v.vip()) {
			gone = time.Since(healed)
			break
		}
		present = before
		if before > 10*time.Second {
			t.Fatalf("b still holds the VIP %v after the partition healed", before)
		}
		time.Sleep(5 * time.Millisecond)
	}
	bound := 3 * v.interval
	t.Logf("healed: b stepped down after %v..%v (3 advert intervals = %v)",
		present.Round(time.Millisecond), gone.Round(time.Millisecond), bound)
	if slack := gone - present; gone > bound+slack {
		t.Errorf("b stepped down %v after the partition healed, more than 3 advert intervals (%v) plus the poll granularity %v",
			gone, bound, slack)
	}
	if !hasAddr(handles[0], v.vip()) {
		t.Fatal("the winner a does not hold the VIP")
	}
	// Exactly one Master, and it stays so: neither node flaps back.
	for end := time.Now().Add(5 * v.interval); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if hasAddr(handles[1], v.vip()) || !hasAddr(handles[0], v.vip()) {
			t.Fatalf("after healing a holds the VIP = %v, b = %v; want a alone",
				hasAddr(handles[0], v.vip()), hasAddr(handles[1], v.vip()))
		}
	}

	// c's neighbour entry for the VIP must end on a's MAC: a announced
	// again when it heard b, or at its refresh.
	waitNeigh(t, "a", macA)
}
