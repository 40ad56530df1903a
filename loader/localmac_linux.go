package loader

// A frame is this node's to balance only when it is addressed to it: to the
// MAC of the interface it arrives on (or of its bridge, its bond, a VLAN on
// it), or to a VRRP virtual MAC (RFC 5798 §7.3) that the node holds there
// (use_vmac); localMACsOf says which. A broadcast, a multicast or a
// unicast frame that a switch floods reaches every node on the link, and
// balanced by each, one SYN would reach a backend once through the Master
// and once through the Backup. The program reads the MACs from
// halb_local_macs; this file keeps that map: kernelLB.setLocalMACs writes it,
// and the Datapath fills it for an interface before its program runs
// there, then follows netlink link and address events to keep it true.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// LocalMAC is a destination MAC that makes a frame this node's.
type LocalMAC struct {
	MAC net.HardwareAddr
	// Via is the interface that holds the MAC: the one the frame arrives
	// on, or its VMAC child. The program does not read it; bpftool
	// readers do.
	Via int
	// VLAN is the VLAN id the frame must be tagged with, 0 for an
	// untagged frame: the MAC of a VLAN interface is the host's only on
	// that VLAN.
	VLAN uint16
}

func (m LocalMAC) String() string {
	if m.VLAN != 0 {
		return fmt.Sprintf("%s vlan %d via ifindex %d", m.MAC, m.VLAN, m.Via)
	}
	return fmt.Sprintf("%s via ifindex %d", m.MAC, m.Via)
}

// setLocalMACs makes macs the destination MACs that make a frame arriving on
// ifindex this node's: the program balances (or drops, when malformed)
// frames to these and passes every other to the kernel untouched. An
// interface without any passes everything. The new MACs go in before the
// old ones leave, so that a MAC in both sets is never missing.
func (lb *kernelLB) setLocalMACs(ifindex int, macs []LocalMAC) error {
	if ifindex <= 0 {
		return fmt.Errorf("local macs: ifindex %d is not an interface", ifindex)
	}
	want := map[halbLocalMac]halbLocalMacVia{}
	for _, m := range macs {
		if len(m.MAC) != 6 {
			return fmt.Errorf("local macs of ifindex %d: %q is not a 6-byte Ethernet address", ifindex, m.MAC)
		}
		if m.VLAN > 4094 {
			return fmt.Errorf("local macs of ifindex %d: vlan %d is not a VLAN id (1-4094)", ifindex, m.VLAN)
		}
		k := halbLocalMac{Ifindex: uint32(ifindex), Vlan: m.VLAN}
		copy(k.Mac[:], m.MAC)
		want[k] = halbLocalMacVia{Ifindex: uint32(m.Via)}
	}

	lb.macMu.Lock()
	defer lb.macMu.Unlock()
	have, err := lb.localMACs(ifindex)
	if err != nil {
		return err
	}
	for k, v := range want {
		if old, ok := have[k]; ok && old == v {
			continue
		}
		if err := lb.objs.HalbLocalMacs.Put(&k, &v); err != nil {
			return fmt.Errorf("write %s to %s: %w", net.HardwareAddr(k.Mac[:]), halbMapHalbLocalMacs, err)
		}
	}
	deleted := false
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := lb.objs.HalbLocalMacs.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s from %s: %w", net.HardwareAddr(k.Mac[:]), halbMapHalbLocalMacs, err)
		}
		deleted = true
	}
	if !deleted {
		return nil
	}
	// Each CPU caches the last MAC it found (halb_mac_cache) until
	// the generation moves: a MAC that left must not stay there. One that
	// came needs no bump: the cache only ever says yes.
	return bumpGen(lb.objs.HalbLocalMacsGen, halbVarHalbLocalMacsGen)
}

// localMACList reads the MACs halb_local_macs holds for ifindex, in no
// particular order.
func (lb *kernelLB) localMACList(ifindex int) ([]LocalMAC, error) {
	lb.macMu.Lock()
	defer lb.macMu.Unlock()
	have, err := lb.localMACs(ifindex)
	if err != nil {
		return nil, err
	}
	out := make([]LocalMAC, 0, len(have))
	for k, v := range have {
		out = append(out, LocalMAC{MAC: net.HardwareAddr(k.Mac[:]), Via: int(v.Ifindex), VLAN: k.Vlan})
	}
	return out, nil
}

// localMACs reads ifindex's entries. lb.macMu is held.
func (lb *kernelLB) localMACs(ifindex int) (map[halbLocalMac]halbLocalMacVia, error) {
	have := map[halbLocalMac]halbLocalMacVia{}
	var (
		k halbLocalMac
		v halbLocalMacVia
	)
	it := lb.objs.HalbLocalMacs.Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex == uint32(ifindex) {
			have[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", halbMapHalbLocalMacs, err)
	}
	return have, nil
}

// isVMAC tells a VRRP virtual router MAC, 00-00-5E-00-01-{VRID} (IPv4) or
// 00-00-5E-00-02-{VRID} (IPv6), RFC 5798 §7.3.
func isVMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0] == 0 && mac[1] == 0 && mac[2] == 0x5e && mac[3] == 0 &&
		(mac[4] == 1 || mac[4] == 2)
}

// isVMACLink tells whether l is a VRRP VMAC: a macvlan with a virtual
// router MAC, as use_vmac makes it (halb's and keepalived's alike).
func isVMACLink(l netlink.Link) bool {
	return l.Type() == "macvlan" && isVMAC(l.Attrs().HardwareAddr)
}

// holdsVIP tells whether a VMAC is its node's now: up, and holding an
// address other than a link-local one. Being up is not enough: a Backup
// keeps its VMAC up to read the Master's adverts there, and only the
// Master holds the VIPs on it. A Backup that balanced frames to the VMAC
// would balance every one a switch floods to both nodes.
func holdsVIP(h *netlink.Handle, l netlink.Link) (bool, error) {
	if l.Attrs().Flags&net.FlagUp == 0 {
		return false, nil
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && !ip.Unmap().IsLinkLocalUnicast() {
			return true, nil
		}
	}
	return false, nil
}

// maxStack bounds the walks up and down a stack of interfaces.
const maxStack = 8

// localMACsOf lists the MACs that make a frame arriving on ifindex this
// node's, and the interfaces whose link and address events can change the
// list. A frame is the node's when it is addressed to
//   - the interface, or the bridge or bond it is a port of (and so on up):
//     the node's addresses may sit on any of these;
//   - a VLAN interface on one of those: the program reads a VLAN tag, and
//     a VLAN interface may have a MAC of its own;
//   - a VRRP VMAC on one of those or on such a VLAN, while the node holds
//     its VIPs there (holdsVIP). An interface above that is itself a VMAC
//     counts only while held, too.
//
// Any other interface's MAC is another host's as far as halb is
// concerned: the other ports of a bridge, a container's macvlan, a veth's
// peer.
//
// It also returns the interfaces whose frames carry ifindex's as their
// ingress: the ports of a bond, where XDP in the driver runs the bond's
// program with the port's ifindex. They take the same MACs.
func localMACsOf(h *netlink.Handle, ifindex int) (macs []LocalMAC, ports, watch []int, err error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("list interfaces: %w", err)
	}
	return localMACsFrom(links, ifindex, func(l netlink.Link) (bool, error) { return holdsVIP(h, l) })
}

// localMACsFrom is localMACsOf over the interfaces in links; held tells
// whether the node holds a VMAC's VIPs.
func localMACsFrom(links []netlink.Link, ifindex int, held func(netlink.Link) (bool, error)) (macs []LocalMAC, ports, watch []int, err error) {
	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	if byIndex[ifindex] == nil {
		return nil, nil, nil, fmt.Errorf("interface %d: %w", ifindex, errors.New("not found"))
	}
	// The interface and its masters.
	base := map[int]bool{}
	for i, n := ifindex, 0; i != 0 && byIndex[i] != nil && !base[i] && n < maxStack; n++ {
		base[i] = true
		i = byIndex[i].Attrs().MasterIndex
	}
	// stacked tells whether l is a VLAN or a VMAC on a base, directly or
	// through VLANs.
	var stacked func(l netlink.Link, depth int) bool
	stacked = func(l netlink.Link, depth int) bool {
		if depth >= maxStack || (l.Type() != "vlan" && !isVMACLink(l)) {
			return false
		}
		p := l.Attrs().ParentIndex
		if base[p] {
			return true
		}
		parent := byIndex[p]
		return parent != nil && parent.Type() == "vlan" && stacked(parent, depth+1)
	}

	bond := byIndex[ifindex].Type() == "bond"
	for _, l := range links {
		a := l.Attrs()
		if bond && a.MasterIndex == ifindex {
			ports = append(ports, a.Index)
			watch = append(watch, a.Index)
		}
		if !base[a.Index] && !stacked(l, 0) {
			continue
		}
		watch = append(watch, a.Index)
		if len(a.HardwareAddr) != 6 {
			continue
		}
		if isVMACLink(l) {
			ok, err := held(l)
			if err != nil {
				return nil, nil, nil, err
			}
			if !ok {
				continue
			}
		}
		macs = append(macs, LocalMAC{MAC: a.HardwareAddr, Via: a.Index, VLAN: vlanOf(l, byIndex, base)})
	}
	return macs, ports, watch, nil
}

// vlanOf is the VLAN a frame to l's MAC arrives tagged with on a base
// interface: the id of the VLAN link in l's chain that sits on a base
// (l itself, or the VLAN a VMAC is on), 0 when none is.
func vlanOf(l netlink.Link, byIndex map[int]netlink.Link, base map[int]bool) uint16 {
	for n := 0; l != nil && !base[l.Attrs().Index] && n < maxStack; n++ {
		if v, ok := l.(*netlink.Vlan); ok && base[l.Attrs().ParentIndex] {
			return uint16(v.VlanId)
		}
		l = byIndex[l.Attrs().ParentIndex]
	}
	return 0
}

// syncLocalMACs writes the MACs of interface ifindex, and of its bond's
// ports, into halb_local_macs (localMACsOf), and logs them when they
// change. It returns the interfaces whose events can change them.
func (d *Datapath) syncLocalMACs(ifindex int, name string) ([]int, error) {
	macs, ports, watch, err := localMACsOf(d.nl, ifindex)
	if err != nil {
		return nil, fmt.Errorf("local macs of %s: %w", name, err)
	}
	old, err := d.lb.localMACList(ifindex)
	if err != nil {
		return nil, err
	}
	// The ports first: the bond's frames arrive there in native XDP.
	for _, i := range append(ports, ifindex) {
		if err := d.lb.setLocalMACs(i, macs); err != nil {
			return nil, fmt.Errorf("local macs of %s: %w", name, err)
		}
	}
	if !sameMACs(old, macs) {
		list := make([]string, len(macs))
		for i, m := range macs {
			list[i] = m.MAC.String()
			if m.VLAN != 0 {
				list[i] += fmt.Sprintf(" vlan %d", m.VLAN)
			}
		}
		d.log.Info("balancing frames to these macs", "interface", name, "macs", list)
	}
	return watch, nil
}

func sameMACs(a, b []LocalMAC) bool {
	key := func(ms []LocalMAC) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.String()
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// syncAllLocalMACs syncs every attached interface and returns the
// ifindexes whose link and address events matter: the interfaces, their
// masters, and the VLANs and VMACs on them.
func (d *Datapath) syncAllLocalMACs() map[int]bool {
	d.mu.Lock()
	ifaces := make(map[int]string, len(d.ifaces))
	for _, a := range d.ifaces {
		ifaces[a.ifindex] = a.Interface
	}
	d.mu.Unlock()
	watch := map[int]bool{}
	for ifindex, name := range ifaces {
		watch[ifindex] = true
		stack, err := d.syncLocalMACs(ifindex, name)
		if err != nil {
			d.log.Warn("cannot update the macs the data path balances", "interface", name, "err", err)
			continue
		}
		for _, i := range stack {
			watch[i] = true
		}
	}
	return watch
}

// Bounds of the MAC watcher.
const (
	macResubscribeAt = 1 * time.Second  // after a link or address subscription fails
	macSafetySync    = 30 * time.Second // a full pass, for events a netlink overflow lost
)

// watchLocalMACs keeps halb_local_macs true to the interfaces until ctx
// ends: a changed MAC, a VMAC that appears, goes, goes up or down, gains
// or loses its VIPs. Events of other interfaces are left alone; a slow
// periodic pass catches what a full netlink buffer loses.
func (d *Datapath) watchLocalMACs(ctx context.Context) {
	for ctx.Err() == nil {
		links := make(chan netlink.LinkUpdate, 64)
		addrs := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		onErr := func(err error) {
			if ctx.Err() == nil {
				d.log.Warn("link and address updates", "err", err)
			}
		}
		err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
			Namespace: &d.ns, ErrorCallback: onErr,
		})
		if err == nil {
			err = netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{
				Namespace: &d.ns, ErrorCallback: onErr,
			})
			if err != nil {
				close(done)
				for range links {
				}
			}
		}
		if err != nil {
			d.log.Warn("cannot follow link and address changes, checking the balanced macs every few seconds", "err", err)
			d.syncAllLocalMACs()
		} else {
			d.followLocalMACs(ctx, links, addrs)
			close(done)
			for range links {
			}
			for range addrs {
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(macResubscribeAt):
		}
	}
}

// followLocalMACs syncs once (whatever changed while nobody listened), then
// again after each event that concerns an attached interface or a VMAC on
// one, until ctx ends or a subscription does. A burst of events makes one
// sync.
func (d *Datapath) followLocalMACs(ctx context.Context, links <-chan netlink.LinkUpdate, addrs <-chan netlink.AddrUpdate) {
	watch := d.syncAllLocalMACs()
	tick := time.NewTicker(macSafetySync)
	defer tick.Stop()
	for {
		sync := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			sync = true
		case u, ok := <-links:
			if !ok {
				return
			}
			a := u.Attrs()
			// A new VLAN or VMAC is not in watch yet: its parent is.
			// A port that joins a bond: its master is.
			sync = watch[int(u.Index)] || watch[a.ParentIndex] || watch[a.MasterIndex]
		case u, ok := <-addrs:
			if !ok {
				return
			}
			sync = watch[u.LinkIndex]
		}
		if !sync {
			continue
		}
		// What else is queued is covered by the sync to come.
		for drained := false; !drained; {
			select {
			case _, ok := <-links:
				if !ok {
					return
				}
			case _, ok := <-addrs:
				if !ok {
					return
				}
			default:
				drained = true
			}
		}
		watch = d.syncAllLocalMACs()
	}
}
