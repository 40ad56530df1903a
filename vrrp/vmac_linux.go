package vrrp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The virtual router MAC of RFC 5798 §7.3: 00-00-5E-00-01-{VRID} for IPv4,
// 00-00-5E-00-02-{VRID} for IPv6.
func virtualMAC(vrid int, v6 bool) net.HardwareAddr {
	if v6 {
		return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x02, byte(vrid)}
	}
	return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, byte(vrid)}
}

// vmacName names the macvlan of an instance: keepalived's vrrp.<vrid>
// (vrrp6.<vrid> for IPv6) followed by the base interface's index, since
// one VRID may run on several interfaces and each needs a macvlan of its
// own (with the bare vrrp.<vrid> the second instance took the first one's
// name). A name has at most 15 bytes (IFNAMSIZ); an index too long for
// that is written in base 36 after a shorter prefix (vr.<vrid>.<index> or
// vr6.<vrid>.<index>), which no readable name can equal.
func vmacName(vrid int, v6 bool, baseIndex int) string {
	prefix, short := "vrrp", "vr"
	if v6 {
		prefix, short = "vrrp6", "vr6"
	}
	if name := fmt.Sprintf("%s.%d.%d", prefix, vrid, baseIndex); len(name) <= maxIfName {
		return name
	}
	return fmt.Sprintf("%s.%d.%s", short, vrid, strconv.FormatInt(int64(baseIndex), 36))
}

// maxIfName is the longest interface name Linux takes (IFNAMSIZ less
// the terminating NUL).
const maxIfName = 15

// vmacAlias marks a macvlan as made by halb (the link's ifalias, which
// `ip -d link` shows): halb removes or reuses only a link that carries it
// and has the parent and MAC it would have made, never someone else's
// link that happens to have the name.
const vmacAlias = "halb vrrp vmac"

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
// mode, with the virtual MAC, configured and up. A link of that name that
// halb did not make is left alone, and is an error.
func ensureVMAC(base netlink.Link, vrid int, v6 bool) (netlink.Link, error) {
	name := vmacName(vrid, v6, base.Attrs().Index)
	mac := virtualMAC(vrid, v6)
	if l, err := netlink.LinkByName(name); err == nil {
		if !isOwnVMAC(l, base.Attrs().Index, mac) {
			return nil, fmt.Errorf("interface %s exists and is not the VMAC halb makes on %s (a macvlan with MAC %s and alias %q): remove or rename it",
				name, base.Attrs().Name, mac, vmacAlias)
		}
		return l, netlink.LinkSetUp(l)
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: base.Attrs().Index, HardwareAddr: mac},
		Mode:      netlink.MACVLAN_MODE_PRIVATE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("create VMAC %s on %s: %w", name, base.Attrs().Name, err)
	}
	// The kernel takes no alias at creation: set it now, and take back a
	// link that cannot be marked (nothing would ever remove it).
	if err := netlink.LinkSetAlias(mv, vmacAlias); err != nil {
		if derr := netlink.LinkDel(mv); derr != nil {
			err = errors.Join(err, fmt.Errorf("remove it again: %w", derr))
		}
		return nil, fmt.Errorf("mark VMAC %s as halb's: %w", name, err)
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
		if errors.Is(err, unix.EADDRINUSE) {
			if other := macvlanWithMAC(base.Attrs().Index, mac, l.Attrs().Index); other != "" {
				err = fmt.Errorf("%w: %s on %s already has MAC %s (keepalived's VMAC, or one an older halb left): remove it", err, other, base.Attrs().Name, mac)
			}
		}
		return nil, fmt.Errorf("bring up VMAC %s: %w", name, err)
	}
	return l, nil
}

// macvlanWithMAC names another link on the interface with index base that
// has mac, "" when there is none: the kernel lets only one of them up.
func macvlanWithMAC(base int, mac net.HardwareAddr, except int) string {
	links, err := netlink.LinkList()
	if err != nil {
		return ""
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Index != except && a.ParentIndex == base && a.HardwareAddr.String() == mac.String() {
			return a.Name
		}
	}
	return ""
}

// isOwnVMAC reports whether l is a macvlan halb made on the interface with
// index base for mac.
func isOwnVMAC(l netlink.Link, base int, mac net.HardwareAddr) bool {
	_, ok := l.(*netlink.Macvlan)
	a := l.Attrs()
	return ok && a.ParentIndex == base && a.HardwareAddr.String() == mac.String() && a.Alias == vmacAlias
}

// removeVMAC deletes the instance's macvlan on the interface with index
// base, if it is there and halb made it.
func removeVMAC(vrid int, v6 bool, base int) error {
	l, err := netlink.LinkByName(vmacName(vrid, v6, base))
	if err != nil || !isOwnVMAC(l, base, virtualMAC(vrid, v6)) {
		return nil
	}
	return netlink.LinkDel(l)
}
