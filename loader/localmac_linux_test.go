package loader

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/service"
)

// TestSetLocalMACs covers the writer of halb_local_macs: an interface's set
// is replaced whole, other interfaces' sets stay, and what is not an
// Ethernet address or an interface is refused.
func TestSetLocalMACs(t *testing.T) {
	tb := newTestbed(t, Options{})
	lb := tb.lb
	macs := func(ifindex int) []string {
		t.Helper()
		got, err := lb.localMACList(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range got {
			out = append(out, m.String())
		}
		slices.Sort(out)
		return out
	}
	if err := lb.setLocalMACs(tb.halb1, []LocalMAC{{MAC: halb1MAC, Via: tb.halb1}, {MAC: otherVMAC, Via: 77}}); err != nil {
		t.Fatal(err)
	}
	if err := lb.setLocalMACs(tb.halb1, []LocalMAC{{MAC: halb2MAC, Via: tb.halb1}, {MAC: otherVMAC, Via: 78}}); err != nil {
		t.Fatal(err)
	}
	want := []string{LocalMAC{MAC: otherVMAC, Via: 78}.String(), LocalMAC{MAC: halb2MAC, Via: tb.halb1}.String()}
	slices.Sort(want)
	if got := macs(tb.halb1); !slices.Equal(got, want) {
		t.Errorf("halb1's macs %v, want %v", got, want)
	}
	if got := macs(tb.halb0); len(got) != len(testLocalMACs(tb.halb0)) {
		t.Errorf("halb0's macs %v changed with halb1's", got)
	}
	if err := lb.setLocalMACs(tb.halb1, nil); err != nil {
		t.Fatal(err)
	}
	if got := macs(tb.halb1); len(got) != 0 {
		t.Errorf("halb1's macs %v after setting none", got)
	}
	for _, c := range []struct {
		ifindex int
		macs    []LocalMAC
	}{
		{0, []LocalMAC{{MAC: halb1MAC}}},
		{tb.halb1, []LocalMAC{{MAC: halb1MAC[:4]}}},
		{tb.halb1, []LocalMAC{{}}},
	} {
		if err := lb.setLocalMACs(c.ifindex, c.macs); err == nil {
			t.Errorf("setLocalMACs(%d, %v) succeeded", c.ifindex, c.macs)
		}
	}
}

// TestDatapathLocalMACs sends real frames from the backends' side of the
// link into the balancer's attached program: only frames to halb0's own
// MAC, or to the VMAC of a VRRP instance while it holds its VIPs there,
// reach the backend; a broadcast SYN to the VIP, another host's frame, and
// a Backup's VMAC (up, but without VIPs) go to the kernel. The Datapath
// follows a VMAC that appears, gains and loses its VIPs, VLANs, VMACs on
// them and a bridge coming and going, and halb0's MAC changing.
func TestDatapathLocalMACs(t *testing.T) {
	b := newDPBench(t)
	// Generic XDP: its XDP_TX into a veth needs nothing on the peer.
	b.cfg.XDPMode = "generic"
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1))}); err != nil {
		t.Fatal(err)
	}
	id := backendOf(waitLive(t, dp, web, 1), be11).ID
	h := b.lb.Netlink(t)
	halb0, err := h.LinkByName("halb0")
	if err != nil {
		t.Fatal(err)
	}

	port := uint16(42000)
	send := func(dst net.HardwareAddr) {
		t.Helper()
		port++
		frame := packet{src: ap(client4, port), dst: ap(web.VIP, web.Port)}.frame(t, routerMAC, dst)
		halbtest.SendFrame(t, b.peers, "halb0p", frame)
	}
	// expect waits for the backend's and the other-host counters to reach
	// forwarded and other; a frame the program has not seen yet leaves
	// both short.
	forwarded, other := uint64(0), uint64(0)
	expect := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st, err := dp.lb.backendStats(id)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := dp.lb.events()
			if err != nil {
				t.Fatal(err)
			}
			if st.Packets == forwarded && ev[EventOtherHost] == other {
				return
			}
			if st.Packets > forwarded || ev[EventOtherHost] > other || time.Now().After(deadline) {
				t.Fatalf("%s: backend got %d frames and %d went to the kernel as another host's, want %d and %d",
					what, st.Packets, ev[EventOtherHost], forwarded, other)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// waitMACs waits until the Datapath balances frames to want on halb0.
	waitMACs := func(what string, want ...net.HardwareAddr) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err := dp.lb.localMACList(halb0.Attrs().Index)
			if err != nil {
				t.Fatal(err)
			}
			var have []string
			for _, m := range got {
				have = append(have, m.MAC.String())
			}
			var wanted []string
			for _, m := range want {
				wanted = append(wanted, m.String())
			}
			slices.Sort(have)
			slices.Sort(wanted)
			if slices.Equal(have, wanted) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: halb_local_macs holds %v for halb0, want %v", what, have, wanted)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	send(layers2Broadcast)
	other++
	expect("a broadcast SYN to the VIP")
	send(net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x12})
	other++
	expect("a multicast frame")
	send(routerMAC)
	other++
	expect("another host's frame")
	send(halb0MAC)
	forwarded++
	expect("a frame to halb0's MAC")

	// A bridge halb0 joins: the node's addresses may sit on it.
	brMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x40}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", HardwareAddr: brMAC}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("add bridge: %v", err)
	}
	if err := h.LinkSetMaster(halb0, br); err != nil {
		t.Fatal(err)
	}
	waitMACs("halb0 in a bridge", halb0MAC, brMAC)
	if err := h.LinkSetNoMaster(halb0); err != nil {
		t.Fatal(err)
	}
	waitMACs("halb0 out of the bridge", halb0MAC)

	// A VMAC as a Backup has it: up, no VIPs.
	vmac := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: "vrrp.51", ParentIndex: halb0.Attrs().Index, HardwareAddr: testVMAC},
		Mode:      netlink.MACVLAN_MODE_PRIVATE,
	}
	if err := h.LinkAdd(vmac); err != nil {
		t.Fatalf("add VMAC: %v", err)
	}
	up(t, h, "vrrp.51")
	time.Sleep(100 * time.Millisecond) // time to (wrongly) take it
	waitMACs("a Backup's VMAC", halb0MAC)
	send(testVMAC)
	other++
	expect("a frame to a Backup's VMAC")

	// Master: the VIP on the VMAC.
	vip := &netlink.Addr{IPNet: &net.IPNet{IP: web.VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrAdd(vmac, vip); err != nil {
		t.Fatal(err)
	}
	waitMACs("the Master's VMAC", halb0MAC, testVMAC)
	send(testVMAC)
	forwarded++
	expect("a frame to the Master's VMAC")

	// Backup again.
	if err := h.AddrDel(vmac, vip); err != nil {
		t.Fatal(err)
	}
	waitMACs("the VMAC after its VIP left", halb0MAC)
	send(testVMAC)
	other++
	expect("a frame to the VMAC after its VIP left")

	// A macvlan that is no VMAC is another host's (a container's).
	container := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: "mv0", ParentIndex: halb0.Attrs().Index, HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x31}},
		Mode:      netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := h.LinkAdd(container); err != nil {
		t.Fatalf("add macvlan: %v", err)
	}
	up(t, h, "mv0", "192.0.2.99/24")
	// A VLAN on halb0 with a MAC of its own, and a VMAC on the VLAN,
	// where the kernel has VLANs (8021q).
	vlanMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x30}
	vlan := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "halb0.100", ParentIndex: halb0.Attrs().Index, HardwareAddr: vlanMAC}, VlanId: 100}
	switch err := h.LinkAdd(vlan); {
	case errors.Is(err, unix.EOPNOTSUPP):
		t.Logf("no VLANs in this kernel: %v", err)
	case err != nil:
		t.Fatalf("add VLAN: %v", err)
	default:
		up(t, h, "halb0.100")
		waitMACs("a VLAN on halb0", halb0MAC, vlanMAC)
		vlanVMAC := net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x02, 52}
		onVLAN := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: "vrrp6.52", ParentIndex: vlan.Attrs().Index, HardwareAddr: vlanVMAC},
			Mode:      netlink.MACVLAN_MODE_PRIVATE,
		}
		if err := h.LinkAdd(onVLAN); err != nil {
			t.Fatalf("add VMAC on the VLAN: %v", err)
		}
		up(t, h, "vrrp6.52", "2001:db8:100::10/128")
		waitMACs("a held VMAC on a VLAN on halb0", halb0MAC, vlanMAC, vlanVMAC)
		if err := h.LinkDel(vlan); err != nil {
			t.Fatal(err)
		}
		waitMACs("the VLAN and its VMAC gone", halb0MAC)
	}

	// halb0's MAC changes: frames to the old one are another host's.
	newMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x20}
	if err := h.LinkSetHardwareAddr(halb0, newMAC); err != nil {
		t.Fatal(err)
	}
	waitMACs("halb0's new MAC", newMAC)
	send(halb0MAC)
	other++
	expect("a frame to halb0's old MAC")
	send(newMAC)
	forwarded++
	expect("a frame to halb0's new MAC")
}

var layers2Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// TestLocalMACsFrom is which MACs make a frame the node's, from a made-up
// list of interfaces: an interface's own, its bridge's or bond's, a
// VLAN's on it (on that VLAN), and VMACs whose VIPs the node holds, on it
// or on such a VLAN (on that VLAN); not a Backup's VMAC, a container's macvlan, a veth's peer or
// another bridge port. A bond's ports take the bond's MACs.
func TestLocalMACsFrom(t *testing.T) {
	mac := func(last byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, 0, last} }
	vmac := func(v6 byte, vrid byte) net.HardwareAddr { return net.HardwareAddr{0, 0, 0x5e, 0, v6, vrid} }
	attrs := func(index int, name string, m net.HardwareAddr, parent, master int) netlink.LinkAttrs {
		return netlink.LinkAttrs{Index: index, Name: name, HardwareAddr: m, ParentIndex: parent, MasterIndex: master}
	}
	links := []netlink.Link{
		&netlink.Device{LinkAttrs: attrs(1, "lo", make(net.HardwareAddr, 6), 0, 0)},
		&netlink.Device{LinkAttrs: attrs(2, "eth0", mac(2), 0, 0)},
		&netlink.Vlan{LinkAttrs: attrs(3, "eth0.100", mac(3), 2, 0), VlanId: 100},
		&netlink.Macvlan{LinkAttrs: attrs(4, "vrrp.51", vmac(1, 51), 2, 0)},
		&netlink.Macvlan{LinkAttrs: attrs(5, "vrrp.52", vmac(1, 52), 2, 0)},
		&netlink.Macvlan{LinkAttrs: attrs(6, "mv0", mac(6), 2, 0)},
		&netlink.Macvlan{LinkAttrs: attrs(7, "vrrp6.53", vmac(2, 53), 3, 0)},
		&netlink.Veth{LinkAttrs: attrs(8, "veth0", mac(8), 2, 0)},
		&netlink.Bridge{LinkAttrs: attrs(9, "br0", mac(9), 0, 0)},
		&netlink.Device{LinkAttrs: attrs(10, "eth1", mac(10), 0, 9)},
		&netlink.Device{LinkAttrs: attrs(16, "eth2", mac(16), 0, 9)},
		&netlink.Bond{LinkAttrs: attrs(11, "bond0", mac(11), 0, 0)},
		&netlink.Device{LinkAttrs: attrs(12, "eth3", mac(11), 0, 11)},
		&netlink.Device{LinkAttrs: attrs(13, "eth4", mac(11), 0, 11)},
		&netlink.Vlan{LinkAttrs: attrs(14, "mv0.7", mac(14), 6, 0), VlanId: 7},
		&netlink.Macvlan{LinkAttrs: attrs(15, "vrrp.54", vmac(1, 54), 2, 0)},
	}
	held := map[string]bool{"vrrp.51": true, "vrrp6.53": true}
	holds := func(l netlink.Link) (bool, error) { return held[l.Attrs().Name], nil }
	for _, c := range []struct {
		ifindex int
		macs    []LocalMAC
		ports   []int
	}{
		// A VLAN's MAC, and a VMAC's on the VLAN, are the node's on
		// that VLAN only.
		{2, []LocalMAC{{mac(2), 2, 0}, {mac(3), 3, 100}, {vmac(1, 51), 4, 0}, {vmac(2, 53), 7, 100}}, nil},
		{10, []LocalMAC{{mac(9), 9, 0}, {mac(10), 10, 0}}, nil},
		{11, []LocalMAC{{mac(11), 11, 0}}, []int{12, 13}},
		{4, []LocalMAC{{vmac(1, 51), 4, 0}}, nil}, // attached to a VMAC the node holds
		{15, nil, nil}, // to one it does not
	} {
		macs, ports, _, err := localMACsFrom(links, c.ifindex, holds)
		if err != nil {
			t.Fatalf("ifindex %d: %v", c.ifindex, err)
		}
		if !sameMACs(macs, c.macs) || !slices.Equal(ports, c.ports) {
			t.Errorf("ifindex %d: macs %v, ports %v; want %v, %v", c.ifindex, macs, ports, c.macs, c.ports)
		}
	}
	if _, _, _, err := localMACsFrom(links, 99, holds); err == nil {
		t.Error("an interface that is not there: no error")
	}
}

// TestLocalMACCache: each CPU remembers the last MAC it found in
// halb_local_macs (halb_mac_cache); a MAC that leaves the map must leave
// the cache with it, or a CPU would go on balancing frames to an old MAC
// or to a VMAC the node gave up. Both runs are on one CPU, so the second
// meets what the first cached.
func TestLocalMACCache(t *testing.T) { forPrograms(t, testLocalMACCache) }

func testLocalMACCache(t *testing.T, prog string) {
	tb := newTestbed(t, Options{}).on(prog)
	tb.backend(t, 1, "198.51.100.11", tb.halb0)
	tb.service(t, service.Key{VIP: vip4, Port: 80, Proto: service.TCP}, Service{ID: 1, Forward: ForwardDR})
	tb.table(t, 1, 1)
	frame := packet{src: ap(client4, 40000), dst: ap(vip4, 80)}.frame(t, routerMAC, testVMAC)

	var actions []uint32
	err := tb.ns.Do(func() error {
		var one unix.CPUSet
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		run := func() error {
			p, opts := tb.lb.xdpProgram(), &ebpf.RunOptions{
				Data: frame, DataOut: make([]byte, len(frame)+256),
				Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(tb.halb0)},
			}
			if tb.tc {
				p, opts.Context = tb.lb.tcProgram(), skbCtx{IngressIfindex: uint32(tb.halb0), Ifindex: uint32(tb.halb0)}
			}
			ret, err := p.Run(opts)
			actions = append(actions, ret)
			return err
		}
		if err := run(); err != nil {
			return err
		}
		// The node gives the VMAC up.
		if err := tb.lb.setLocalMACs(tb.halb0, []LocalMAC{{MAC: halb0MAC, Via: tb.halb0}}); err != nil {
			return err
		}
		return run()
	})
	if err != nil {
		t.Fatal(err)
	}
	pass, forward := uint32(xdpPass), uint32(xdpTX)
	if tb.tc {
		pass, forward = tcActUnspec, tcActRedirect
	}
	if len(actions) != 2 || actions[0] != forward || actions[1] != pass {
		t.Errorf("verdicts %v, want %d while the VMAC is held, then %d", actions, forward, pass)
	}
}
