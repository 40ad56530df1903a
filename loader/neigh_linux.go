package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
)

// DR sends a backend's frames to its MAC, which the kernel's neighbour
// table knows once it has resolved the backend's address. The data path
// asks the kernel to resolve what it lacks, listens to the neighbour
// table, and applies again when a backend's MAC appears or changes.

// neighbourStates are the states in which an entry's MAC can be trusted.
const neighbourStates = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// Bounds of the background work.
const (
	applyDelay    = 50 * time.Millisecond // gathers a burst of neighbour updates into one apply
	retryPending  = 5 * time.Second       // asks again for MACs still missing
	resubscribeAt = 1 * time.Second       // after the neighbour subscription fails
)

// neighbours caches the neighbour table during one apply, one dump per
// interface and family.
type neighbours struct {
	nl    *netlink.Handle
	cache map[[2]int]map[netip.Addr]net.HardwareAddr
}

// lookup returns addr's MAC on ifindex, or nil when the kernel has none
// worth using.
func (n *neighbours) lookup(ifindex int, addr netip.Addr) (net.HardwareAddr, error) {
	family := netlink.FAMILY_V6
	if addr.Is4() {
		family = netlink.FAMILY_V4
	}
	key := [2]int{ifindex, family}
	if n.cache == nil {
		n.cache = map[[2]int]map[netip.Addr]net.HardwareAddr{}
	}
	known, ok := n.cache[key]
	if !ok {
		list, err := n.nl.NeighList(ifindex, family)
		if err != nil {
			return nil, fmt.Errorf("read the neighbour table: %w", err)
		}
		known = map[netip.Addr]net.HardwareAddr{}
		for _, e := range list {
			a, ok := netip.AddrFromSlice(e.IP)
			if ok && e.State&neighbourStates != 0 && len(e.HardwareAddr) == 6 {
				known[a.Unmap()] = e.HardwareAddr
			}
		}
		n.cache[key] = known
	}
	return known[addr], nil
}

// hop is the next hop toward a TUN backend, on one of datapath.interfaces.
type hop struct {
	ifindex int
	addr    netip.Addr
}

// attachmentOf is the one of datapath.interfaces with ifindex, or nil.
func (d *Datapath) attachmentOf(ifindex int) *attachment {
	for _, a := range d.ifaces {
		if a.ifindex == ifindex {
			return a
		}
	}
	return nil
}

// linkName names interface ifindex for an error.
func (d *Datapath) linkName(ifindex int) string {
	if l, err := d.nl.LinkByIndex(ifindex); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

// forwarding tells whether ifname forwards the family of IPv4 (v4) or
// IPv6: bpf_fib_lookup refuses to route for an interface that does not.
// /proc/sys/net shows the network namespace of the thread that opens it,
// so the read runs on a thread in the Datapath's.
func (d *Datapath) forwarding(ifname string, v4 bool) (bool, error) {
	family := "ipv6"
	if v4 {
		family = "ipv4"
	}
	path := filepath.Join("/proc/sys/net", family, "conf", ifname, "forwarding")
	var b []byte
	err := nsthread.Do(d.ns, func() (err error) {
		b, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

// via finds the one of datapath.interfaces that reaches addr directly.
func (d *Datapath) via(addr netip.Addr) (*attachment, error) {
	routes, err := d.nl.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return nil, d.noRoute(err)
	}
	r := routes[0]
	if r.Gw != nil {
		return nil, fmt.Errorf("reached through the gateway %s: forward: dr needs the backend on the link of one of datapath.interfaces (%s); use forward: tun for a routed backend",
			r.Gw, strings.Join(d.cfg.Interfaces, ", "))
	}
	if a := d.attachmentOf(r.LinkIndex); a != nil {
		return a, nil
	}
	return nil, d.routedElsewhere(r.LinkIndex)
}

// noRoute says that the kernel has no route to a backend, and which of
// datapath.interfaces halb is still waiting for, which may be why.
func (d *Datapath) noRoute(err error) error {
	var missing string
	if w := d.waitingFor(); len(w) > 0 {
		missing = fmt.Sprintf("; datapath.interfaces %s missing", strings.Join(w, ", "))
	}
	if err != nil {
		return fmt.Errorf("no route (%w)%s", err, missing)
	}
	return errors.New("no route" + missing)
}

// routedElsewhere says that the kernel routes a backend through ifindex,
// which is none of datapath.interfaces.
func (d *Datapath) routedElsewhere(ifindex int) error {
	msg := fmt.Sprintf("routed through %s, which is not one of datapath.interfaces (%s): add it there, or route the backend through one of them",
		d.linkName(ifindex), strings.Join(d.cfg.Interfaces, ", "))
	if w := d.waitingFor(); len(w) > 0 {
		msg += fmt.Sprintf("; datapath.interfaces %s missing", strings.Join(w, ", "))
	}
	return errors.New(msg)
}

// solicit asks the kernel to resolve addr on a's interface, as if it had a
// packet for it (NTF_USE): an ARP request or a neighbour solicitation goes
// out, and the answer comes back as a neighbour update.
func (d *Datapath) solicit(a *attachment, addr netip.Addr) {
	err := d.nl.NeighSet(&netlink.Neigh{
		LinkIndex: a.ifindex,
		IP:        addr.AsSlice(),
		State:     netlink.NUD_NONE,
		Flags:     netlink.NTF_USE,
	})
	if err != nil {
		d.log.Warn("cannot ask for a backend's mac", "backend", addr.String(), "interface", a.Interface, "err", err)
	}
}

// watchNetwork follows the namespace's neighbours, routes, addresses and
// links until ctx ends. It applies again when the MAC of a backend
// appears or changes, or when anything changes while some backend cannot
// be served (a route, an address or an interface may be what it lacked);
// it makes the program ask the FIB again for TUN next hops when a route
// or a neighbour changes; and it hands link changes to linkChanged.
func (d *Datapath) watchNetwork(ctx context.Context) {
	for ctx.Err() == nil {
		u := subscriptions{
			neighs: make(chan netlink.NeighUpdate, 256),
			routes: make(chan netlink.RouteUpdate, 256),
			addrs:  make(chan netlink.AddrUpdate, 256),
			links:  make(chan netlink.LinkUpdate, 256),
			done:   make(chan struct{}),
		}
		if err := u.subscribe(ctx, d.ns, d.log); err != nil {
			d.log.Warn("cannot follow the neighbour table, routes, addresses and links, asking again every few seconds", "err", err)
		} else {
			// Whatever happened while nobody listened.
			d.forgetNexthops()
			d.linkChanged()
			d.poke()
			d.follow(ctx, &u)
			u.close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(resubscribeAt):
		}
	}
}

// subscriptions are the netlink updates watchNetwork reads.
type subscriptions struct {
	neighs chan netlink.NeighUpdate
	routes chan netlink.RouteUpdate
	addrs  chan netlink.AddrUpdate
	links  chan netlink.LinkUpdate
	done   chan struct{}
}

// subscribe starts all four subscriptions in ns, or none.
func (u *subscriptions) subscribe(ctx context.Context, ns netns.NsHandle, log *slog.Logger) error {
	onErr := func(err error) {
		if ctx.Err() == nil {
			log.Warn("netlink updates", "err", err)
		}
	}
	started := 0
	err := netlink.NeighSubscribeWithOptions(u.neighs, u.done, netlink.NeighSubscribeOptions{Namespace: &ns, ErrorCallback: onErr})
	if err == nil {
		started++
		err = netlink.RouteSubscribeWithOptions(u.routes, u.done, netlink.RouteSubscribeOptions{Namespace: &ns, ErrorCallback: onErr})
	}
	if err == nil {
		started++
		err = netlink.AddrSubscribeWithOptions(u.addrs, u.done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: onErr})
	}
	if err == nil {
		started++
		err = netlink.LinkSubscribeWithOptions(u.links, u.done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr})
	}
	if err == nil {
		return nil
	}
	// The ones that started end when done closes and close their
	// channels; the others never will.
	close(u.done)
	for i, c := range []func(){drain(u.neighs), drain(u.routes), drain(u.addrs)} {
		if i < started {
			c()
		}
	}
	return err
}

// close ends the subscriptions and waits until each has closed its channel.
func (u *subscriptions) close() {
	close(u.done)
	drain(u.neighs)()
	drain(u.routes)()
	drain(u.addrs)()
	drain(u.links)()
}

func drain[T any](c <-chan T) func() {
	return func() {
		for range c {
		}
	}
}

// follow reads updates until ctx ends or a subscription does.
func (d *Datapath) follow(ctx context.Context, u *subscriptions) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-u.routes:
			if !ok {
				return
			}
			d.forgetNexthops()
			d.pokeIfTroubled()
		case _, ok := <-u.addrs:
			if !ok {
				return
			}
			d.pokeIfTroubled()
		case _, ok := <-u.links:
			if !ok {
				return
			}
			d.linkChanged()
			d.pokeIfTroubled()
		case n, ok := <-u.neighs:
			if !ok {
				return
			}
			d.forgetNexthops()
			switch {
			case n.Type == unix.RTM_NEWNEIGH && n.State&neighbourStates != 0 && len(n.HardwareAddr) == 6 &&
				(d.changes(n.Neigh) || d.isHop(n.Neigh, true)):
				d.poke()
			case n.Type == unix.RTM_DELNEIGH && d.isHop(n.Neigh, false):
				// The kernel forgot a TUN next hop (garbage
				// collection: it does not see the traffic XDP
				// sends there): ask for it again.
				d.poke()
			}
		}
	}
}

// pokeIfTroubled asks for an apply when some backend cannot be served:
// the change may be what it lacked. Changes that take a way to a backend
// away are for the daemon's periodic apply to see.
func (d *Datapath) pokeIfTroubled() {
	d.mu.Lock()
	troubled := d.pending > 0
	d.mu.Unlock()
	if troubled {
		d.poke()
	}
}

// forgetNexthops drops the next hops the program caches for TUN backends:
// any route or neighbour may be one of theirs.
func (d *Datapath) forgetNexthops() {
	if err := d.lb.ForgetNexthops(); err != nil {
		d.log.Warn("cannot make the data path look up tun next hops again", "err", err)
	}
}

// changes reports whether n tells a backend's MAC that the maps lack.
func (d *Datapath) changes(n netlink.Neigh) bool {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return false
	}
	addr = addr.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, st := range d.applied {
		for ap, be := range st.backends {
			if ap.Addr() == addr && int(be.rec.Ifindex) == n.LinkIndex && !be.tunnel() &&
				(be.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE == 0 || !macEqual(be.rec.Mac[:], n.HardwareAddr)) {
				return true
			}
		}
	}
	return false
}

// isHop reports whether n is the neighbour entry of a TUN next hop, one
// that was not resolved at the last apply when unresolved is set.
func (d *Datapath) isHop(n netlink.Neigh, unresolved bool) bool {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	waiting, ok := d.hops[hop{ifindex: n.LinkIndex, addr: addr.Unmap()}]
	return ok && (waiting || !unresolved)
}

func macEqual(a, b []byte) bool { return string(a) == string(b) }

// poke asks the refresher for an apply.
func (d *Datapath) poke() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// refresher applies the last services again when poked, and every
// retryPending while some backend cannot be served, until ctx ends.
func (d *Datapath) refresher(ctx context.Context) {
	tick := time.NewTicker(retryPending)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			d.mu.Lock()
			pending := d.pending
			d.mu.Unlock()
			if pending == 0 {
				continue
			}
		case <-d.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(applyDelay):
			}
		}
		d.mu.Lock()
		if !d.closed && d.desired != nil {
			// The problems Apply returned are the daemon's to
			// report; only new ones are logged here.
			err := errString(d.reconcile())
			if err != "" && err != d.lastErr {
				d.log.Warn("apply after a neighbour change", "err", err)
			}
			d.lastErr = err
		}
		d.mu.Unlock()
	}
}
