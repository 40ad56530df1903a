package loader

import (
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
)

// A veth hands the frames native XDP sends back out (XDP_TX, or
// XDP_REDIRECT into it) to its peer's XDP receive queue, which exists only
// while the peer has an XDP program of its own in the driver: without one
// the veth driver drops every such frame, and halb, whose program returned
// XDP_TX, counts it as forwarded. Generic XDP and tc hand the frame to the
// peer as an skb and have no such trap. In namespaces and containers the
// data path's interface is a veth more often than not.

// vethPeer is what halb could learn of a veth's peer.
type vethPeer struct {
	name    string // "" when unknown
	netnsid int    // the peer's namespace as this one numbers it; -1: this one
	xdp     bool   // it has an XDP program in the driver
	unknown error  // why nothing could be learnt, or nil
	isVeth  bool
}

// xdpAttachedMulti is XDP_ATTACHED_MULTI of linux/if_link.h: programs in
// more than one mode.
const xdpAttachedMulti = 4

// vethPeerOf tells whether l is a veth and, if so, whether its peer has a
// native XDP program. The peer may be in another namespace, which the
// kernel names by a netnsid (IFLA_LINK_NETNSID) and answers for
// (IFLA_TARGET_NETNSID).
func (d *Datapath) vethPeerOf(l netlink.Link) vethPeer {
	p := vethPeer{netnsid: -1}
	if l.Type() != "veth" {
		return p
	}
	p.isVeth = true
	attrs := l.Attrs()
	if attrs.ParentIndex == 0 {
		p.unknown = errors.New("the kernel does not say which interface is its peer")
		return p
	}
	var (
		peer netlink.Link
		err  error
	)
	if attrs.NetNsID < 0 {
		peer, err = d.nl.LinkByIndex(attrs.ParentIndex)
	} else {
		p.netnsid = attrs.NetNsID
		err = nsthread.Do(d.ns, func() (err error) {
			peer, err = linkInNetNsID(attrs.NetNsID, attrs.ParentIndex)
			return err
		})
	}
	if err != nil {
		p.unknown = fmt.Errorf("read its peer, ifindex %d (netnsid %d): %w", attrs.ParentIndex, attrs.NetNsID, err)
		return p
	}
	p.name = peer.Attrs().Name
	if x := peer.Attrs().Xdp; x != nil && x.Attached {
		// MULTI on a veth is native and generic at once: a veth has
		// no offload.
		p.xdp = x.AttachMode == nl.XDP_ATTACHED_DRV || x.AttachMode == xdpAttachedMulti
	}
	return p
}

// linkInNetNsID reads interface ifindex of the namespace the calling
// thread's namespace numbers nsid (RTM_GETLINK with IFLA_TARGET_NETNSID,
// Linux 4.20).
func linkInNetNsID(nsid, ifindex int) (netlink.Link, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(nsid))))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("%d answers to one link request", len(msgs))
	}
	return netlink.LinkDeserialize(nil, msgs[0])
}

// hooksOn lists the hooks to try on l, best first: datapath.xdp_mode's,
// but for a veth whose peer has no XDP program (or may have none) in
// auto, where native XDP would lose every frame it forwards. In native it
// is what the user asked for, and a warning says how to make it work.
func (d *Datapath) hooksOn(l netlink.Link, p vethPeer) []Hook {
	if !slices.Contains(d.hooks, HookXDPNative) || !p.isVeth || p.xdp {
		return d.hooks
	}
	attrs := []any{"interface", l.Attrs().Name}
	if p.name != "" {
		attrs = append(attrs, "peer", p.name)
	}
	if p.netnsid >= 0 {
		attrs = append(attrs, "peer_netnsid", p.netnsid)
	}
	if p.unknown != nil {
		attrs = append(attrs, "err", p.unknown.Error())
	}
	if len(d.hooks) == 1 {
		d.log.Warn("native xdp on a veth whose peer has no xdp program: the veth driver drops every frame halb forwards (XDP_TX, XDP_REDIRECT) while halb counts it forwarded; attach an xdp program to the peer (one that returns XDP_PASS is enough) or set datapath.xdp_mode: auto",
			attrs...)
		return d.hooks
	}
	d.log.Info("veth peer has no xdp program, so native xdp would drop what it forwards: using generic xdp", attrs...)
	return slices.DeleteFunc(slices.Clone(d.hooks), func(h Hook) bool { return h == HookXDPNative })
}

// warnRedirects warns about the other way native XDP loses frames in a
// veth: one interface's program redirecting them (XDP_REDIRECT) into
// another of datapath.interfaces, a veth whose peer has no XDP program,
// where a backend is. auto spares the veth itself (hooksOn), not a
// physical interface that redirects into it. d.mu is held, or the
// Datapath is being made.
func (d *Datapath) warnRedirects() {
	for _, from := range d.ifaces {
		if from.Hook != HookXDPNative {
			continue
		}
		for _, to := range d.ifaces {
			if to != from && to.bareVeth {
				d.log.Warn("frames native xdp redirects into a veth whose peer has no xdp program are dropped by the veth driver: attach an xdp program to its peer (one that returns XDP_PASS is enough) or set datapath.xdp_mode: generic",
					"from", from.Interface, "into", to.Interface)
			}
		}
	}
}
