package vrrp

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// halb removes only addresses it added. Each address it adds carries the
// protocol halbAddrProto in the kernel (IFA_PROTO, Linux 5.18 and later;
// `ip -d addr` shows it as "proto 0x68"), so that an address it finds is
// told apart from one the host or an operator put there, even after a
// restart: a VIP left behind by a halb that was killed carries the mark,
// and the next run takes it off until the protocol makes that node Master
// again; the host's own address, equal to a VIP by mistake, does not, and
// stays whatever the state (before, halb deleted it at start, which on a
// real host cut off ssh).
//
// A VIP already on the interface without the mark is someone else's: halb
// does not add it again and never removes it; as Master it still serves
// it (the address is there) and logs that it leaves it alone.
//
// On a kernel that does not keep IFA_PROTO, which vipSet learns from the
// first address it adds, the addresses this vipSet added in this run are
// the ones it removes; a VIP left behind by a killed run then cannot be
// told from the host's and stays.

// halbAddrProto is the IFA_PROTO value of halb's addresses ('h'). The
// kernel's own values are 1 to 3; keepalived, which marks its addresses
// too, uses another (RTPROT_KEEPALIVED, 18), so neither removes the
// other's.
const halbAddrProto = 0x68

// ifaProto is IFA_PROTO from linux/if_addr.h, which x/sys/unix lacks.
const ifaProto = 11

// ifAddr is one address on an interface, as the kernel lists it.
type ifAddr struct {
	index  int // the interface's
	prefix netip.Prefix
	proto  uint8
	flags  uint32
}

// vipSet puts an instance's virtual addresses on its interface and takes
// them off again, through netlink, in the calling thread's network
// namespace.
type vipSet struct {
	prefixes []netip.Prefix
	// added holds the VIPs this set added and has not removed: the
	// record that decides on a kernel that keeps no IFA_PROTO.
	added map[netip.Addr]bool
	// protoKept is 1 once the kernel was seen to keep IFA_PROTO, -1 once
	// it was seen to drop it, 0 before the first add.
	protoKept int
}

func newVIPSet(prefixes []netip.Prefix) *vipSet {
	return &vipSet{prefixes: prefixes, added: map[netip.Addr]bool{}}
}

// isOwn reports whether the address e was put there by halb.
func (v *vipSet) isOwn(e ifAddr) bool {
	return e.proto == halbAddrProto || (v.protoKept < 0 && v.added[e.prefix.Addr()])
}

// add puts each of prefixes (VIPs of the set) that is not on link there,
// marked as halb's. A VIP there already is left as it is: halb's
// own (from this run, or one that was killed) stays on; one without the
// mark is someone else's and is returned in foreign.
func (v *vipSet) add(link netlink.Link, prefixes []netip.Prefix) (foreign []netip.Prefix, err error) {
	ifindex := link.Attrs().Index
	have, err := listAddrs(ifindex)
	if err != nil {
		return nil, err
	}
	var errs []error
	var added []netip.Addr
	for _, p := range prefixes {
		e, ok := findAddr(have, p.Addr())
		switch {
		case ok && !v.isOwn(e):
			foreign = append(foreign, p)
		case ok:
		default:
			if err := addAddr(ifindex, p); err != nil && !errors.Is(err, unix.EEXIST) {
				errs = append(errs, fmt.Errorf("add %s to %s: %w", p, link.Attrs().Name, err))
				continue
			}
			v.added[p.Addr()] = true
			added = append(added, p.Addr())
		}
	}
	if v.protoKept == 0 && len(added) > 0 {
		if have, err := listAddrs(ifindex); err == nil {
			if e, ok := findAddr(have, added[0]); ok {
				v.protoKept = 1
				if e.proto != halbAddrProto {
					v.protoKept = -1
				}
			}
		}
	}
	return foreign, errors.Join(errs...)
}

// remove takes the VIPs halb put on link off it; others' addresses stay,
// and ones already gone are no error.
func (v *vipSet) remove(link netlink.Link) error {
	ifindex := link.Attrs().Index
	have, err := listAddrs(ifindex)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range have {
		if !v.owns(e.prefix.Addr()) || !v.isOwn(e) {
			continue
		}
		err := delAddr(ifindex, e.prefix)
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("remove %s from %s: %w", e.prefix, link.Attrs().Name, err))
			continue
		}
		delete(v.added, e.prefix.Addr())
	}
	return errors.Join(errs...)
}

// owns reports whether a is one of the VIPs, so a deleted-address event
// can be told apart from one about another address.
func (v *vipSet) owns(a netip.Addr) bool {
	for _, p := range v.prefixes {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

func findAddr(list []ifAddr, a netip.Addr) (ifAddr, bool) {
	for _, e := range list {
		if e.prefix.Addr() == a {
			return e, true
		}
	}
	return ifAddr{}, false
}

// listAddrs lists the addresses on the interface with index ifindex, with
// their IFA_PROTO, which vishvananda/netlink's AddrList does not read.
func listAddrs(ifindex int) ([]ifAddr, error) {
	all, err := dumpAddrs()
	if err != nil {
		return nil, err
	}
	var out []ifAddr
	for _, e := range all {
		if e.index == ifindex {
			out = append(out, e)
		}
	}
	return out, nil
}

// dumpAddrs lists the addresses of every interface, in one dump.
func dumpAddrs() ([]ifAddr, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []ifAddr
	for _, m := range msgs {
		msg := nl.DeserializeIfAddrmsg(m)
		attrs, err := nl.ParseRouteAttr(m[msg.Len():])
		if err != nil {
			continue
		}
		var local, address []byte
		e := ifAddr{index: int(msg.Index), flags: uint32(msg.Flags)}
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.IFA_LOCAL:
				local = a.Value
			case unix.IFA_ADDRESS:
				address = a.Value
			case unix.IFA_FLAGS:
				if len(a.Value) >= 4 {
					e.flags = nl.NativeEndian().Uint32(a.Value)
				}
			case ifaProto:
				if len(a.Value) >= 1 {
					e.proto = a.Value[0]
				}
			}
		}
		// IPv4 gives its own address as IFA_LOCAL (IFA_ADDRESS is the
		// peer's on a point-to-point link); IPv6 only IFA_ADDRESS.
		if local == nil {
			local = address
		}
		addr, ok := netip.AddrFromSlice(local)
		if !ok {
			continue
		}
		e.prefix = netip.PrefixFrom(addr.Unmap(), int(msg.Prefixlen))
		out = append(out, e)
	}
	return out, nil
}

// addAddr adds p to the interface, marked with halbAddrProto. IPv6
// addresses skip duplicate address detection: the address moves between
// nodes, and DAD would hold it tentative (unusable) for a second after
// every failover, and fail it outright during a split brain.
func addAddr(ifindex int, p netip.Prefix) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	addAddrMsg(req, ifindex, p)
	var flags uint32
	if p.Addr().Is6() {
		flags = unix.IFA_F_NODAD
	} else if p.Bits() < 31 {
		brd := p.Masked().Addr().As4()
		for i := p.Bits(); i < 32; i++ {
			brd[i/8] |= 0x80 >> (i % 8)
		}
		req.AddData(nl.NewRtAttr(unix.IFA_BROADCAST, brd[:]))
	}
	req.AddData(nl.NewRtAttr(unix.IFA_FLAGS, nl.Uint32Attr(flags)))
	req.AddData(nl.NewRtAttr(ifaProto, []byte{halbAddrProto}))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// delAddr removes p from the interface.
func delAddr(ifindex int, p netip.Prefix) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELADDR, unix.NLM_F_ACK)
	addAddrMsg(req, ifindex, p)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// addAddrMsg puts the header and address attributes that name p on the
// interface into req.
func addAddrMsg(req *nl.NetlinkRequest, ifindex int, p netip.Prefix) {
	family := unix.AF_INET
	if p.Addr().Is6() {
		family = unix.AF_INET6
	}
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(ifindex)
	msg.Prefixlen = uint8(p.Bits())
	if p.Addr().Is6() {
		msg.Flags = unix.IFA_F_NODAD
	}
	req.AddData(msg)
	ip := p.Addr().AsSlice()
	if p.Addr().Is4() {
		req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
	}
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, ip))
}
