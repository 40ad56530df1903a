package vrrp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// What the instance watches on its link, and what it makes of it: the
// faults that hold it out of Master (its interface missing or down, no
// source address, a socket or VMAC that could not be made, a tracked
// interface or script with weight 0) and the priority that tracking gives
// it. evaluate looks afresh at start and on every change the link
// reports; nothing here touches the system but through the link.

// Fault reasons, one per condition, so each clears on its own.
func (in *Instance) faultMissing() string { return "interface " + in.cfg.Interface + " missing" }
func (in *Instance) faultDown() string    { return "interface " + in.cfg.Interface + " down" }
func (in *Instance) faultNoSrc() string {
	if in.cfg.UnicastSrc.IsValid() {
		return fmt.Sprintf("unicast_src %s not on %s", in.cfg.UnicastSrc, in.cfg.Interface)
	}
	if in.cfg.IPv6() {
		return "no IPv6 link-local address on " + in.cfg.Interface
	}
	return "no IPv4 address on " + in.cfg.Interface
}
func (in *Instance) faultSocket() string { return "VRRP socket on " + in.cfg.Interface }
func (in *Instance) faultVMAC(base iface) string {
	return "VMAC " + vmacName(in.cfg.VRID, in.cfg.IPv6(), base.Index)
}

// evaluate looks at the interface and its addresses as they are now and
// sets or clears the faults that depend on them. It runs at start and on
// every change the link reports about the interface.
func (in *Instance) evaluate(now time.Time) {
	faults := map[string]bool{}
	defer func() { in.setFaults(now, faults) }()
	in.track(now, faults)

	ifc, err := in.link.lookup(in.cfg.Interface)
	if err != nil {
		in.ifc, in.vipIfc = iface{}, iface{}
		in.closeConns()
		faults[in.faultMissing()] = true
		return
	}
	if in.ifc.Index != ifc.Index || in.conn == nil {
		// New, or deleted and made again: a new index needs a new socket
		// (and a new multicast membership).
		in.closeConns()
		in.openConn(ifc, faults)
	}
	in.ifc, in.vipIfc = ifc, ifc
	if in.cfg.UseVMAC {
		in.setupVMAC(ifc, faults)
	}
	if !ifc.up {
		faults[in.faultDown()] = true
	}
	if src, ok := in.findSource(ifc); ok {
		in.src = src
		in.m.SetPrimary(src)
	} else {
		faults[in.faultNoSrc()] = true
	}
	if len(faults) == 0 && in.m.State() == Master {
		in.repairVIPs(now)
		in.watchConflicts()
	}
}

// concerns reports whether a change is about the instance's own
// interface, its VMAC or an interface it tracks.
func (in *Instance) concerns(c change) bool {
	switch {
	case c.lost:
		return true
	case c.addr:
		return (in.ifc.Index != 0 && c.index == in.ifc.Index) || (in.vipIfc.Index != 0 && c.index == in.vipIfc.Index)
	case c.name == in.cfg.Interface || (in.ifc.Index != 0 && c.index == in.ifc.Index):
		return true
	}
	return slices.ContainsFunc(in.cfg.TrackInterfaces, func(ti config.TrackInterface) bool { return ti.Name == c.name })
}

// track applies track_interfaces and track_scripts, as keepalived does:
// weight 0 faults the instance while the interface is down (the script
// fails); a negative weight is added to the priority while it is down
// (failing), a positive one while it is up (good). track_files and
// track_processes add theirs (hostTracking, track.go). The result
// stays within 1..254, so tracking never makes an owner or a
// priority-0 advert.
func (in *Instance) track(now time.Time, faults map[string]bool) {
	delta := 0
	var tracked []string // each tracker's state, for Status
	for _, ti := range in.cfg.TrackInterfaces {
		ifc, err := in.link.lookup(ti.Name)
		up := err == nil && ifc.up
		switch {
		case ti.Weight == 0 && !up:
			faults["tracked interface "+ti.Name+" down"] = true
		case ti.Weight < 0 && !up, ti.Weight > 0 && up:
			delta += ti.Weight
		}
		tracked = append(tracked, fmt.Sprintf("interface %s %s (weight %d)", ti.Name, either(up, "up", "down"), ti.Weight))
	}
	for i, ts := range in.cfg.TrackScripts {
		ok := in.scripts[i].ok
		switch {
		case ts.Weight == 0 && !ok:
			faults["track script "+strings.Join(ts.Command, " ")+" failing"] = true
		case ts.Weight < 0 && !ok, ts.Weight > 0 && ok:
			delta += ts.Weight
		}
		tracked = append(tracked, fmt.Sprintf("script %s %s (weight %d)", ts.Command[0], either(ok, "good", "failing"), ts.Weight))
	}
	d, lines := in.hostTracking(faults)
	delta += d
	in.mu.Lock()
	in.status.Tracking = append(tracked, lines...)
	in.mu.Unlock()
	prio := in.cfg.Priority
	if delta != 0 {
		prio = min(max(prio+delta, 1), 254)
	}
	if uint8(prio) != in.m.Priority() {
		in.log.Info("priority changed by tracking", "from", in.m.Priority(), "to", prio)
		in.apply(now, in.m.SetPriority(now, uint8(prio)))
	}
}

func either(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// scriptResult counts one run of a track script and looks afresh when the
// script changed state.
func (in *Instance) scriptResult(now time.Time, r scriptResult) {
	ts := in.cfg.TrackScripts[r.index]
	if !in.scripts[r.index].update(ts, r.err) {
		return
	}
	if in.scripts[r.index].ok {
		in.log.Info("track script good again", "script", ts.Command[0], "successes", ts.Rise)
	} else {
		in.log.Warn("track script failing", "script", ts.Command[0], "failures", ts.Fall, "err", r.err, "output", r.output)
	}
	in.evaluate(now)
}

// setFaults makes the machine's faults those in want: new ones first, so
// that a fault that replaces another never lets the instance out of Fault
// in between; each change is logged with its reason.
func (in *Instance) setFaults(now time.Time, want map[string]bool) {
	had := map[string]bool{}
	for _, r := range in.m.Faults() {
		had[r] = true
	}
	for r := range want {
		if !had[r] {
			in.log.Warn("fault", "reason", r)
			in.apply(now, in.m.SetFault(now, r))
		}
	}
	for r := range had {
		if !want[r] {
			in.log.Info("fault cleared", "reason", r)
			in.apply(now, in.m.ClearFault(now, r))
		}
	}
	f := in.m.Faults()
	slices.Sort(f)
	in.mu.Lock()
	in.status.Faults = f
	in.mu.Unlock()
}

// findSource picks the advert source: unicast_src when it is on the link,
// else the first address of the family (IPv6: link-local, RFC 5798
// §5.1.2.1) that is not a VIP; a VIP that halb did not add (the host's own
// address given as a VIP) only when there is no other, since it stays on
// the link whatever the state.
func (in *Instance) findSource(ifc iface) (netip.Addr, bool) {
	list, err := in.link.addrs(ifc.Index)
	if err != nil {
		return netip.Addr{}, false
	}
	var first, fallback netip.Addr
	in.lladdr = netip.Addr{}
	for _, e := range list {
		addr := e.prefix.Addr()
		if addr.Is6() != in.cfg.IPv6() {
			continue
		}
		if addr.Is6() && addr.IsLinkLocalUnicast() && !in.lladdr.IsValid() {
			in.lladdr = addr
		}
		if in.cfg.UnicastSrc.IsValid() {
			if addr == in.cfg.UnicastSrc {
				first = addr
			}
			continue
		}
		if first.IsValid() || !(addr.Is4() || addr.IsLinkLocalUnicast()) {
			continue
		}
		switch {
		case !in.isVIP(addr):
			first = addr
		case !e.halb && !fallback.IsValid():
			fallback = addr
		}
	}
	if !first.IsValid() {
		first = fallback
	}
	return first, first.IsValid()
}

// openConn opens the advert socket on ifc and starts reading it; a
// failure faults the instance.
func (in *Instance) openConn(ifc iface, faults map[string]bool) {
	// With use_vmac, multicast adverts are read on the VMAC (setupVMAC):
	// joining here as well would read every advert twice.
	receive := !in.cfg.UseVMAC || len(in.cfg.UnicastPeers) > 0
	c, err := in.link.openAdverts(ifc, in.cfg.UnicastSrc, receive)
	if err != nil {
		in.log.Warn("cannot open VRRP socket", "interface", in.cfg.Interface, "err", err)
		faults[in.faultSocket()] = true
		return
	}
	in.conn = c
	in.startReading(c)
}

func (in *Instance) closeConns() {
	if in.conn != nil {
		in.conn.close()
		in.conn = nil
	}
	if in.vmacConn != nil {
		in.vmacConn.close()
		in.vmacConn = nil
	}
}

// setupVMAC makes sure the instance's macvlan exists on base, that
// adverts leave from it (unless vmac_xmit_base) and, in multicast mode,
// that they are read on it; a failure faults the instance.
//
// Reading on the VMAC is what keepalived does, and the only place the
// peer's adverts can be read: a private macvlan takes every multicast
// frame whose source MAC is its own for itself, so the adverts of a peer
// sending from its VMAC (the same virtual MAC) never reach the base
// interface. The cost: joining the group there makes even a Backup's VMAC
// send IGMP / MLD reports, at the join and on each querier's query, and a
// switch then learns the virtual MAC at the Backup until the Master's
// next frame.
func (in *Instance) setupVMAC(base iface, faults map[string]bool) {
	vm, err := in.link.ensureVMAC(base)
	if err != nil {
		in.log.Warn("cannot set up the VMAC interface", "err", err)
		faults[in.faultVMAC(base)] = true
		return
	}
	if in.vmacConn != nil && in.vmacConn.ifindex() != vm.Index {
		in.vmacConn.close()
		in.vmacConn = nil
	}
	in.vipIfc = vm
	// Unicast adverts go to the base interface's address: they arrive
	// there.
	receive := len(in.cfg.UnicastPeers) == 0
	if (in.cfg.VMACXmitBase && !receive) || in.vmacConn != nil {
		return
	}
	c, err := in.link.openAdverts(vm, netip.Addr{}, receive)
	if err != nil {
		in.log.Warn("cannot open the VMAC's VRRP socket", "err", err)
		faults[in.faultVMAC(base)] = true
		return
	}
	in.vmacConn = c
	if receive {
		in.startReading(c)
	}
}

// repairVIPs puts back VIPs that someone deleted while this node is
// Master: the backups think they are here.
func (in *Instance) repairVIPs(now time.Time) {
	list, err := in.link.addrs(in.vipIfc.Index)
	if err != nil {
		return
	}
	present := map[netip.Addr]bool{}
	for _, a := range list {
		present[a.prefix.Addr()] = true
	}
	for _, p := range in.vips {
		if !present[p.Addr()] {
			in.log.Warn("virtual IP was removed while MASTER; restoring it", "vip", p.String())
			if _, err := in.link.addVIPs(in.vipIfc, in.vips); err != nil {
				in.log.Error("cannot restore virtual IPs", "err", err)
			}
			in.garp.again(now)
			return
		}
	}
}
