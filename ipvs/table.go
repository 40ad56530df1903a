package ipvs

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/service"
)

// tableReader is a Kernel that can also read its whole table, every
// service with its destinations, in one read. The Linux one reads
// /proc/net/ip_vs; netlink has no such dump (destinations are listed one
// service at a time). A resync that finds the table as the last pass left
// it costs that one read: no listing per service, no module check.
//
// The table read holds only what /proc/net/ip_vs shows: a service's
// address, port, protocol, scheduler and whether it is persistent; a
// destination's address, port, forwarding method and weight.
type tableReader interface {
	Table() (map[service.Key]*current, error)
}

// unchanged reports whether the table still holds what the last pass left
// in it, when nothing was asked of this pass that the last one did not do:
// then Apply has nothing to change, and the one table read is all it
// reads. The last pass must have ended without an error, so that what it
// wrote is in the kernel, and want must be what it wanted.
func (d *Datapath) unchanged(want []target) bool {
	r, ok := d.k.(tableReader)
	if !ok || !d.clean || !reflect.DeepEqual(want, d.want) {
		return false
	}
	have, err := r.Table()
	if err != nil {
		// The full pass reads over netlink instead; this error is halb's
		// own (the file is the kernel's), so it is worth a line.
		d.log.Warn("ipvs table could not be read whole; reading it service by service", "error", err)
		return false
	}
	if !holds(have, want, d.owned) || !samePersist(have, d.seen) {
		d.log.Debug("ipvs table differs from what the last pass left; reading it service by service")
		return false
	}
	d.log.Debug("ipvs table as the last pass left it", "services", len(want))
	return true
}

// settle reads the table whole right after a pass that ended without an
// error, while it holds what that pass wrote, and keeps what of it a
// resync cannot compare with the configuration: each persistent service's
// timeout, which /proc/net/ip_vs shows in jiffies. It also checks the
// reading against what the pass wrote: a table that does not read as
// written (a kernel whose text the parser misreads) leaves the pass
// unclean, so that every resync takes the long way, and says so.
func (d *Datapath) settle(want []target) {
	d.seen = nil
	r, ok := d.k.(tableReader)
	if !ok {
		return
	}
	have, err := r.Table()
	switch {
	case err != nil:
		d.log.Warn("ipvs table could not be read whole; every resync reads it service by service", "error", err)
		d.clean = false
	case !holds(have, want, d.owned):
		d.log.Warn("ipvs table read whole does not show what was just written; every resync reads it service by service")
		d.clean = false
	default:
		d.seen = make(map[service.Key]string, len(want))
		for _, t := range want {
			d.seen[t.key] = have[t.key].persist
		}
	}
}

// samePersist reports whether each service in seen shows the persistence
// it showed then.
func samePersist(have map[service.Key]*current, seen map[service.Key]string) bool {
	for k, p := range seen {
		if c := have[k]; c == nil || c.persist != p {
			return false
		}
	}
	return true
}

// holds reports whether the table read (have) holds each target as halb
// wrote it, as far as the read shows, and none of the services halb owns
// and no longer wants.
func holds(have map[service.Key]*current, want []target, owned keySet) bool {
	wanted := keySet{}
	for i := range want {
		t := &want[i]
		wanted[t.key] = true
		c := have[t.key]
		if c == nil || c.svc.Scheduler != t.svc.Scheduler ||
			c.svc.Flags&cfipvs.ServicePersistent != t.svc.Flags&cfipvs.ServicePersistent ||
			len(c.dests) != len(t.dests) {
			return false
		}
		for _, w := range t.dests {
			i := slices.IndexFunc(c.dests, func(h cfipvs.Destination) bool { return destKey(h) == destKey(w) })
			if i < 0 {
				return false
			}
			h := c.dests[i]
			if h.Weight != w.Weight || h.FwdMethod != w.FwdMethod && h.FwdMethod != cfipvs.Local {
				return false
			}
		}
	}
	for k := range owned {
		if !wanted[k] && have[k] != nil {
			return false
		}
	}
	return true
}

// procForwards are the forwarding methods as /proc/net/ip_vs names them
// (ip_vs_fwd_name in net/netfilter/ipvs/ip_vs_ctl.c).
var procForwards = map[string]cfipvs.ForwardType{
	"Masq":   cfipvs.Masquerade,
	"Local":  cfipvs.Local,
	"Tunnel": cfipvs.Tunnel,
	"Route":  cfipvs.DirectRoute,
}

// parseProcTable reads /proc/net/ip_vs: a header, then each service on a
// line of its own ("UDP  C000020B:0035 sh  persistent 75000 FFFFFFFF", the
// timeout in jiffies; IPv6 addresses as "[2001:0db8:0000:...]"), followed
// by its destinations ("  -> C6336415:0035      Route   1      0
// 0"). procShapes in table_test.go is a real kernel's. Firewall-mark and SCTP
// services, which halb never makes, are skipped with their destinations.
// Anything it does not understand is an error: the caller then reads the
// table the long way.
func parseProcTable(r io.Reader) (map[service.Key]*current, error) {
	have := map[service.Key]*current{}
	var cur *current // nil while skipping a service halb never makes
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case len(f) == 0 || n <= 3 && (strings.HasPrefix(line, "IP Virtual Server") ||
			strings.HasPrefix(line, "Prot ") || strings.HasPrefix(line, "  -> RemoteAddress")):
			continue
		case f[0] == "->":
			if len(f) < 4 {
				return nil, fmt.Errorf("line %d: %q is not a destination", n, line)
			}
			if cur == nil {
				continue
			}
			d, err := procDest(f)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			cur.dests = append(cur.dests, d)
		default:
			c, ok, err := procService(f)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			cur = nil
			if ok {
				k, _ := keyOf(c.svc)
				cur = &c
				have[k] = cur
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return have, nil
}

// procService reads a service line; false for one halb never makes.
func procService(f []string) (current, bool, error) {
	if len(f) < 3 {
		return current{}, false, fmt.Errorf("%q is not a service", strings.Join(f, " "))
	}
	var c current
	s := &c.svc
	switch f[0] {
	case "TCP":
		s.Protocol = cfipvs.TCP
	case "UDP":
		s.Protocol = cfipvs.UDP
	case "FWM", "SCTP":
		return c, false, nil
	default:
		return c, false, fmt.Errorf("protocol %q", f[0])
	}
	ap, err := procAddrPort(f[1])
	if err != nil {
		return c, false, err
	}
	s.Address, s.Port = ap.Addr(), ap.Port()
	s.Family = cfipvs.INET
	if s.Address.Is6() {
		s.Family = cfipvs.INET6
	}
	s.Scheduler = f[2]
	if i := slices.Index(f[3:], "persistent"); i >= 0 {
		s.Flags |= cfipvs.ServicePersistent
		c.persist = strings.Join(f[3+i+1:], " ")
	}
	return c, true, nil
}

// procDest reads a destination line: "->", address:port, method, weight.
func procDest(f []string) (cfipvs.Destination, error) {
	ap, err := procAddrPort(f[1])
	if err != nil {
		return cfipvs.Destination{}, err
	}
	fwd, ok := procForwards[f[2]]
	if !ok {
		return cfipvs.Destination{}, fmt.Errorf("forwarding method %q", f[2])
	}
	w, err := strconv.ParseUint(f[3], 10, 32)
	if err != nil {
		return cfipvs.Destination{}, fmt.Errorf("weight %q: %w", f[3], err)
	}
	d := cfipvs.Destination{Address: ap.Addr(), Port: ap.Port(), FwdMethod: fwd, Weight: uint32(w), Family: cfipvs.INET}
	if d.Address.Is6() {
		d.Family = cfipvs.INET6
	}
	return d, nil
}

// procAddrPort reads "C000020A:0050" (an IPv4 address and a port in hex)
// or "[2001:0db8:0000:0000:0000:0000:0000:0010]:01BB".
func procAddrPort(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("%q is not ADDRESS:PORT", s)
	}
	port, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port of %q: %w", s, err)
	}
	a := s[:i]
	if strings.HasPrefix(a, "[") && strings.HasSuffix(a, "]") {
		addr, err := netip.ParseAddr(a[1 : len(a)-1])
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address of %q: %w", s, err)
		}
		return netip.AddrPortFrom(addr, uint16(port)), nil
	}
	v, err := strconv.ParseUint(a, 16, 32)
	if err != nil || len(a) != 8 {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IPv4 address in hex", a)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(v))
	return netip.AddrPortFrom(netip.AddrFrom4(b), uint16(port)), nil
}
