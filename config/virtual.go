package config

import (
	"fmt"
	"math"
	"net/netip"
)

// The checks of what an instance holds while MASTER: its virtual IPs
// (each on the instance's interface or another), the excluded ones, the
// virtual routes and rules.

// vipPath is the field path of the j-th of in.HeldVIPs(): an entry of
// virtual_ips, then of virtual_ips_excluded.
func vipPath(path string, in *Instance, j int) string {
	if j < len(in.VirtualIPs) {
		return fmt.Sprintf("%s.virtual_ips[%d]", path, j)
	}
	return fmt.Sprintf("%s.virtual_ips_excluded[%d]", path, j-len(in.VirtualIPs))
}

// virtualIPs checks virtual_ips and virtual_ips_excluded: real unicast
// addresses, each listed once, the advert's all of one family (RFC 5798
// §2.1), the excluded of either, and the interfaces they name.
func (v *validator) virtualIPs(path string, in *Instance) {
	if len(in.VirtualIPs) == 0 {
		v.errf(path+".virtual_ips", "at least one virtual IP is required")
	}
	v6 := in.IPv6()
	seen := map[netip.Addr]bool{}
	for j, vip := range in.HeldVIPs() {
		vpath := vipPath(path, in, j)
		p := vip.Address
		v.unicast(vpath, p.Addr())
		switch {
		case j < len(in.VirtualIPs) && p.Addr().Is6() != v6:
			v.errf(vpath, "%s is %s but the instance's first virtual IP is %s: IPv4 and IPv6 need separate instances (RFC 5798 §2.1), "+
				"or list it under virtual_ips_excluded, which the advert does not carry", p, family(p.Addr().Is6()), family(v6))
		case seen[p.Addr()]:
			v.errf(vpath, "%s is listed twice", p.Addr())
		}
		seen[p.Addr()] = true
		if vip.Interface != "" {
			v.ifName(vpath+".interface", vip.Interface)
		}
	}
}

// virtualRoutes checks virtual_routes: a destination network, a gateway
// or an interface (or a blackhole), the addresses of the destination's
// family, and the kernel's ranges of table and metric.
func (v *validator) virtualRoutes(path string, in *Instance) {
	type key struct {
		to            netip.Prefix
		table, metric int
	}
	seen := map[key]int{}
	for j, r := range in.VirtualRoutes {
		rpath := fmt.Sprintf("%s.virtual_routes[%d]", path, j)
		if v.network(rpath+".to", r.To, "a destination is required: write to: 203.0.113.0/24 (0.0.0.0/0 or ::/0 for a default route)") {
			v.sameFamily(rpath+".via", r.Via, r.To)
			v.sameFamily(rpath+".src", r.Src, r.To)
		}
		if r.Interface != "" {
			v.ifName(rpath+".interface", r.Interface)
		}
		switch {
		case r.Blackhole && (r.Via.IsValid() || r.Interface != ""):
			v.errf(rpath+".blackhole", "a blackhole route drops its packets: remove via and interface, or set blackhole: false")
		case !r.Blackhole && !r.Via.IsValid() && r.Interface == "":
			v.errf(rpath, "a route needs via: GATEWAY, interface: NAME or both (or blackhole: true)")
		}
		v.uint32(rpath+".table", r.Table)
		v.uint32(rpath+".metric", r.Metric)
		k := key{r.To, r.Table, r.Metric}
		if first, dup := seen[k]; dup && r.To.IsValid() {
			v.errf(rpath, "the route to %s in table %d with metric %d is already virtual_routes[%d]: keep one", r.To, r.Table, r.Metric, first)
		} else {
			seen[k] = j
		}
	}
}

// virtualRules checks virtual_rules: from and to of one family, the
// table a rule looks up, and the kernel's ranges.
func (v *validator) virtualRules(path string, in *Instance) {
	seen := map[VirtualRule]int{}
	for j, r := range in.VirtualRules {
		rpath := fmt.Sprintf("%s.virtual_rules[%d]", path, j)
		for _, sel := range []struct {
			key string
			p   netip.Prefix
		}{{"from", r.From}, {"to", r.To}} {
			if sel.p.IsValid() {
				v.network(rpath+"."+sel.key, sel.p, "")
			}
		}
		if r.From.IsValid() && r.To.IsValid() && r.From.Addr().Is6() != r.To.Addr().Is6() {
			v.errf(rpath+".to", "%s is %s but from is %s: a rule matches one family; write two rules", r.To, family(r.To.Addr().Is6()), family(r.From.Addr().Is6()))
		}
		if r.Table == 0 {
			v.errf(rpath+".table", "a rule needs the routing table it looks up: write table: 100 (254 is main)")
		} else {
			v.uint32(rpath+".table", r.Table)
		}
		v.uint32(rpath+".priority", r.Priority)
		v.uint32(rpath+".fwmark", r.FWMark)
		for _, dev := range []struct{ key, name string }{{"iif", r.IIF}, {"oif", r.OIF}} {
			if dev.name != "" {
				v.ifName(rpath+"."+dev.key, dev.name)
			}
		}
		if first, dup := seen[r]; dup {
			v.errf(rpath, "is the same rule as virtual_rules[%d]: keep one", first)
		} else {
			seen[r] = j
		}
	}
}

// uint32 checks that n fits the kernel's 32-bit field.
func (v *validator) uint32(path string, n int) {
	if n < 0 || uint64(n) > math.MaxUint32 {
		v.errf(path, "%d is out of range: use 0..%d", n, uint64(math.MaxUint32))
	}
}

// network checks that p is set (else says required, when it is not "")
// and has no host bits, which the kernel refuses in a route or a rule.
func (v *validator) network(path string, p netip.Prefix, required string) bool {
	switch {
	case !p.IsValid():
		if required != "" {
			v.errf(path, "%s", required)
		}
		return false
	case p.Addr().Is4In6():
		v.errf(path, "%s is an IPv4-mapped IPv6 prefix: write it as IPv4", p)
		return false
	case p != p.Masked():
		v.errf(path, "%s has host bits set: write the network, %s", p, p.Masked())
		return false
	}
	return true
}

// sameFamily checks that a, when set, is a unicast address of p's family.
func (v *validator) sameFamily(path string, a netip.Addr, p netip.Prefix) {
	if !a.IsValid() {
		return
	}
	v.unicast(path, a)
	if a.Is6() != p.Addr().Is6() {
		v.errf(path, "%s is %s but the route to %s is %s", a, family(a.Is6()), p, family(p.Addr().Is6()))
	}
}

// String is the route as `ip route` would write it.
func (r VirtualRoute) String() string {
	s := r.To.String()
	if r.Blackhole {
		s = "blackhole " + s
	}
	if r.Via.IsValid() {
		s += " via " + r.Via.String()
	}
	if r.Interface != "" {
		s += " dev " + r.Interface
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.Table != 0 {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

// String is the rule as `ip rule` would write it.
func (r VirtualRule) String() string {
	s := "from all"
	if r.From.IsValid() {
		s = "from " + r.From.String()
	}
	if r.To.IsValid() {
		s += " to " + r.To.String()
	}
	if r.IIF != "" {
		s += " iif " + r.IIF
	}
	if r.OIF != "" {
		s += " oif " + r.OIF
	}
	if r.FWMark != 0 {
		s += fmt.Sprintf(" fwmark %#x", r.FWMark)
	}
	s += fmt.Sprintf(" lookup %d", r.Table)
	if r.Priority != 0 {
		s += fmt.Sprintf(" priority %d", r.Priority)
	}
	return s
}

// IPv6 reports whether the rule is an IPv6 one: the family of its from or
// to, else that of the instance it belongs to (v6).
func (r VirtualRule) IPv6(v6 bool) bool {
	switch {
	case r.From.IsValid():
		return r.From.Addr().Is6()
	case r.To.IsValid():
		return r.To.Addr().Is6()
	}
	return v6
}
