package vrrp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
)

// The virtual router MAC of RFC 5798 §7.3: 00-00-5E-00-01-{VRID} for IPv4,
// 00-00-5E-00-02-{VRID} for IPv6.
func virtualMAC(vrid int, v6 bool) net.HardwareAddr {
	if v6 {
		return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x02, byte(vrid)}
	}
	return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, byte(vrid)}
}

// vmacName names the macvlan of an instance, as keepalived does.
func vmacName(vrid int, v6 bool) string {
	if v6 {
		return fmt.Sprintf("vrrp6.%d", vrid)
	}
	return fmt.Sprintf("vrrp.%d", vrid)
}

// vmacSysctls make the VMAC interface answer ARP only for the VIPs it
// holds, and accept what it sends to itself (keepalived's settings). IPv6 gets no
// link-local address on the VMAC: both nodes' VMACs share one MAC, and a
// backup sending DAD or router solicitations from it would move the MAC on
// the switch.
var vmacSysctls = []struct{ path, value string }{
	{"ipv4/conf/%s/arp_ignore", "1"},
	{"ipv4/conf/%s/arp_filter", "0"},
	{"ipv4/conf/%s/accept_local", "1"},
	{"ipv4/conf/%s/rp_filter", "0"},
	{"ipv6/conf/%s/addr_gen_mode", "1"},
}

// On the base interface: answer ARP only for its own addresses, and never
// ask with a VIP as the sender address (which would teach the LAN the base
// interface's MAC for the VIP when the VIP's replies leave through it).
var baseSysctls = []struct{ path, value string }{
	{"ipv4/conf/%s/arp_ignore", "1"},
	{"ipv4/conf/%s/arp_filter", "1"},
	{"ipv4/conf/%s/arp_announce", "2"},
}

func setSysctls(ifname string, list []struct{ path, value string }) error {
	var errs []error
	for _, s := range list {
		p := filepath.Join("/proc/sys/net", fmt.Sprintf(s.path, ifname))
		if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// ensureVMAC makes (or finds) the instance's macvlan on base, private
// mode, with the virtual MAC, configured and up.
func ensureVMAC(base netlink.Link, vrid int, v6 bool) (netlink.Link, error) {
	name := vmacName(vrid, v6)
	mac := virtualMAC(vrid, v6)
	if l, err := netlink.LinkByName(name); err == nil {
		if l.Attrs().ParentIndex == base.Attrs().Index && l.Attrs().HardwareAddr.String() == mac.String() {
			return l, netlink.LinkSetUp(l)
		}
		// Left over on an interface that was deleted and made again.
		if err := netlink.LinkDel(l); err != nil {
			return nil, fmt.Errorf("remove stale %s: %w", name, err)
		}
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: base.Attrs().Index, HardwareAddr: mac},
		Mode:      netlink.MACVLAN_MODE_PRIVATE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("create VMAC %s on %s: %w", name, base.Attrs().Name, err)
	}
	if err := setSysctls(name, vmacSysctls); err != nil {
		return nil, err
	}
	if err := setSysctls(base.Attrs().Name, baseSysctls); err != nil {
		return nil, err
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bring up VMAC %s: %w", name, err)
	}
	return l, nil
}

// removeVMAC deletes the instance's macvlan, if it is there.
func removeVMAC(vrid int, v6 bool) error {
	l, err := netlink.LinkByName(vmacName(vrid, v6))
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}
