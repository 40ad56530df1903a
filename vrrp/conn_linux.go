package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The VRRP multicast groups (RFC 5798 §5.1.1.2, §5.1.2.2).
var (
	group4 = netip.MustParseAddr("224.0.0.18")
	group6 = netip.MustParseAddr("ff02::12")
)

// tosNetworkControl is the precedence keepalived gives adverts, so that
// queues on a busy link drop them last.
const tosNetworkControl = 0xc0

// conn is one instance's VRRP socket on one interface.
type conn struct {
	v6    bool
	ifi   *net.Interface
	peers []netip.Addr // unicast mode; empty = multicast
	// joins: the conn receives adverts, so it joins the group in
	// multicast mode.
	joins bool
	p4    *ipv4.PacketConn
	p6    *ipv6.PacketConn
}

// packetIn is one received advert with what the receive checks need.
type packetIn struct {
	payload  []byte
	src, dst netip.Addr
	ttl      int
}

// openConn opens the socket. In unicast mode it binds to bind (unicast_src)
// with IP_FREEBIND, which lets the bind succeed while the address is not
// yet on the host: the address arriving later needs no new socket. This is
// exactly where keepalived fails at boot with "Cannot assign requested
// address".
//
// A send-only conn (receive false) joins no group: a VMAC's socket sends
// the adverts while the base interface's socket receives them.
func openConn(ifi *net.Interface, v6 bool, bind netip.Addr, peers []netip.Addr, receive bool) (*conn, error) {
	c := &conn{v6: v6, ifi: ifi, peers: peers, joins: receive}
	network, addr := "ip4:112", "0.0.0.0"
	if v6 {
		network, addr = "ip6:112", "::"
	}
	if len(peers) > 0 && bind.IsValid() {
		addr = bind.String()
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = setupSocket(int(fd), v6, ifi.Name)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("open VRRP socket on %s bound to %s: %w", ifi.Name, addr, err)
	}
	if err := c.configure(pc); err != nil {
		pc.Close()
		return nil, err
	}
	return c, nil
}

// setupSocket sets what must be set before bind.
func setupSocket(fd int, v6 bool, ifname string) error {
	// Only this interface's adverts: another instance on another link may
	// use the same VRID.
	if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname); err != nil {
		return fmt.Errorf("SO_BINDTODEVICE %s: %w", ifname, err)
	}
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return fmt.Errorf("IPV6_FREEBIND: %w", err)
		}
		// Only the groups this socket joined, not every group any socket
		// on the host joined.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0); err != nil {
			return fmt.Errorf("IPV6_MULTICAST_ALL: %w", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
		return fmt.Errorf("IP_FREEBIND: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0); err != nil {
		return fmt.Errorf("IP_MULTICAST_ALL: %w", err)
	}
	return nil
}

// setting is one socket option, named for the error that reports it.
type setting struct {
	what string
	set  func() error
}

func (c *conn) configure(pc net.PacketConn) error {
	var settings []setting
	if c.v6 {
		p := ipv6.NewPacketConn(pc)
		c.p6 = p
		settings = []setting{
			{"hop limit 255", func() error { return p.SetHopLimit(255) }},
			{"multicast hop limit 255", func() error { return p.SetMulticastHopLimit(255) }},
			{"traffic class", func() error { return p.SetTrafficClass(tosNetworkControl) }},
			{"multicast loopback off", func() error { return p.SetMulticastLoopback(false) }},
			{"multicast interface", func() error { return p.SetMulticastInterface(c.ifi) }},
			{"control messages", func() error {
				return p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true)
			}},
		}
		if len(c.peers) == 0 && c.joins {
			settings = append(settings, setting{"join ff02::12", func() error {
				return p.JoinGroup(c.ifi, &net.IPAddr{IP: group6.AsSlice()})
			}})
		}
	} else {
		p := ipv4.NewPacketConn(pc)
		c.p4 = p
		settings = []setting{
			{"TTL 255", func() error { return p.SetTTL(255) }},
			{"multicast TTL 255", func() error { return p.SetMulticastTTL(255) }},
			{"TOS", func() error { return p.SetTOS(tosNetworkControl) }},
			{"multicast loopback off", func() error { return p.SetMulticastLoopback(false) }},
			{"multicast interface", func() error { return p.SetMulticastInterface(c.ifi) }},
			{"control messages", func() error {
				return p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true)
			}},
		}
		if len(c.peers) == 0 && c.joins {
			settings = append(settings, setting{"join 224.0.0.18", func() error {
				return p.JoinGroup(c.ifi, &net.IPAddr{IP: group4.AsSlice()})
			}})
		}
	}
	for _, s := range settings {
		if err := s.set(); err != nil {
			return fmt.Errorf("%s on %s: %w", s.what, c.ifi.Name, err)
		}
	}
	return nil
}

// send sends one advert from src to the group, or to every peer. The
// source and interface go with every write so that the checksum, computed
// over src, matches what leaves.
func (c *conn) send(a *Advert, src netip.Addr) error {
	dsts := c.peers
	if len(dsts) == 0 {
		dsts = []netip.Addr{group4}
		if c.v6 {
			dsts = []netip.Addr{group6}
		}
	}
	var errs []error
	buf := make([]byte, 0, 64)
	for _, dst := range dsts {
		b, err := a.Marshal(buf[:0], src, dst)
		if err != nil {
			return fmt.Errorf("marshal advert: %w", err)
		}
		to := &net.IPAddr{IP: dst.AsSlice()}
		if c.v6 {
			if dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() {
				to.Zone = c.ifi.Name
			}
			_, err = c.p6.WriteTo(b, &ipv6.ControlMessage{Src: src.AsSlice(), IfIndex: c.ifi.Index, HopLimit: 255}, to)
		} else {
			_, err = c.p4.WriteTo(b, &ipv4.ControlMessage{Src: src.AsSlice(), IfIndex: c.ifi.Index}, to)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("send advert to %s on %s: %w", dst, c.ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// receive reads one advert. It returns net.ErrClosed once the conn is
// closed.
func (c *conn) receive(buf []byte) (packetIn, error) {
	var (
		n    int
		from net.Addr
		err  error
		in   packetIn
	)
	if c.v6 {
		var cm *ipv6.ControlMessage
		n, cm, from, err = c.p6.ReadFrom(buf)
		if cm != nil {
			in.ttl = cm.HopLimit
			in.dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	} else {
		var cm *ipv4.ControlMessage
		n, cm, from, err = c.p4.ReadFrom(buf)
		if cm != nil {
			in.ttl = cm.TTL
			in.dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	}
	if err != nil {
		return in, err
	}
	if ip, ok := from.(*net.IPAddr); ok {
		in.src, _ = netip.AddrFromSlice(ip.IP)
		in.src = in.src.Unmap()
	}
	in.dst = in.dst.Unmap()
	in.payload = append([]byte(nil), buf[:n]...)
	return in, nil
}

func (c *conn) close() error {
	if c.v6 {
		return c.p6.Close()
	}
	return c.p4.Close()
}
