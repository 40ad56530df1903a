package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
)

// kernelLink is the link of an instance on Linux: netlink for interfaces,
// addresses and the VMAC, raw IP sockets for the adverts (conn, below),
// a packet socket for the announcements. It works in the network
// namespace of the thread that calls it, as the instance's Run does.
type kernelLink struct {
	cfg    config.Instance
	log    *slog.Logger
	vips   *vipSet
	routes *routeSet

	// frames is the packet socket announcements leave on, kept open on
	// the interface with index framesOn until the link closes or that
	// interface changes.
	frames   *packet.Conn
	framesOn int

	wg sync.WaitGroup // watch's goroutine
}

func newKernelLink(cfg config.Instance, log *slog.Logger) *kernelLink {
	var all []netip.Prefix
	for _, v := range cfg.HeldVIPs() {
		all = append(all, v.Address)
	}
	return &kernelLink{cfg: cfg, log: log, vips: newVIPSet(all), routes: newRouteSet(cfg, log)}
}

func (k *kernelLink) lookup(name string) (iface, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return iface{}, err
	}
	return ifaceOf(l), nil
}

// ifaceOf is what the instance needs to know of a netlink link.
func ifaceOf(l netlink.Link) iface {
	a := l.Attrs()
	up := a.Flags&net.FlagUp != 0
	switch a.OperState {
	case netlink.OperDown, netlink.OperLowerLayerDown, netlink.OperNotPresent:
		up = false
	}
	return iface{Interface: net.Interface{Index: a.Index, Name: a.Name, MTU: a.MTU, HardwareAddr: a.HardwareAddr, Flags: a.Flags}, up: up}
}

// asNetlink names ifi for the vipSet and VMAC calls, which read only its
// index and name.
func asNetlink(ifi iface) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifi.Index, Name: ifi.Name}}
}

func (k *kernelLink) addrs(ifindex int) ([]linkAddr, error) {
	list, err := listAddrs(ifindex)
	if err != nil {
		return nil, err
	}
	out := make([]linkAddr, len(list))
	for i, e := range list {
		out[i] = linkAddr{prefix: e.prefix, halb: k.vips.owns(e.prefix.Addr()) && k.vips.isOwn(e)}
	}
	return out, nil
}

func (k *kernelLink) openAdverts(ifi iface, bind netip.Addr, receive bool) (advertConn, error) {
	ni := ifi.Interface
	c, err := openConn(&ni, k.cfg.IPv6(), bind, k.cfg.UnicastPeers, receive)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (k *kernelLink) ensureVMAC(base iface) (iface, error) {
	l, err := netlink.LinkByIndex(base.Index)
	if err != nil {
		return iface{}, fmt.Errorf("find %s for its VMAC: %w", base.Name, err)
	}
	vm, err := ensureVMAC(l, k.cfg.VRID, k.cfg.IPv6())
	if err != nil {
		return iface{}, err
	}
	return ifaceOf(vm), nil
}

func (k *kernelLink) removeVMAC(base iface) error {
	return removeVMAC(k.cfg.VRID, k.cfg.IPv6(), base.Index)
}

func (k *kernelLink) addVIPs(ifi iface, vips []netip.Prefix) ([]netip.Prefix, error) {
	return k.vips.add(asNetlink(ifi), vips)
}

func (k *kernelLink) holdRoutes() error { return k.routes.hold() }

func (k *kernelLink) releaseRoutes() error { return k.routes.release() }

func (k *kernelLink) removeVIPs(ifi iface) error {
	return k.vips.remove(asNetlink(ifi))
}

// sendFrame writes frame on a packet socket of ifi's; a socket that
// failed is closed, and the next frame opens a new one.
func (k *kernelLink) sendFrame(ifi iface, frame []byte, dst net.HardwareAddr) error {
	if k.frames != nil && k.framesOn != ifi.Index {
		k.closeFrames()
	}
	if k.frames == nil {
		ni := ifi.Interface
		c, err := packet.Listen(&ni, packet.Raw, 0, nil)
		if err != nil {
			return fmt.Errorf("open a packet socket on %s: %w", ifi.Name, err)
		}
		k.frames, k.framesOn = c, ifi.Index
	}
	if _, err := k.frames.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
		k.closeFrames()
		return err
	}
	return nil
}

func (k *kernelLink) closeFrames() {
	if k.frames != nil {
		k.frames.Close()
		k.frames = nil
	}
}

func (k *kernelLink) watchConflicts(ifi iface, base net.HardwareAddr, lladdr netip.Addr,
	report func(conflictReport), due chan<- conflictReport) (conflictWatcher, error) {
	ni := ifi.Interface
	w, err := startConflictWatch(&ni, base, lladdr, k.cfg.AdvertPrefixes(), report, due)
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (k *kernelLink) close() {
	k.closeFrames()
	k.wg.Wait()
}

// watch subscribes to link and address updates and forwards those of
// use to out, on a goroutine of its own (waited for by close). When the
// kernel drops a subscription (ENOBUFS on a busy host), it subscribes
// again and says so, since events were lost: without that the instance
// would be deaf to its interface.
func (k *kernelLink) watch(ctx context.Context, out chan<- change) error {
	done := make(chan struct{})
	onErr := func(err error) {
		select {
		case <-done:
			// Closing the subscription at the end interrupts its read.
		default:
			k.log.Error("netlink subscription", "err", err)
		}
	}
	subLinks := func(ch chan netlink.LinkUpdate) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr})
	}
	subAddrs := func(ch chan netlink.AddrUpdate) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr})
	}
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := subLinks(links); err != nil {
		close(done)
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	if err := subAddrs(addrs); err != nil {
		close(done)
		drain(links)
		return fmt.Errorf("subscribe to address updates: %w", err)
	}
	k.wg.Go(func() {
		// At the end the subscriptions close, and their goroutines
		// (vishvananda/netlink's) end once what they hold is read.
		defer func() {
			close(done)
			drain(links)
			drain(addrs)
		}()
		for {
			var c change
			select {
			case <-ctx.Done():
				return
			case u, ok := <-links:
				if !ok {
					links = resubscribe(ctx, k.log, subLinks)
					c.lost = true
					break
				}
				c = change{name: u.Attrs().Name, index: int(u.Index)}
			case u, ok := <-addrs:
				if !ok {
					addrs = resubscribe(ctx, k.log, subAddrs)
					c.lost = true
					break
				}
				c = change{index: u.LinkIndex, addr: true}
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
		}
	})
	return nil
}

// resubscribe retries a subscription until it succeeds, a few times a
// second, or ctx ends (nil then: nothing to read).
func resubscribe[U any](ctx context.Context, log *slog.Logger, sub func(chan U) error) chan U {
	for attempt := 1; ctx.Err() == nil; attempt++ {
		ch := make(chan U, 64)
		err := sub(ch)
		if err == nil {
			log.Warn("netlink subscription renewed", "attempt", attempt)
			return ch
		}
		log.Error("cannot renew netlink subscription", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}

// drain reads ch until it is closed; nil is no channel.
func drain[U any](ch chan U) {
	if ch == nil {
		return
	}
	for range ch {
	}
}

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

func (c *conn) ifindex() int { return c.ifi.Index }

func (c *conn) close() error {
	if c.v6 {
		return c.p6.Close()
	}
	return c.p4.Close()
}
