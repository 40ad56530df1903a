package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/bgp"
	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/vrrp"
)

// hostWarnings looks at the host `halb check` runs on (the calling
// thread's network namespace) for what a valid configuration would do
// wrong there, and changes nothing: a virtual IP that is already an
// address of a local interface, not one halb added, and a backend or
// sorry backend this host has no route to, which halb runs without until
// a route appears, and a track file someone else can write. Parse stays
// free of them, so that a file can be checked anywhere; these are
// warnings, not problems.
//
// held lists the virtual IPs a running halb on this configuration's
// control socket holds as MASTER: on a kernel that keeps no address
// marks, that is how one halb added is told from the host's own. addrs
// are this host's addresses (vrrp.HostAddrs, listed once for hostProblems
// too), addrsErr why they could not be listed.
func hostWarnings(c *config.Config, addrs []vrrp.HostAddr, addrsErr error, held map[netip.Addr]bool) []config.Problem {
	var warnings []config.Problem
	warn := func(path, format string, args ...any) {
		warnings = append(warnings, config.Problem{Path: path, Msg: "warning: " + fmt.Sprintf(format, args...)})
	}

	foreign := map[netip.Addr]string{} // address -> interface
	if addrsErr != nil {
		warn("", "cannot list this host's addresses, so virtual IPs already in use go unchecked: %v", addrsErr)
	}
	for _, a := range addrs {
		if !a.Halb {
			foreign[a.Addr] = a.Interface
		}
	}
	for i, in := range c.VRRP.Instances {
		for j, vip := range in.VirtualIPs {
			p := vip.Address
			ifname, ok := foreign[p.Addr()]
			if !ok || held[p.Addr()] {
				continue
			}
			warn(fmt.Sprintf("vrrp.instances[%d].virtual_ips[%d]", i, j),
				"%s is already an address of %s on this host, and not one halb added: halb leaves it there in every "+
					"state, so while the peer is MASTER both nodes answer for it; if it is this node's own address, "+
					"give the virtual IP an address of its own", p.Addr(), ifname)
		}
	}

	// Where halb would pin the data path: a path it refuses at run (not
	// on a bpf filesystem, and not /sys/fs/bpf where it mounts one).
	if c.Datapath.Mode != config.ModeIPVS {
		if err := loader.CheckBPFFS(c.Datapath.BPFFS); err != nil {
			warn("datapath.bpffs", "halb run refuses this path on this host: %v", err)
		}
	}

	// What the BGP speaker refuses at start on this host (no IPv4
	// address for a router ID, a peer that is this host, BFD to a peer
	// on no connected network).
	if c.BGP != nil {
		local, err := bgp.LocalPrefixes()
		if err != nil {
			warn("bgp", "cannot list this host's addresses, so the bgp section goes unchecked against them: %v", err)
		}
		for _, p := range bgp.HostProblems(c.BGP, local) {
			warn(p.Path, "halb run refuses this on this host: %s", p.Msg)
		}
	}

	warnings = append(warnings, snatPortsWarnings(c)...)
	warnings = append(warnings, trackFileWarnings(c)...)

	// One route lookup per address: a backend often serves several
	// services.
	routes := map[netip.Addr]string{}
	noRoute := func(a netip.Addr) string {
		msg, ok := routes[a]
		if !ok {
			msg = routeProblem(a)
			routes[a] = msg
		}
		return msg
	}
	for i, s := range c.Services {
		path := fmt.Sprintf("services[%d]", i)
		for j, b := range s.Backends {
			if msg := noRoute(b.Address); msg != "" {
				warn(fmt.Sprintf("%s.backends[%d].address", path, j), "%s", msg)
			}
		}
		if s.SorryBackend.IsValid() {
			if msg := noRoute(s.SorryBackend.Addr()); msg != "" {
				warn(path+".sorry_backend", "%s", msg)
			}
		}
	}
	return warnings
}

// routeProblem says why this host cannot send to a, or "" when it can:
// the kernel's own route lookup (`ip route get`), so unreachable, prohibit
// and blackhole routes count as none.
func routeProblem(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	if _, err := netlink.RouteGet(a.AsSlice()); err != nil {
		return fmt.Sprintf("%s has no route from this host (%v): halb runs without it, reports it in `halb status`, "+
			"and sends to it once a route appears", a, err)
	}
	return ""
}

// hostProblems are what this host could not run of a valid file: a
// forward: nat or fullnat backend routed through an interface that is not
// in datapath.interfaces (natInterfaceProblems), a full NAT snat_address
// that is neither this host's nor a VRRP VIP (snatAddressProblems). When
// every one of datapath.interfaces is an interface of this host, the file
// is this host's, and each is a problem (halb check exits 2); when one is
// missing, the file may be another host's (or halb waits for the
// interface), and each is a warning.
func hostProblems(c *config.Config, addrs []vrrp.HostAddr) (problems, warnings []config.Problem) {
	here := len(c.Datapath.Interfaces) > 0
	for _, name := range c.Datapath.Interfaces {
		if _, err := netlink.LinkByName(name); err != nil {
			here = false
		}
	}
	for _, p := range append(natInterfaceProblems(c), snatAddressProblems(c, addrs)...) {
		if here {
			problems = append(problems, p)
			continue
		}
		p.Msg = "warning: " + p.Msg + " (not all of datapath.interfaces are on this host, so the file may be another's)"
		warnings = append(warnings, p)
	}
	return problems, warnings
}

// natInterfaceProblems are the forward: nat and fullnat backends on the
// eBPF data path that this host routes through an interface that is not
// one of datapath.interfaces: the program sends the clients' packets
// there and must see the backend's replies arrive there, so it could
// serve none of them. A backend with no route is left to hostWarnings.
func natInterfaceProblems(c *config.Config) []config.Problem {
	var problems []config.Problem
	for i, s := range c.Services {
		if (s.Forward != "nat" && s.Forward != "fullnat") || config.ServiceDatapath(c.Datapath.Mode, "", s) != "ebpf" {
			continue
		}
		for j, b := range s.Backends {
			name := routeInterface(b.Address)
			if name == "" || slices.Contains(c.Datapath.Interfaces, name) {
				continue
			}
			problems = append(problems, config.Problem{Path: fmt.Sprintf("services[%d].backends[%d].address", i, j), Msg: fmt.Sprintf(
				"this host routes %s through %s, which is not in datapath.interfaces: forward: %s sends the clients' "+
					"packets there and must see the backend's replies arrive there; add %s to datapath.interfaces, "+
					"or route %s through one of them", b.Address, name, s.Forward, name, b.Address)})
		}
	}
	return problems
}

// snatAddressProblems are the full NAT services whose snat_address this
// host does not hold: neither one of its addresses (addrs) nor a virtual
// IP of the file's VRRP instances (held while MASTER). The backends'
// replies go to it and never reach this node. None when addrs could not
// be listed.
func snatAddressProblems(c *config.Config, addrs []vrrp.HostAddr) []config.Problem {
	if len(addrs) == 0 {
		return nil
	}
	local := map[netip.Addr]bool{}
	for _, a := range addrs {
		local[a.Addr] = true
	}
	for _, in := range c.VRRP.Instances {
		for _, p := range in.HeldVIPs() {
			local[p.Address.Addr()] = true
		}
	}
	var problems []config.Problem
	for i, s := range c.Services {
		if s.Forward == "fullnat" && s.SNATAddress.IsValid() && !local[s.SNATAddress] {
			problems = append(problems, config.Problem{Path: fmt.Sprintf("services[%d].snat_address", i), Msg: fmt.Sprintf(
				"%s is neither an address of this host nor a virtual IP of vrrp: the backends' replies to it never reach this node; "+
					"give one of its addresses, or a virtual IP on the backends' network (which moves with the VIP)", s.SNATAddress)})
		}
	}
	return problems
}

// routeInterface is the name of the interface the kernel's route to a
// leaves through, "" when it has none.
func routeInterface(a netip.Addr) string {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil || len(routes) == 0 {
		return ""
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return ""
	}
	return link.Attrs().Name
}

// snatPortsWarnings warns, when a forward: fullnat service is there,
// about datapath.snat_ports overlapping the kernel's
// ip_local_port_range, where the host's own connections to the backends
// (health checks) take their source ports, whose replies a full NAT flow
// on the same port would take.
func snatPortsWarnings(c *config.Config) []config.Problem {
	var warnings []config.Problem
	has := slices.ContainsFunc(c.Services, func(s config.Service) bool { return s.Forward == "fullnat" })
	first, last, ok := c.Datapath.SNATPortRange()
	if !has || !ok {
		return warnings
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return warnings
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && first <= hi && lo <= last {
		warnings = append(warnings, config.Problem{Path: "datapath.snat_ports", Msg: fmt.Sprintf("warning: "+
			"%d-%d overlaps this host's net.ipv4.ip_local_port_range (%d-%d), where its own connections to the backends "+
			"take their source ports: a full NAT flow on the same port would take their replies; choose ports outside it", first, last, lo, hi)})
	}
	return warnings
}

// heldVIPs asks a halb running on socket which virtual IPs it holds as
// MASTER. No answer (no halb runs there) is an empty set.
func heldVIPs(ctx context.Context, socket string) map[netip.Addr]bool {
	held := map[netip.Addr]bool{}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, _, err := fetchStatus(ctx, socket)
	if err != nil {
		return held
	}
	for _, in := range st.Instances {
		if !strings.EqualFold(in.State, "MASTER") {
			continue
		}
		for _, v := range in.VirtualIPs {
			if p, err := netip.ParsePrefix(v); err == nil {
				held[p.Addr()] = true
			} else if a, err := netip.ParseAddr(v); err == nil {
				held[a] = true
			}
		}
	}
	return held
}

// checkHost runs hostWarnings and hostProblems, with their lines
// in the file at path: the warnings, and a *config.Error of the
// problems this host has with the file, nil when none.
func checkHost(ctx context.Context, path string, c *config.Config) ([]config.Problem, error) {
	addrs, err := vrrp.HostAddrs() // listed once for both; an error is hostWarnings' to say
	problems, natWarnings := hostProblems(c, addrs)
	warnings := append(hostWarnings(c, addrs, err, heldVIPs(ctx, c.Control.Socket)), natWarnings...)
	config.Locate(path, warnings)
	slices.SortStableFunc(warnings, func(a, b config.Problem) int { return cmp.Compare(a.Line, b.Line) })
	if len(problems) == 0 {
		return warnings, nil
	}
	config.Locate(path, problems)
	slices.SortStableFunc(problems, func(a, b config.Problem) int { return cmp.Compare(a.Line, b.Line) })
	return warnings, &config.Error{File: path, Problems: problems}
}
