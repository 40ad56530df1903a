package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vipSet puts an instance's virtual addresses on its interface and takes
// them off again, through netlink.
type vipSet struct {
	h        *netlink.Handle
	prefixes []netip.Prefix
}

func toAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// The address moves between nodes: duplicate address detection
		// would hold it tentative (unusable) for a second after every
		// failover, and would fail outright during a split brain.
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// add puts every VIP on link; ones already there are left as they are.
func (v vipSet) add(link netlink.Link) error {
	var errs []error
	for _, p := range v.prefixes {
		if err := v.h.AddrReplace(link, toAddr(p)); err != nil {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", p, link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// remove takes every VIP off link; ones already gone are no error.
func (v vipSet) remove(link netlink.Link) error {
	var errs []error
	for _, p := range v.prefixes {
		err := v.h.AddrDel(link, toAddr(p))
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", p, link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// owns reports whether a is one of the VIPs, so a deleted-address event
// can be told apart from one about another address.
func (v vipSet) owns(a netip.Addr) bool {
	for _, p := range v.prefixes {
		if p.Addr() == a {
			return true
		}
	}
	return false
}
