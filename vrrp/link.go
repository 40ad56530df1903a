package vrrp

import (
	"context"
	"net"
	"net/netip"
)

// link is all an Instance asks of the host: its interface and the ones it
// tracks, the addresses on them, the VRRP sockets, the VMAC, the virtual
// addresses and the frames that announce them. The instance's logic
// (instance.go) is pure over it, as mdlayher/arp's Client is over a
// net.PacketConn: link_linux.go implements it with netlink and sockets,
// and the tests without root run the same logic over a fake.
//
// One link serves one instance: it knows the instance's VRID, family and
// VIPs, and remembers which of the VIPs it added.
type link interface {
	// lookup returns the interface called name as it is now; an error
	// when there is none.
	lookup(name string) (iface, error)
	// addrs lists the addresses on the interface with index ifindex.
	addrs(ifindex int) ([]linkAddr, error)
	// watch subscribes to the changes of links and addresses and, once
	// subscribed, sends them on out until ctx ends. A subscription lost
	// on the way is renewed and reported as a change with lost set,
	// since changes were missed. close waits for what watch started.
	watch(ctx context.Context, out chan<- change) error

	// openAdverts opens a VRRP socket on ifi. In unicast mode it binds
	// to bind (unicast_src, which need not be on the host yet); with
	// receive false it only sends, and joins no multicast group.
	openAdverts(ifi iface, bind netip.Addr, receive bool) (advertConn, error)

	// ensureVMAC makes (or finds) the instance's VMAC on base, up.
	ensureVMAC(base iface) (iface, error)
	// removeVMAC deletes the instance's VMAC on base if halb made it.
	removeVMAC(base iface) error

	// addVIPs puts those of vips that are not on ifi there; those
	// already there without halb's mark are someone else's and come back
	// in foreign, untouched.
	addVIPs(ifi iface, vips []netip.Prefix) (foreign []netip.Prefix, err error)
	// removeVIPs takes off ifi the instance's VIPs that halb put there.
	removeVIPs(ifi iface) error

	// holdRoutes adds the instance's virtual routes and rules that are
	// not in place, marked as halb's; the error lists those the kernel
	// did not take (an interface or gateway missing), which a later call
	// tries again. One that someone else made is left as it is.
	holdRoutes() error
	// releaseRoutes removes the virtual routes and rules halb added.
	releaseRoutes() error

	// sendFrame sends one Ethernet frame (a gratuitous ARP or an
	// unsolicited NA) on ifi to dst.
	sendFrame(ifi iface, frame []byte, dst net.HardwareAddr) error
	// watchConflicts reads, on ifi, the claims of other hosts on the
	// VIPs (conflict.go) until its stop.
	watchConflicts(ifi iface, base net.HardwareAddr, lladdr netip.Addr,
		report func(conflictReport), due chan<- conflictReport) (conflictWatcher, error)

	// close releases what the link holds and waits for the goroutines
	// that watch started; ctx of watch must have ended.
	close()
}

// iface is an interface as the link sees it now.
type iface struct {
	net.Interface
	// up: administratively up and not operationally down.
	up bool
}

// linkAddr is one address on an interface; halb is set when halb put it
// there as a VIP.
type linkAddr struct {
	prefix netip.Prefix
	halb   bool
}

// change is one event of the link's watch.
type change struct {
	// name and index: a link of that name or index changed; with addr
	// set, an address on the link with that index did.
	name  string
	index int
	addr  bool
	// lost: the subscription was renewed and changes were missed.
	lost bool
}

// advertConn is one VRRP socket on one interface.
type advertConn interface {
	// send sends a from src to the group, or to every unicast peer.
	send(a *Advert, src netip.Addr) error
	// receive reads one advert into buf; net.ErrClosed once closed.
	receive(buf []byte) (packetIn, error)
	close() error
	// ifindex is the index of the interface the socket is bound to.
	ifindex() int
}

// packetIn is one received advert with what the receive checks need.
type packetIn struct {
	payload  []byte
	src, dst netip.Addr
	ttl      int
}

// conflictWatcher is a running watch for claims on the VIPs.
type conflictWatcher interface {
	// ifindex is the index of the interface it watches.
	ifindex() int
	// answer sends the announcement for a due claim r, unless the watch
	// has stopped; ok is false when nothing was sent.
	answer(r conflictReport) (_ conflictReport, ok bool)
	// stop ends the watch: no answer leaves after it returns.
	stop()
}
