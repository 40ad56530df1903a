package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
)

// hostWarnings looks at the host `halb check` runs on for what a valid
// configuration would do wrong there, and changes nothing: a virtual IP
// that is already an address of a local interface, which halb would take
// over, and a backend or sorry backend this host has no route to, which
// halb runs without until a route appears. Parse stays free of them, so
// that a file can be checked anywhere; these are warnings, not problems.
//
// held lists the virtual IPs a running halb on this configuration's
// control socket holds as MASTER: those are on an interface because halb
// put them there.
func hostWarnings(h *netlink.Handle, c *config.Config, held map[netip.Addr]bool) []config.Problem {
	var warnings []config.Problem
	warn := func(path, format string, args ...any) {
		warnings = append(warnings, config.Problem{Path: path, Msg: "warning: " + fmt.Sprintf(format, args...)})
	}

	local, err := localAddrs(h)
	if err != nil {
		warn("", "cannot list this host's addresses, so virtual IPs already in use go unchecked: %v", err)
	}
	for i, in := range c.VRRP.Instances {
		for j, p := range in.VirtualIPs {
			ifname, ok := local[p.Addr()]
			if !ok || held[p.Addr()] {
				continue
			}
			warn(fmt.Sprintf("vrrp.instances[%d].virtual_ips[%d]", i, j),
				"%s is already an address of %s on this host, and no running halb holds it: halb would take it over "+
					"as a virtual IP that moves to the peer whenever this node is not MASTER; if it is the node's own "+
					"address (ssh reaches it), give the virtual IP an address of its own", p.Addr(), ifname)
		}
	}

	for i, s := range c.Services {
		path := fmt.Sprintf("services[%d]", i)
		for j, b := range s.Backends {
			if msg := noRoute(h, b.Address); msg != "" {
				warn(fmt.Sprintf("%s.backends[%d].address", path, j), "%s", msg)
			}
		}
		if s.SorryBackend.IsValid() {
			if msg := noRoute(h, s.SorryBackend.Addr()); msg != "" {
				warn(path+".sorry_backend", "%s", msg)
			}
		}
	}
	return warnings
}

// localAddrs maps every address of every interface of this host to the
// interface's name.
func localAddrs(h *netlink.Handle) (map[netip.Addr]string, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := map[netip.Addr]string{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		out[ip.Unmap()] = names[a.LinkIndex]
	}
	return out, nil
}

// noRoute says why this host cannot send to a, or "" when it can: the
// kernel's own route lookup (`ip route get`), so unreachable, prohibit and
// blackhole routes count as none.
func noRoute(h *netlink.Handle, a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	if _, err := h.RouteGet(a.AsSlice()); err != nil {
		return fmt.Sprintf("%s has no route from this host (%v): halb runs without it, reports it in `halb status`, "+
			"and sends to it once a route appears", a, err)
	}
	return ""
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

// checkHost runs hostWarnings in the network namespace `halb check` runs
// in, with their lines in the file at path.
func checkHost(ctx context.Context, path string, c *config.Config) []config.Problem {
	var warnings []config.Problem
	h, err := netlink.NewHandle()
	if err != nil {
		warnings = []config.Problem{{Msg: fmt.Sprintf("warning: cannot look at this host over netlink, so it is not checked: %v", err)}}
	} else {
		defer h.Close()
		warnings = hostWarnings(h, c, heldVIPs(ctx, c.Control.Socket))
	}
	config.Locate(path, warnings)
	slices.SortStableFunc(warnings, func(a, b config.Problem) int { return cmp.Compare(a.Line, b.Line) })
	return warnings
}
