package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
)

// halb removes only the routes and rules it added, as it does addresses
// (vip_linux.go): each carries the protocol halbRouteProto (RTM_PROTOCOL
// of a route, FRA_PROTOCOL of a rule; `ip route` shows "proto 104"), so
// that one the host or an operator made with the same destination is
// told apart, left alone and never deleted, even after a restart.
// keepalived marks its own with RTPROT_KEEPALIVED (18).
const halbRouteProto = 0x68

// routeSet puts an instance's virtual routes and rules in place and takes
// them away, through netlink, in the calling thread's network namespace.
type routeSet struct {
	routes []config.VirtualRoute
	rules  []config.VirtualRule
	v6     bool // the instance's family: that of a rule with no from or to
	log    *slog.Logger
	// foreign holds what was found made by someone else, logged once.
	foreign map[string]bool
}

func newRouteSet(cfg config.Instance, log *slog.Logger) *routeSet {
	return &routeSet{routes: cfg.VirtualRoutes, rules: cfg.VirtualRules, v6: cfg.IPv6(), log: log, foreign: map[string]bool{}}
}

// hold adds what is not in place; the error names what the kernel did
// not take.
func (s *routeSet) hold() error {
	var errs []error
	for _, r := range s.routes {
		if err := s.holdRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("route to %s: %w", r.To, err))
		}
	}
	for _, r := range s.rules {
		if err := s.holdRule(r); err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r.String(), err))
		}
	}
	return errors.Join(errs...)
}

// release deletes the routes and rules halb added; others stay.
func (s *routeSet) release() error {
	var errs []error
	for _, r := range s.routes {
		if err := releaseRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("route to %s: %w", r.To, err))
		}
	}
	for _, r := range s.rules {
		if err := s.releaseRule(r); err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r.String(), err))
		}
	}
	return errors.Join(errs...)
}

func (s *routeSet) holdRoute(r config.VirtualRoute) error {
	have, err := findRoutes(r)
	if err != nil {
		return err
	}
	switch {
	case slices.ContainsFunc(have, func(h netlink.Route) bool { return h.Protocol == halbRouteProto }):
		return nil
	case len(have) > 0:
		if key := "route " + r.To.String(); !s.foreign[key] {
			s.log.Warn("virtual route already in place and not added by halb; left as it is and never removed",
				"to", r.To.String(), "table", have[0].Table, "proto", int(have[0].Protocol))
			s.foreign[key] = true
		}
		return nil
	}
	kr, err := kernelRoute(r)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(kr); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

func releaseRoute(r config.VirtualRoute) error {
	have, err := findRoutes(r)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range have {
		if h.Protocol != halbRouteProto {
			continue
		}
		if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// findRoutes lists the routes in r's table to r's destination with r's
// metric, whoever made them.
func findRoutes(r config.VirtualRoute) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: routeTable(r.Table)}
	list, err := netlink.RouteListFiltered(familyOf(r.To.Addr().Is6()), filter, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netlink.Route
	for _, h := range list {
		if prefixOf(h.Dst, r.To.Addr().Is6()) == r.To && h.Priority == kernelMetric(r) {
			out = append(out, h)
		}
	}
	return out, nil
}

// kernelMetric is the metric the kernel gives r: IPv6 makes 0 its
// default, 1024 (IP6_RT_PRIO_USER).
func kernelMetric(r config.VirtualRoute) int {
	if r.Metric == 0 && r.To.Addr().Is6() {
		return 1024
	}
	return r.Metric
}

// kernelRoute is r as netlink adds it, marked as halb's. A route through
// an interface that is not there yet cannot be named: the error says so.
func kernelRoute(r config.VirtualRoute) (*netlink.Route, error) {
	kr := &netlink.Route{
		Dst:      ipNet(r.To),
		Table:    routeTable(r.Table),
		Priority: r.Metric,
		Protocol: halbRouteProto,
		Family:   familyOf(r.To.Addr().Is6()),
	}
	if r.Via.IsValid() {
		kr.Gw = r.Via.AsSlice()
	} else if !r.Blackhole {
		kr.Scope = netlink.SCOPE_LINK // as `ip route add … dev eth1` makes it
	}
	if r.Src.IsValid() {
		kr.Src = r.Src.AsSlice()
	}
	if r.Blackhole {
		kr.Type = unix.RTN_BLACKHOLE
	}
	if r.Interface != "" {
		l, err := netlink.LinkByName(r.Interface)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", r.Interface, err)
		}
		kr.LinkIndex = l.Attrs().Index
	}
	return kr, nil
}

func (s *routeSet) holdRule(r config.VirtualRule) error {
	have, err := s.findRules(r)
	if err != nil {
		return err
	}
	switch {
	case slices.ContainsFunc(have, func(h netlink.Rule) bool { return h.Protocol == halbRouteProto }):
		return nil
	case len(have) > 0:
		if key := "rule " + r.String(); !s.foreign[key] {
			s.log.Warn("virtual rule already in place and not added by halb; left as it is and never removed", "rule", r.String())
			s.foreign[key] = true
		}
		return nil
	}
	kr := s.kernelRule(r)
	if err := netlink.RuleAdd(kr); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

func (s *routeSet) releaseRule(r config.VirtualRule) error {
	have, err := s.findRules(r)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range have {
		if h.Protocol != halbRouteProto {
			continue
		}
		if err := netlink.RuleDel(&h); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// findRules lists the rules that match as r does, whoever made them.
func (s *routeSet) findRules(r config.VirtualRule) ([]netlink.Rule, error) {
	v6 := r.IPv6(s.v6)
	list, err := netlink.RuleList(familyOf(v6))
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	var out []netlink.Rule
	for _, h := range list {
		if sameRule(h, r, v6) {
			out = append(out, h)
		}
	}
	return out, nil
}

// sameRule reports whether the kernel's rule h matches as r does.
func sameRule(h netlink.Rule, r config.VirtualRule, v6 bool) bool {
	return h.Table == r.Table && (r.Priority == 0 || h.Priority == r.Priority) &&
		selector(optPrefix(h.Src)) == selector(r.From) && selector(optPrefix(h.Dst)) == selector(r.To) &&
		h.Mark == uint32(r.FWMark) && h.IifName == r.IIF && h.OifName == r.OIF
}

func (s *routeSet) kernelRule(r config.VirtualRule) *netlink.Rule {
	kr := netlink.NewRule()
	kr.Family = familyOf(r.IPv6(s.v6))
	kr.Table = r.Table
	if r.Priority != 0 {
		kr.Priority = r.Priority
	}
	if p := selector(r.From); p.IsValid() {
		kr.Src = ipNet(p)
	}
	if p := selector(r.To); p.IsValid() {
		kr.Dst = ipNet(p)
	}
	kr.Mark = uint32(r.FWMark)
	kr.IifName, kr.OifName = r.IIF, r.OIF
	kr.Protocol = halbRouteProto
	return kr
}

// routeTable is the kernel's table for the file's: 0 is main.
func routeTable(t int) int {
	if t == 0 {
		return unix.RT_TABLE_MAIN
	}
	return t
}

func familyOf(v6 bool) int {
	if v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf reads a route's destination; nil is the default route.
func prefixOf(n *net.IPNet, v6 bool) netip.Prefix {
	if n == nil {
		if v6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return optPrefix(n)
}

// optPrefix reads a route's destination or a rule's selector.
func optPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

// selector is a rule's from or to as the kernel keeps it: a zero-length
// one (0.0.0.0/0) matches all, as none does, and is listed as none.
func selector(p netip.Prefix) netip.Prefix {
	if p.Bits() == 0 {
		return netip.Prefix{}
	}
	return p
}
