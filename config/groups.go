package config

import (
	"fmt"
	"net/netip"
)

// Pairs is the VIP:port pairs s is served on: listen's (a service group,
// keepalived's virtual_server_group), or its vip and port. Each is a
// service of its own to a data path, with the same backends; the health
// of those backends is checked once, for s.
func (s Service) Pairs() []netip.AddrPort {
	if len(s.Listen) > 0 {
		return s.Listen
	}
	return []netip.AddrPort{netip.AddrPortFrom(s.VIP, uint16(s.Port))}
}

// HasVIP reports whether a is one of the VIPs s is served on.
func (s Service) HasVIP(a netip.Addr) bool {
	for _, p := range s.Pairs() {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

// firstVIP is the VIP whose family the service's other addresses must
// share.
func (s Service) firstVIP() netip.Addr {
	if len(s.Listen) > 0 {
		return s.Listen[0].Addr()
	}
	return s.VIP
}

// listenPort is the one port of the listen pairs, which backends that
// name none take; 0 when the pairs have several.
func (s Service) listenPort() int {
	port := s.Listen[0].Port()
	for _, p := range s.Listen[1:] {
		if p.Port() != port {
			return 0
		}
	}
	return int(port)
}

// serviceAddress checks the VIP and port of service s, or its listen
// pairs, which replace them; it reports whether every port is valid.
func (v *validator) serviceAddress(path string, s *Service) bool {
	if len(s.Listen) == 0 {
		v.unicast(path+".vip", s.VIP)
		return v.intRange(path+".port", s.Port, 1, 65535)
	}
	if s.VIP.IsValid() {
		v.errf(path+".vip", "is given with listen, which names the service's VIP:port pairs: remove vip and port, or write the pair in listen")
	}
	if s.Port != 0 {
		v.errf(path+".port", "is given with listen, which names the service's VIP:port pairs: remove vip and port, or write the pair in listen")
	}
	ok := true
	first := s.Listen[0].Addr()
	seen := map[netip.AddrPort]bool{}
	for i, p := range s.Listen {
		lpath := fmt.Sprintf("%s.listen[%d]", path, i)
		v.unicast(lpath, p.Addr())
		if p.Port() == 0 {
			v.errf(lpath, "%s needs a port from 1 to 65535, like 192.0.2.100:80", p)
			ok = false
		}
		switch {
		case p.Addr().Is6() != first.Is6():
			v.errf(lpath, "%s is %s but listen[0] is %s: a service group serves one family; put the other in a service of its own", p, family(p.Addr().Is6()), family(first.Is6()))
		case seen[p]:
			v.errf(lpath, "%s is listed twice", p)
		}
		seen[p] = true
	}
	return ok
}

// backendPort checks the port of backend b of service s; svcPortOK says
// the service's ports are valid.
func (v *validator) backendPort(bpath string, b Backend, s *Service, svcPortOK bool) {
	if b.Port == 0 && len(s.Listen) > 0 {
		v.errf(bpath+".port", "a port is required: the service's listen pairs have several ports, so there is no one port for the backend to take")
		return
	}
	if !v.intRange(bpath+".port", b.Port, 1, 65535) || !svcPortOK || (s.Forward != "dr" && s.Forward != "tun") {
		return
	}
	// DR and tunnelling hand the packet over unchanged: the backend
	// sees the VIP's port.
	for i, p := range s.Pairs() {
		if b.Port == int(p.Port()) {
			continue
		}
		if len(s.Listen) == 0 {
			v.errf(bpath+".port", "%d differs from the service port %d, but forward: %s cannot rewrite ports; use port %d or forward: nat", b.Port, s.Port, s.Forward, s.Port)
		} else {
			v.errf(bpath+".port", "%d differs from the port of listen[%d] %s, but forward: %s cannot rewrite ports: give every listen pair the backends' port, or use forward: nat", b.Port, i, p, s.Forward)
		}
		return
	}
}

// natGroup refuses forward nat or fullnat on the eBPF data path for
// service s of several listen pairs: the data path knows a NAT backend's
// replies by their source address, port and protocol alone (natBackends),
// and a backend of a group serves every pair, so its replies could go
// back as any of them. It reports whether it refused.
func (v *validator) natGroup(path string, s Service) bool {
	if len(s.Pairs()) < 2 {
		return false
	}
	v.errf(path+".listen", "forward: %s on the eBPF data path knows a backend's replies by their source address, port and protocol alone, "+
		"and with %d listen pairs could not tell which VIP:port they go back as: give each pair a service of its own with backends on "+
		"ports of their own, use forward: dr or tun, or datapath.mode: ipvs, which tracks each connection", s.Forward, len(s.Pairs()))
	return true
}
