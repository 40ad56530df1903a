package vrrp

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// HostAddr is an address of one of this host's interfaces.
type HostAddr struct {
	Addr      netip.Addr
	Interface string
	// Halb: the address carries halb's mark (IFA_PROTO halbAddrProto), so
	// a halb added it as a VIP. On a kernel that keeps no IFA_PROTO none
	// does.
	Halb bool
}

// HostAddrs lists the addresses of every interface in the calling
// thread's network namespace, each with whether halb added it, for `halb
// check` to tell a VIP some halb holds from one that is the host's own.
func HostAddrs() ([]HostAddr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []HostAddr
	for _, l := range links {
		list, err := listAddrs(l.Attrs().Index)
		if err != nil {
			return nil, err
		}
		for _, e := range list {
			out = append(out, HostAddr{Addr: e.prefix.Addr(), Interface: l.Attrs().Name, Halb: e.proto == halbAddrProto})
		}
	}
	return out, nil
}
