package ipvs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/halb-lb/halb/service"
)

// connReader is a Kernel that can show IPVS's connection table; the Linux
// one reads procConns.
type connReader interface {
	Conns() (io.ReadCloser, error)
}

// procConns is where the kernel shows IPVS's connections, in the network
// namespace of the process.
const procConns = "/proc/net/ip_vs_conn"

// connScanMax bounds how many lines of the connection table one listing
// reads: IPVS may hold millions of connections, and the file is made as
// it is read. A larger table is listed in part, and the list says so.
const connScanMax = 1 << 20

// connLineMax is the longest line the connection table has: three
// IPv6 addresses in full, ports, state, expiry and a persistence engine's
// data (a SIP Call-ID) fit well within it.
const connLineMax = 1024

// conn is one line of the connection table.
type conn struct {
	proto                service.Protocol
	client, vip, backend netip.AddrPort
	state                string
	expires              int64 // seconds until IPVS forgets the connection
}

// Flows lists the connections IPVS holds for halb's services
// (service.FlowLister), as `ipvsadm -Lnc` shows them. IPVS keeps no
// packet count and no start time for a connection, only its state and
// when it expires, so a flow's age and packets are unknown (nil).
func (d *Datapath) Flows(ctx context.Context, q service.FlowQuery) (service.FlowList, error) {
	names, r, err := d.connSource()
	if err != nil {
		return service.FlowList{}, err
	}
	if r == nil {
		return service.FlowList{}, nil
	}
	defer r.Close()
	var out service.FlowList
	complete, bad, err := parseConns(ctx, r, connScanMax, func(c conn) {
		name, ok := names[service.Key{VIP: c.vip.Addr(), Port: c.vip.Port(), Proto: c.proto}]
		if !ok {
			return // not halb's
		}
		expires := c.expires
		out.Keep(q, service.Flow{Client: c.client, Key: service.Key{VIP: c.vip.Addr(), Port: c.vip.Port(), Proto: c.proto},
			Service: name, Backend: c.backend, State: c.state, ExpiresSeconds: &expires})
	})
	if err != nil {
		return service.FlowList{}, fmt.Errorf("read %s: %w", procConns, err)
	}
	if bad > 0 {
		d.log.Debug("ipvs connection lines not understood, skipped", "lines", bad)
	}
	out.Partial = !complete
	out.Sort()
	return out, nil
}

var _ service.FlowLister = (*Datapath)(nil)

// connSource is the names of the services of the last Apply, by key, and
// the connection table to read; no table (nil) when the kernel cannot
// show one.
func (d *Datapath) connSource() (map[service.Key]string, io.ReadCloser, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.k == nil {
		return nil, nil, fmt.Errorf("ipvs flows: %w", service.ErrClosed)
	}
	cr, ok := d.k.(connReader)
	if !ok {
		return nil, nil, nil
	}
	names := make(map[service.Key]string, len(d.want))
	for _, t := range d.want {
		names[t.key] = t.cfg
	}
	r, err := cr.Conns()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", procConns, err)
	}
	return names, r, nil
}

// parseConns reads the connection table as net/netfilter/ipvs/ip_vs_conn.c
// writes it, a header and then a line a connection:
//
//	Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
//	TCP C0000201 9C40 C633640A 0050 C000020B 0050 ESTABLISHED     899
//
// IPv4 addresses and every port in hex; IPv6 addresses written out in
// full (%pI6: eight groups of four hex digits), the backend's in its own
// family. It calls f with each TCP and UDP connection, at most scanMax
// lines, and reports whether it read the whole table, and how many lines
// it did not understand: skipped, as a line that the kernel cut short or
// a protocol halb never serves (SCTP) is no reason to show nothing.
func parseConns(ctx context.Context, r io.Reader, scanMax int, f func(conn)) (complete bool, bad int, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, connLineMax), connLineMax)
	for n := 0; sc.Scan(); n++ {
		if n >= scanMax {
			return false, bad, nil
		}
		if n%4096 == 0 && ctx.Err() != nil {
			return false, bad, ctx.Err()
		}
		line := sc.Text()
		if n == 0 && strings.HasPrefix(line, "Pro ") {
			continue
		}
		c, ok := parseConn(strings.Fields(line))
		if !ok {
			bad++
			continue
		}
		f(c)
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return false, bad + 1, fmt.Errorf("a line longer than %d bytes: not IPVS's connection table", connLineMax)
	}
	return sc.Err() == nil, bad, sc.Err()
}

// parseConn reads one connection line's fields; false for one it does
// not understand or a protocol other than TCP and UDP.
func parseConn(f []string) (conn, bool) {
	if len(f) < 9 {
		return conn{}, false
	}
	var c conn
	switch f[0] {
	case "TCP":
		c.proto = service.TCP
	case "UDP":
		c.proto = service.UDP
	default:
		return conn{}, false
	}
	var ok [3]bool
	c.client, ok[0] = connAddrPort(f[1], f[2])
	c.vip, ok[1] = connAddrPort(f[3], f[4])
	c.backend, ok[2] = connAddrPort(f[5], f[6])
	expires, err := strconv.ParseInt(f[8], 10, 64)
	if !ok[0] || !ok[1] || !ok[2] || err != nil || expires < 0 {
		return conn{}, false
	}
	c.state, c.expires = f[7], expires
	return c, true
}

// connAddrPort reads an address ("C0000201", or an IPv6 one in full) and
// a hex port ("0050").
func connAddrPort(addr, port string) (netip.AddrPort, bool) {
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil || len(port) != 4 {
		return netip.AddrPort{}, false
	}
	if strings.Contains(addr, ":") {
		a, err := netip.ParseAddr(addr)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(a, uint16(p)), true
	}
	ap, err := procAddrPort(addr + ":" + port)
	return ap, err == nil
}
