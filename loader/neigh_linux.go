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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
	"github.com/halb-lb/halb/service"
)

// DR sends a backend's frames to its MAC, which the kernel's neighbour
// table knows once it has resolved the backend's address; the route to
// the backend names the interface. The data path keeps both (reach), kept
// true by netlink route, link, address and neighbour updates, so that an
// apply asks the kernel nothing it already knows. It asks at once for
// every MAC it lacks, and waits a little for the answers (neighbourWait)
// the first time it asks for each, so that its backends go live in that
// apply. When an update touches a backend's way it applies again only
// that backend's services; a MAC that comes or changes is written into
// the records at its address alone (refreshMACs), and only a service that
// waited for it is planned again, its table being the one thing a MAC
// changes. Nothing here runs on a clock but the retries of backends that
// cannot be served (retryPending) and the safety pass (safetyInterval).

// neighbourStates are the states in which an entry's MAC can be trusted.
const neighbourStates = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// Bounds of the background work.
const (
	applyDelay = 50 * time.Millisecond // gathers a burst of neighbour updates into one apply
	// neighbourWait bounds how long an apply waits for the answers to
	// the neighbours it asked for the first time, before it plans the
	// services: on a link the kernel has them in a millisecond or so, and
	// without the wait every backend would go live only in a second pass
	// over its services (at 1000 services of 100 backends, seconds). A
	// neighbour that does not answer costs it once, never again.
	neighbourWait = 1 * time.Second
	retryPending  = 5 * time.Second // asks again for MACs still missing
	resubscribeAt = 1 * time.Second // after the neighbour subscription fails
	// safetyInterval is how often the data path looks at everything
	// again though no event asked it to: the routes and the neighbour
	// table are read afresh and the services applied, in case an update
	// was lost or a change came without one (a sysctl). Events do the
	// rest, so it is rare: at 100 000 backends it costs a route lookup
	// each, about 1.6 s, which is 0.3 % of a core over the interval.
	safetyInterval = 10 * time.Minute
)

// neighbours is the neighbour table as one apply reads it: the Datapath's
// reach cache while netlink events keep it true, or else one dump per
// interface and family. It notes every entry the apply looks up, so that
// an event about one of them asks for an apply.
type neighbours struct {
	d     *Datapath
	cache map[[2]int]map[netip.Addr]net.HardwareAddr
}

// neighbourView starts the neighbour lookups of one apply, of all the
// services (all) or of some. d.mu is held.
func (d *Datapath) neighbourView(all bool) *neighbours {
	d.reach.mu.Lock()
	if all {
		d.reach.users, d.reach.services, d.reach.keys = nil, nil, nil
	}
	d.reach.asked = map[hop]bool{}
	d.reach.forwards = map[string]bool{}
	d.reach.mu.Unlock()
	return &neighbours{d: d}
}

// askNeighbours asks the kernel at once for the MAC of every DR backend
// of the services to apply (want, those in only when only is not nil)
// that the neighbour table lacks, but those served already with a MAC
// (which they keep, and which their planning asks for again), before any
// of them is written: the
// answers come while the apply runs, as neighbour updates that reach
// takes in under its own lock, so that the services written later find
// them, and the others are applied again as soon as they come. d.mu is
// held.
func (d *Datapath) askNeighbours(want map[service.Key]*service.Service, only map[service.Key]bool, n *neighbours) {
	for _, key := range sortedKeys(want) {
		s := want[key]
		if (only != nil && !only[key]) || s.Forward != service.DR {
			continue
		}
		d.reach.mu.Lock()
		d.reach.serve(key)
		d.reach.mu.Unlock()
		st := d.applied[key]
		for _, b := range s.Backends {
			addr := b.Addr.Unmap()
			if addr.Is4() != key.VIP.Unmap().Is4() || st.servedWithMAC(backendKey(s, b)) {
				continue
			}
			via, err := d.via(addr)
			if err != nil {
				continue // applyService says why
			}
			if mac, err := n.lookup(via.ifindex, addr); err == nil && mac == nil {
				d.solicit(via, addr, true)
			}
		}
	}
	d.awaitNeighbours()
}

// awaitNeighbours waits, at most neighbourWait, for the answers to the
// neighbours askNeighbours asked for the first time. d.mu is held: the
// answers come through neighChanged, which takes reach's lock alone.
func (d *Datapath) awaitNeighbours() {
	r := &d.reach
	r.mu.Lock()
	asked := len(r.awaiting)
	if asked == 0 {
		r.mu.Unlock()
		return
	}
	answered := make(chan struct{})
	r.answered = answered
	r.mu.Unlock()
	start := time.Now()
	timer := time.NewTimer(neighbourWait)
	defer timer.Stop()
	select {
	case <-answered:
	case <-timer.C:
	}
	r.mu.Lock()
	left := len(r.awaiting)
	r.awaiting, r.answered = nil, nil
	r.mu.Unlock()
	d.log.Debug("waited for the backends' macs", "asked", asked, "unanswered", left, "took", time.Since(start).Round(time.Millisecond))
}

// serve notes that the lookups from now on are for the service of key.
func (n *neighbours) serve(key service.Key) {
	n.d.reach.mu.Lock()
	defer n.d.reach.mu.Unlock()
	n.d.reach.serve(key)
	n.d.reach.serves++
}

// lookup returns addr's MAC on ifindex, or nil when the kernel has none
// worth using.
func (n *neighbours) lookup(ifindex int, addr netip.Addr) (net.HardwareAddr, error) {
	if mac, followed := n.d.reach.neighbour(hop{ifindex: ifindex, addr: addr}); followed {
		return mac, nil
	}
	family := netlink.FAMILY_V6
	if addr.Is4() {
		family = netlink.FAMILY_V4
	}
	dump := [2]int{ifindex, family}
	if n.cache == nil {
		n.cache = map[[2]int]map[netip.Addr]net.HardwareAddr{}
	}
	known, ok := n.cache[dump]
	if !ok {
		list, err := n.d.nl.NeighList(ifindex, family)
		if err != nil {
			return nil, fmt.Errorf("read the neighbour table: %w", err)
		}
		known = map[netip.Addr]net.HardwareAddr{}
		for _, e := range list {
			if k, mac, ok := usableNeigh(e); ok {
				known[k.addr] = net.HardwareAddr(mac[:])
			}
		}
		n.cache[dump] = known
	}
	return known[addr], nil
}

// neighbour notes that the service being applied uses key's address, and
// returns its MAC from the table when events keep it (followed).
func (r *reach) neighbour(key hop) (mac net.HardwareAddr, followed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.use(key.addr)
	if m, ok := r.neighs[key]; ok {
		mac = net.HardwareAddr(m[:])
	}
	return mac, r.followed
}

// usableNeigh is e's key and MAC when e is an entry whose MAC can be
// trusted.
func usableNeigh(e netlink.Neigh) (hop, [6]byte, bool) {
	a, ok := netip.AddrFromSlice(e.IP)
	if !ok || e.State&neighbourStates == 0 || len(e.HardwareAddr) != 6 {
		return hop{}, [6]byte{}, false
	}
	return hop{ifindex: e.LinkIndex, addr: a.Unmap()}, [6]byte(e.HardwareAddr), true
}

// reach is what the kernel said of the ways to the backends: the route to
// each backend address looked up, and the usable neighbour entries. While
// the netlink subscriptions run (followed) their events keep it true, so
// an apply that changes nothing asks the kernel nothing: a route update
// forgets the routes it covers, a link update the routes through that
// link, and the neighbour updates are the table itself. Without the
// subscriptions every apply asks again.
//
// It has a lock of its own, and with it the services the refresher is to
// apply again (dirty): the updates keep coming while an apply runs, which
// at 1000 services may take seconds, and a neighbour's answer then
// re-programs its services right after it. d.mu, when taken too, is taken
// first.
type reach struct {
	mu       sync.Mutex
	followed bool
	// gen moves whenever routes are forgotten: a lookup that raced it is
	// not kept.
	gen    uint64
	routes map[netip.Addr]cachedRoute
	neighs map[hop][6]byte
	// users are the services whose backends (or next hops) are at each
	// address the applies looked up, so that an update about one
	// re-programs them alone; serving is the service being applied.
	// A service is an index into keys (services), so that 100 000
	// backend addresses cost a short sorted slice each, not a map.
	users    map[netip.Addr][]int32
	services map[service.Key]int32
	keys     []service.Key
	serving  int32
	// asked are the neighbours the apply under way asked the kernel for,
	// each once.
	asked map[hop]bool
	// awaiting are the neighbours askNeighbours asked for the first time
	// and waits for; answered closes when the last one answers. waited
	// are all it ever waited for: it waits for each once.
	awaiting map[hop]bool
	answered chan struct{}
	waited   map[hop]bool
	// macs are the neighbours whose MAC came or changed since the
	// refresher last took them into the records (refreshMACs).
	macs map[hop]bool
	// links are the last state seen of each link (linkRoutesChanged).
	links map[int]linkState
	// hops are the next hops of TUN backends, true while unresolved.
	hops map[hop]bool
	// forwards is what the apply under way read of the interfaces'
	// forwarding sysctls (forwarding).
	forwards map[string]bool
	// dirty are the services the refresher is to apply again, all of
	// them when dirtyAll.
	dirty    map[service.Key]bool
	dirtyAll bool
	// causes are what the updates behind dirty were about ("route",
	// "neighbour", ...), for the refresher's log.
	causes []string
	// routeLookups counts the routes asked of the kernel, serves the
	// services applied and solicits the neighbours asked for, for the
	// tests.
	routeLookups, serves, solicits int
}

// use notes that the service being applied uses addr. r.mu is held.
func (r *reach) use(addr netip.Addr) {
	if r.users == nil {
		r.users = map[netip.Addr][]int32{}
	}
	u := r.users[addr]
	if i, found := slices.BinarySearch(u, r.serving); !found {
		r.users[addr] = slices.Insert(u, i, r.serving)
	}
}

// serve makes key the service being applied. r.mu is held.
func (r *reach) serve(key service.Key) {
	i, ok := r.services[key]
	if !ok {
		if r.services == nil {
			r.services = map[service.Key]int32{}
		}
		i = int32(len(r.keys))
		r.services[key] = i
		r.keys = append(r.keys, key)
	}
	r.serving = i
}

// usersOf adds the services that use addr to into. r.mu is held.
func (r *reach) usersOf(addr netip.Addr, into map[service.Key]bool) {
	for _, i := range r.users[addr] {
		if int(i) < len(r.keys) {
			into[r.keys[i]] = true
		}
	}
}

// linkState is what of a link decides the routes through it.
type linkState struct {
	up   bool
	oper uint8
	gone bool
}

func stateOf(l netlink.Link) linkState {
	a := l.Attrs()
	return linkState{up: a.Flags&net.FlagUp != 0, oper: uint8(a.OperState)}
}

// cachedRoute is the kernel's route to one address, or why it has none.
type cachedRoute struct {
	route netlink.Route
	err   error
}

// follow makes r kept by events from now: it forgets the routes and reads
// the neighbour table and the links' states once.
func (r *reach) follow(nl *netlink.Handle) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	list, err := nl.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		r.forgetLocked()
		return fmt.Errorf("read the neighbour table: %w", err)
	}
	links, err := nl.LinkList()
	if err != nil {
		r.forgetLocked()
		return fmt.Errorf("read the links: %w", err)
	}
	r.forgetLocked()
	for _, e := range list {
		if k, mac, ok := usableNeigh(e); ok {
			r.neighs[k] = mac
		}
	}
	r.links = map[int]linkState{}
	for _, l := range links {
		r.links[l.Attrs().Index] = stateOf(l)
	}
	r.followed = true
	return nil
}

// forget drops all it knows, as when nobody listens to the kernel any
// more.
func (r *reach) forget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forgetLocked()
}

func (r *reach) forgetLocked() {
	r.gen++
	r.followed = false
	r.links = nil
	r.routes = map[netip.Addr]cachedRoute{}
	r.neighs = map[hop][6]byte{}
}

// routeTo is the kernel's route to a backend at addr, looked up only when
// reach does not know it. d.mu is held.
func (d *Datapath) routeTo(addr netip.Addr) (netlink.Route, error) {
	r := &d.reach
	r.mu.Lock()
	r.use(addr)
	c, ok := r.routes[addr]
	gen := r.gen
	if !ok {
		r.routeLookups++
	}
	r.mu.Unlock()
	if ok {
		return c.route, c.err
	}
	routes, err := d.nl.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		c.err = d.noRoute(err)
	} else {
		c.route = routes[0]
	}
	r.mu.Lock()
	if r.followed && r.gen == gen {
		r.routes[addr] = c
	}
	r.mu.Unlock()
	return c.route, c.err
}

// routeChanged forgets the routes to the addresses u's destination
// covers, and returns the services that used them: they must be applied
// again.
func (d *Datapath) routeChanged(u netlink.RouteUpdate) map[service.Key]bool {
	var dst netip.Prefix
	if u.Dst != nil {
		ones, _ := u.Dst.Mask.Size()
		if a, ok := netip.AddrFromSlice(u.Dst.IP); ok {
			dst = netip.PrefixFrom(a.Unmap(), ones)
		}
	}
	d.reach.mu.Lock()
	defer d.reach.mu.Unlock()
	return d.reach.forgetRoutes(func(addr netip.Addr, _ cachedRoute) bool {
		// A default route (no destination) covers all.
		return !dst.IsValid() || dst.Contains(addr)
	})
}

// linkRoutesChanged forgets the routes through u's link and the failed
// lookups (the link may be what they lacked), and returns the services
// that used them, when the link came, went, or went up or down: the
// kernel drops the routes of a link that goes down without a route
// update for each. Other link updates (a statistic, an attribute) forget
// nothing.
func (d *Datapath) linkRoutesChanged(u netlink.LinkUpdate) map[service.Key]bool {
	d.reach.mu.Lock()
	defer d.reach.mu.Unlock()
	ifindex := int(u.Index)
	state := stateOf(u.Link)
	state.gone = u.Header.Type == unix.RTM_DELLINK
	if was, ok := d.reach.links[ifindex]; ok && was == state {
		return nil
	}
	if d.reach.links == nil {
		d.reach.links = map[int]linkState{}
	}
	d.reach.links[ifindex] = state
	return d.reach.forgetRoutes(func(_ netip.Addr, c cachedRoute) bool {
		return c.err != nil || c.route.LinkIndex == ifindex
	})
}

// addrChanged forgets the failed lookups and the routes without a
// source address of their family (TUN needs one): an address is what they
// may lack. A removed address takes the routes that named it as their
// source with it, and those updates come as route updates; VRRP moving a
// VIP forgets nothing else.
func (d *Datapath) addrChanged() map[service.Key]bool {
	d.reach.mu.Lock()
	defer d.reach.mu.Unlock()
	return d.reach.forgetRoutes(func(addr netip.Addr, c cachedRoute) bool {
		src, ok := netip.AddrFromSlice(c.route.Src)
		return c.err != nil || !ok || src.Unmap().Is4() != addr.Is4()
	})
}

// forgetRoutes drops the routes that match, and returns the services
// that use them. r.mu is held.
func (r *reach) forgetRoutes(match func(netip.Addr, cachedRoute) bool) map[service.Key]bool {
	r.gen++
	touched := map[service.Key]bool{}
	for addr, c := range r.routes {
		if match(addr, c) {
			delete(r.routes, addr)
			r.usersOf(addr, touched)
		}
	}
	return touched
}

// neighChanged takes u into the neighbour table, and tells whether its
// MAC came or changed for an address an apply looked up: the refresher
// is to take it into the records there (refreshMACs).
func (d *Datapath) neighChanged(u netlink.NeighUpdate) bool {
	d.reach.mu.Lock()
	defer d.reach.mu.Unlock()
	r := &d.reach
	key, mac, usable := usableNeigh(u.Neigh)
	if !usable {
		if a, ok := netip.AddrFromSlice(u.IP); ok {
			delete(r.neighs, hop{ifindex: u.LinkIndex, addr: a.Unmap()})
		}
		return false
	}
	r.answer(key)
	old, had := r.neighs[key]
	r.neighs[key] = mac
	if (had && old == mac) || len(r.users[key.addr]) == 0 {
		return false
	}
	if r.macs == nil {
		r.macs = map[hop]bool{}
	}
	r.macs[key] = true
	return true
}

// answer notes that the neighbour at key answered: an apply that waits
// for it waits no more once all it asked for have. r.mu is held.
func (r *reach) answer(key hop) {
	if !r.awaiting[key] {
		return
	}
	delete(r.awaiting, key)
	if len(r.awaiting) == 0 && r.answered != nil {
		close(r.answered)
		r.answered = nil
	}
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
// so the read runs on a thread in the Datapath's. It is read once per
// apply and interface (there is no netlink update for it: the safety
// pass and the retries see it change).
func (d *Datapath) forwarding(ifname string, v4 bool) (bool, error) {
	family := "ipv6"
	if v4 {
		family = "ipv4"
	}
	path := filepath.Join("/proc/sys/net", family, "conf", ifname, "forwarding")
	d.reach.mu.Lock()
	on, known := d.reach.forwards[path]
	d.reach.mu.Unlock()
	if known {
		return on, nil
	}
	var b []byte
	err := nsthread.Do(d.ns, func() (err error) {
		b, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	on = strings.TrimSpace(string(b)) != "0"
	d.reach.mu.Lock()
	if d.reach.forwards != nil {
		d.reach.forwards[path] = on
	}
	d.reach.mu.Unlock()
	return on, nil
}

// via finds the one of datapath.interfaces that reaches addr directly.
func (d *Datapath) via(addr netip.Addr) (*attachment, error) {
	r, err := d.routeTo(addr)
	if err != nil {
		return nil, err
	}
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
// out, and the answer comes back as a neighbour update. It asks once per
// apply. With await, an answer to a first ask is one awaitNeighbours
// waits for; it is noted before the ask, so that no answer comes first.
func (d *Datapath) solicit(a *attachment, addr netip.Addr, await bool) {
	key := hop{ifindex: a.ifindex, addr: addr}
	r := &d.reach
	r.mu.Lock()
	again := r.asked[key]
	if r.asked != nil {
		r.asked[key] = true
	}
	if !again {
		r.solicits++
		if await && r.followed && !r.waited[key] {
			if r.waited == nil {
				r.waited = map[hop]bool{}
			}
			if r.awaiting == nil {
				r.awaiting = map[hop]bool{}
			}
			r.waited[key], r.awaiting[key] = true, true
		}
	}
	r.mu.Unlock()
	if again {
		return
	}
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
// links until ctx ends. It applies again the services of a backend whose
// MAC appears or changes or whose route an update covers, and all when
// anything changes while some backend cannot be served (a route, an
// address or an interface may be what it lacked);
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
			d.startFollowing()
			d.forgetNexthops()
			d.linkChanged()
			d.poke("resubscription")
			d.follow(ctx, &u)
			d.stopFollowing()
			u.close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(resubscribeAt):
		}
	}
}

// startFollowing has reach kept by the subscriptions from now.
func (d *Datapath) startFollowing() {
	if err := d.reach.follow(d.nl); err != nil {
		d.log.Warn("cannot read the neighbour table, reading it at each apply", "err", err)
	}
}

// stopFollowing has every apply ask the kernel again, while nobody
// listens to it.
func (d *Datapath) stopFollowing() {
	d.reach.forget()
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
		case r, ok := <-u.routes:
			if !ok {
				return
			}
			d.forgetNexthops()
			d.pokeIf("route", d.routeChanged(r))
		case _, ok := <-u.addrs:
			if !ok {
				return
			}
			d.pokeIf("address", d.addrChanged())
		case l, ok := <-u.links:
			if !ok {
				return
			}
			d.linkChanged()
			d.pokeIf("link", d.linkRoutesChanged(l))
		case n, ok := <-u.neighs:
			if !ok {
				return
			}
			d.forgetNexthops()
			switch {
			case d.neighChanged(n):
				d.pokeMACs()
			case n.Type == unix.RTM_NEWNEIGH && n.State&neighbourStates != 0 && len(n.HardwareAddr) == 6 &&
				d.isHop(n.Neigh, true):
				d.poke("tun next hop")
			case n.Type == unix.RTM_DELNEIGH && d.isHop(n.Neigh, false):
				// The kernel forgot a TUN next hop (garbage
				// collection: it does not see the traffic XDP
				// sends there): ask for it again.
				d.poke("tun next hop")
			}
		}
	}
}

// pokeIf asks for an apply of the services an update touched the way to
// a backend of, or of all when some backend cannot be served: the update
// may be what it lacked.
func (d *Datapath) pokeIf(cause string, touched map[service.Key]bool) {
	if len(touched) > 0 {
		d.pokeServices(cause, touched)
	}
	d.pokeIfTroubled(cause)
}

// troubled are the services with a backend that has a problem.
func (d *Datapath) troubled() map[service.Key]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[service.Key]bool{}
	for k, st := range d.applied {
		if len(st.problems) > 0 {
			out[k] = true
		}
	}
	return out
}

// countPending counts the backends with a problem. d.mu is held.
func (d *Datapath) countPending() {
	n := 0
	for _, st := range d.applied {
		n += len(st.problems)
	}
	d.pending.Store(int64(n))
}

// pokeIfTroubled asks for an apply when some backend cannot be served:
// the change may be what it lacked.
func (d *Datapath) pokeIfTroubled(cause string) {
	if d.pending.Load() > 0 {
		d.poke(cause)
	}
}

// forgetNexthops drops the next hops the program caches for TUN backends:
// any route or neighbour may be one of theirs.
func (d *Datapath) forgetNexthops() {
	if err := d.lb.forgetNexthops(); err != nil {
		d.log.Warn("cannot make the data path look up tun next hops again", "err", err)
	}
}

// isHop reports whether n is the neighbour entry of a TUN next hop, one
// that was not resolved at the last apply when unresolved is set.
func (d *Datapath) isHop(n netlink.Neigh, unresolved bool) bool {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return false
	}
	d.reach.mu.Lock()
	defer d.reach.mu.Unlock()
	waiting, ok := d.reach.hops[hop{ifindex: n.LinkIndex, addr: addr.Unmap()}]
	return ok && (waiting || !unresolved)
}

// noteHop notes the next hop of a TUN backend, and whether it waits for
// its MAC.
func (r *reach) noteHop(h hop, unresolved bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hops == nil {
		r.hops = map[hop]bool{}
	}
	r.hops[h] = unresolved
}

// forgetHops starts the next hops of a full apply afresh.
func (r *reach) forgetHops() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hops = map[hop]bool{}
}

func macEqual(a, b []byte) bool { return string(a) == string(b) }

// poke asks the refresher for an apply of all the services, because of
// a change of cause (what the refresher logs the apply's problems under).
func (d *Datapath) poke(cause string) {
	r := &d.reach
	r.mu.Lock()
	r.dirty, r.dirtyAll = nil, true
	r.noteCause(cause)
	r.mu.Unlock()
	d.kick1()
}

// pokeMACs asks the refresher to take the MACs that came or changed
// into the records (reach.macs).
func (d *Datapath) pokeMACs() {
	r := &d.reach
	r.mu.Lock()
	r.noteCause("neighbour")
	r.mu.Unlock()
	d.kick1()
}

// pokeServices asks the refresher for an apply of some services.
func (d *Datapath) pokeServices(cause string, keys map[service.Key]bool) {
	r := &d.reach
	r.mu.Lock()
	r.noteCause(cause)
	if !r.dirtyAll {
		if r.dirty == nil {
			r.dirty = map[service.Key]bool{}
		}
		for k := range keys {
			r.dirty[k] = true
		}
	}
	r.mu.Unlock()
	d.kick1()
}

// noteCause adds cause to the causes of the next apply, once. r.mu is
// held.
func (r *reach) noteCause(cause string) {
	if !slices.Contains(r.causes, cause) {
		r.causes = append(r.causes, cause)
	}
}

// kick1 wakes the refresher, once however often it is called before it
// wakes.
func (d *Datapath) kick1() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// refresher applies the last services again when poked (those an update
// touched, or all), every retryPending those with a backend that cannot
// be served, and every safetyInterval all afresh, until ctx ends.
func (d *Datapath) refresher(ctx context.Context) {
	retry := time.NewTicker(retryPending)
	defer retry.Stop()
	safety := time.NewTicker(safetyInterval)
	defer safety.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			if troubled := d.troubled(); len(troubled) > 0 {
				d.reapplySome("retry of backends that cannot be served", troubled)
			}
		case <-safety.C:
			d.readAfresh()
			d.reapply("safety pass")
		case <-d.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(applyDelay):
			}
			d.reapplyDirty()
		}
	}
}

// reapplyDirty applies again the services the updates since the last
// apply touched, or all of them, logging its problems under what the
// updates were about ("apply after a route, neighbour change"). The MACs
// that came or changed go into the records at their addresses first;
// the services that waited for one of them are applied again.
func (d *Datapath) reapplyDirty() {
	r := &d.reach
	r.mu.Lock()
	only, all, macs := r.dirty, r.dirtyAll, r.macs
	why := "apply after a change"
	if len(r.causes) > 0 {
		why = "apply after a " + strings.Join(r.causes, ", ") + " change"
	}
	r.dirty, r.dirtyAll, r.causes, r.macs = nil, false, nil, nil
	r.mu.Unlock()
	if all {
		d.reapply(why)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.desired == nil {
		return
	}
	if len(macs) > 0 {
		if only == nil {
			only = map[service.Key]bool{}
		}
		for key := range d.refreshMACs(macs) {
			only[key] = true
		}
	}
	if len(only) > 0 {
		d.reapplyLocked(why, only)
	}
}

// readAfresh has the next apply ask the kernel again for every route and
// read the neighbour table anew.
func (d *Datapath) readAfresh() {
	d.reach.mu.Lock()
	followed := d.reach.followed
	d.reach.mu.Unlock()
	if !followed {
		return // every apply asks already
	}
	if err := d.reach.follow(d.nl); err != nil {
		d.log.Warn("cannot read the neighbour table, reading it at each apply", "err", err)
	}
}

// reapply applies the last services again. The problems Apply returned
// are the daemon's to report; only new ones are logged here.
func (d *Datapath) reapply(why string) { d.reapplySome(why, nil) }

// reapplySome applies again the services in only, or all when only is
// nil.
func (d *Datapath) reapplySome(why string, only map[service.Key]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.desired == nil {
		return
	}
	d.reapplyLocked(why, only)
}

// reapplyLocked is reapplySome with d.mu held.
func (d *Datapath) reapplyLocked(why string, only map[service.Key]bool) {
	err := errString(d.reconcileSome(only))
	if err != "" && err != d.lastErr {
		d.log.Warn(why, "err", err)
	}
	d.lastErr = err
}

// refreshMACs takes the MACs that came or changed for hops into the
// records of the DR backends at their addresses, and moves the next-hop
// generation once: a MAC changes a record, never a table, so the
// services that name the address are not planned again. It returns those
// that must be: a service with a backend there that waited for its MAC
// (joining the table is what the MAC changes for it), a TUN or NAT
// service waiting for a next hop, and one whose record could not be
// written. d.mu is held.
func (d *Datapath) refreshMACs(hops map[hop]bool) map[service.Key]bool {
	replan := map[service.Key]bool{}
	var queued []queuedRecord
	for h := range hops {
		mac, users, ok := d.reach.macAndUsers(h)
		if !ok {
			continue // gone again: the records keep the MAC they had
		}
		for _, key := range users {
			st := d.applied[key]
			switch {
			case st == nil:
			case st.waitsAt(h.addr):
				replan[key] = true
			case st.rec.Forward == halbForwardMode(ForwardDR):
				queued = d.queueMAC(st, h, mac, queued)
			}
		}
	}
	if len(queued) == 0 {
		return replan
	}
	for p := range d.writeBackends(queued) {
		d.log.Warn("cannot write a backend's new mac, applying its service again", "err", errors.Join(p.errs...))
		replan[p.st.key] = true
	}
	if err := d.maps.moveNexthopGen(); err != nil {
		d.log.Warn("cannot make the data path look up next hops again", "err", err)
	}
	return replan
}

// queueMAC queues the records of st's live DR backends at h, on h's
// interface, whose MAC is not mac.
func (d *Datapath) queueMAC(st *svcState, h hop, mac [6]byte, queued []queuedRecord) []queuedRecord {
	var p *servicePlan // for writeBackends, which tells a failed write by its plan
	at := st.backends.at(h.addr)
	for i := range at {
		be := &at[i]
		if be.tunnel() || int(be.rec.Ifindex) != h.ifindex || be.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE == 0 || be.rec.Mac == mac {
			continue
		}
		rec := be.rec
		rec.Mac = mac
		if p == nil {
			p = &servicePlan{st: st}
		}
		d.maps.queueBackend(be.id, rec, false)
		queued = append(queued, queuedRecord{p: p, be: be, old: be.rec})
		d.logMACChange(st, be.key(), be.rec.Mac, mac)
		be.rec = rec
	}
	return queued
}

// macAndUsers is h's MAC and the services an apply looked its address up
// for; ok is false when the neighbour table has no usable entry for h.
func (r *reach) macAndUsers(h hop) (mac [6]byte, users []service.Key, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	mac, ok = r.neighs[h]
	for _, i := range r.users[h.addr] {
		if int(i) < len(r.keys) {
			users = append(users, r.keys[i])
		}
	}
	return mac, users, ok
}
