package vrrp

import (
	"net/netip"
	"time"

	"github.com/halb-lb/halb/config"
)

// What a Master holds beside the VIPs on its own interface (keepalived's
// `dev`, virtual_ipaddress_excluded, virtual_routes, virtual_rules): VIPs
// on other interfaces, added, announced and removed with the others, and
// the virtual routes and rules. An interface that is missing, or a route
// the kernel cannot take yet (its interface or gateway not there), never
// stops the instance nor faults it: it is logged and tried again when the
// link reports a change, so that a boot where eth1 comes up late ends with
// everything in place.

// otherIfc is an interface other than the instance's that holds VIPs.
type otherIfc struct {
	name string
	vips []netip.Prefix
	// ifc is the interface the VIPs were put on while Master; Index 0
	// when they are not (not Master, or the interface missing).
	ifc    iface
	lladdr netip.Addr // its IPv6 link-local address, for the NAs
	warned bool       // its absence is logged, once per Master term
}

// ownVIPs are the VIPs the instance holds on its own interface: the
// advert's and the excluded ones that name no other interface.
func ownVIPs(cfg config.Instance) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range cfg.HeldVIPs() {
		if v.Interface == "" || v.Interface == cfg.Interface {
			out = append(out, v.Address)
		}
	}
	return out
}

// excludedPrefixes are the addresses of virtual_ips_excluded.
func excludedPrefixes(cfg config.Instance) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range cfg.VirtualIPsExcluded {
		out = append(out, v.Address)
	}
	return out
}

// otherIfcs groups the VIPs on other interfaces by interface, in the
// order the file names them.
func otherIfcs(cfg config.Instance) []otherIfc {
	var out []otherIfc
	at := map[string]int{}
	for _, v := range cfg.HeldVIPs() {
		if v.Interface == "" || v.Interface == cfg.Interface {
			continue
		}
		i, ok := at[v.Interface]
		if !ok {
			i = len(out)
			at[v.Interface] = i
			out = append(out, otherIfc{name: v.Interface})
		}
		out[i].vips = append(out[i].vips, v.Address)
	}
	return out
}

func (in *Instance) hasRoutes() bool {
	return len(in.cfg.VirtualRoutes)+len(in.cfg.VirtualRules) > 0
}

// holdExtras puts the VIPs on the other interfaces and the routes and
// rules in place on taking over.
func (in *Instance) holdExtras(now time.Time) {
	for i := range in.others {
		in.holdOther(now, &in.others[i])
	}
	in.routesPending = in.hasRoutes()
	in.holdRoutes()
}

// holdOther puts o's VIPs on o's interface as it is now, unless they are
// on it already; put on an interface that came (back) while Master, they
// are announced at once.
func (in *Instance) holdOther(now time.Time, o *otherIfc) {
	ifc, err := in.link.lookup(o.name)
	if err != nil {
		o.ifc = iface{}
		if !o.warned {
			in.log.Warn("interface of virtual IPs missing; they are added when it appears", "interface", o.name, "err", err)
			o.warned = true
		}
		return
	}
	if ifc.Index == o.ifc.Index && in.otherHeld(o) {
		return
	}
	foreign, err := in.link.addVIPs(ifc, o.vips)
	if err != nil {
		in.log.Error("cannot add virtual IPs", "interface", o.name, "err", err)
	}
	for _, p := range foreign {
		in.log.Warn("virtual IP already on the interface and not added by halb; served as it is and never removed",
			"vip", p.String(), "interface", o.name)
	}
	o.ifc, o.lladdr = ifc, in.linkLocal(ifc.Index)
	in.garp.again(now)
}

// otherHeld reports whether every one of o's VIPs is on its interface.
func (in *Instance) otherHeld(o *otherIfc) bool {
	list, err := in.link.addrs(o.ifc.Index)
	if err != nil {
		return false
	}
	present := map[netip.Addr]bool{}
	for _, a := range list {
		present[a.prefix.Addr()] = true
	}
	for _, p := range o.vips {
		if !present[p.Addr()] {
			return false
		}
	}
	return true
}

// linkLocal is the first IPv6 link-local address on the interface.
func (in *Instance) linkLocal(ifindex int) netip.Addr {
	list, _ := in.link.addrs(ifindex)
	for _, a := range list {
		if a.prefix.Addr().Is6() && a.prefix.Addr().IsLinkLocalUnicast() {
			return a.prefix.Addr()
		}
	}
	return netip.Addr{}
}

// holdRoutes adds the routes and rules not yet in place; what the kernel
// cannot take yet stays pending until a change of the links.
func (in *Instance) holdRoutes() {
	if !in.routesPending {
		return
	}
	err := in.link.holdRoutes()
	in.routesPending = err != nil
	switch {
	case err == nil:
	case !in.routesWarned:
		in.log.Warn("virtual routes or rules not in place yet; tried again when the links change", "err", err)
		in.routesWarned = true
	default:
		in.log.Debug("virtual routes or rules still not in place", "err", err)
	}
}

// extrasChanged tries again, while Master, what a link change may now
// let in: the VIPs of an interface that changed (or came), the pending
// routes. A link going down takes the routes through it with it (the
// kernel flushes them), so a change of a link, not of an address, has
// the routes looked at again; an address change only retries pending
// ones, which spares a route dump per address event on a host with a
// large table.
func (in *Instance) extrasChanged(now time.Time, c change) {
	if in.m.State() != Master {
		return
	}
	for i := range in.others {
		o := &in.others[i]
		if c.lost || c.name == o.name || (o.ifc.Index != 0 && c.index == o.ifc.Index) || o.ifc.Index == 0 {
			in.holdOther(now, o)
		}
	}
	if c.lost || !c.addr {
		in.routesPending = in.hasRoutes()
	}
	in.holdRoutes()
}

// releaseExtras takes off what holdExtras put in place, and only what
// halb put there.
func (in *Instance) releaseExtras() {
	for i := range in.others {
		o := &in.others[i]
		o.ifc, o.warned = iface{}, false
		ifc, err := in.link.lookup(o.name)
		if err != nil {
			continue
		}
		if err := in.link.removeVIPs(ifc); err != nil {
			in.log.Error("cannot remove virtual IPs", "interface", o.name, "err", err)
		}
	}
	in.routesPending, in.routesWarned = false, false
	if in.hasRoutes() {
		if err := in.link.releaseRoutes(); err != nil {
			in.log.Error("cannot remove virtual routes or rules", "err", err)
		}
	}
}

// announceOthers sends repeat announcements of the VIPs on the other
// interfaces, each from its interface's MAC.
func (in *Instance) announceOthers(repeat int) {
	for _, o := range in.others {
		if o.ifc.Index == 0 || len(o.ifc.HardwareAddr) == 0 {
			continue
		}
		in.announceOn(o.ifc, o.lladdr, o.vips, repeat)
	}
}
