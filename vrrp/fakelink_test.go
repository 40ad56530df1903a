package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// fakeLink is a link (link.go) held in memory: interfaces with their
// state and addresses that a test sets, and a record of everything the
// instance sent and changed. It lets the instance's logic run without
// root, as mdlayher/arp's tests run its Client over a fake PacketConn.
type fakeLink struct {
	vrid int
	v6   bool
	vips []netip.Prefix

	mu     sync.Mutex
	ifaces map[string]*fakeIface
	next   int // the index the next interface gets
	// openErr, when set, fails openAdverts; vmacErr fails ensureVMAC.
	openErr, vmacErr error
	conns            []*fakeConn
	adverts          []sentAdvert
	frames           []sentFrame
	watches          []*fakeWatch
	changes          chan<- change
	closed           bool
	// routeErr, when set, fails holdRoutes; routesHeld and routeCalls
	// record what the instance asked of the routes.
	routeErr   error
	routesHeld bool
	routeCalls int
	// linger, when set, makes a socket's reader wait that long after
	// the socket is closed before its read returns, as a slow kernel
	// might: a test sees whether Run waited for it.
	linger time.Duration
}

type fakeIface struct {
	ifc   iface
	addrs []linkAddr
}

type sentAdvert struct {
	ifindex  int
	src      netip.Addr
	priority uint8
}

type sentFrame struct {
	ifindex int
	frame   []byte
	dst     net.HardwareAddr
}

func newFakeLink(vrid int, v6 bool, vips []netip.Prefix) *fakeLink {
	return &fakeLink{vrid: vrid, v6: v6, vips: vips, ifaces: map[string]*fakeIface{}, next: 2}
}

// addIface makes an interface, up or down, with the given addresses (the
// host's own, not halb's).
func (f *fakeLink) addIface(name string, up bool, addrs ...string) iface {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx := f.next
	f.next++
	fi := &fakeIface{ifc: iface{Interface: net.Interface{Index: idx, Name: name, MTU: 1500,
		HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(idx)}}, up: up}}
	for _, a := range addrs {
		fi.addrs = append(fi.addrs, linkAddr{prefix: netip.MustParsePrefix(a)})
	}
	f.ifaces[name] = fi
	return fi.ifc
}

func (f *fakeLink) delIface(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ifaces, name)
}

func (f *fakeLink) setUp(name string, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ifaces[name].ifc.up = up
}

func (f *fakeLink) addAddr(name, prefix string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.ifaces[name]
	fi.addrs = append(fi.addrs, linkAddr{prefix: netip.MustParsePrefix(prefix)})
}

func (f *fakeLink) delAddr(name string, addr netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.ifaces[name]
	fi.addrs = slices.DeleteFunc(fi.addrs, func(a linkAddr) bool { return a.prefix.Addr() == addr })
}

// has reports whether addr is on the interface called name, and whether
// halb put it there.
func (f *fakeLink) has(name string, addr netip.Addr) (on, halb bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.ifaces[name]
	if fi == nil {
		return false, false
	}
	for _, a := range fi.addrs {
		if a.prefix.Addr() == addr {
			return true, a.halb
		}
	}
	return false, false
}

func (f *fakeLink) sentFrames() []sentFrame {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.frames)
}

func (f *fakeLink) sentAdverts() []sentAdvert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.adverts)
}

// openConns are the sockets the instance has open.
func (f *fakeLink) openConns() []*fakeConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fakeConn
	for _, c := range f.conns {
		if !c.isClosed() {
			out = append(out, c)
		}
	}
	return out
}

// notify sends a change to the instance's Run, as the kernel's events do.
func (f *fakeLink) notify(ctx context.Context, c change) {
	f.mu.Lock()
	ch := f.changes
	f.mu.Unlock()
	select {
	case ch <- c:
	case <-ctx.Done():
	}
}

// pendingChanges is how many changes Run has not taken yet.
func (f *fakeLink) pendingChanges() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.changes)
}

func (f *fakeLink) byIndex(index int) *fakeIface {
	for _, fi := range f.ifaces {
		if fi.ifc.Index == index {
			return fi
		}
	}
	return nil
}

func (f *fakeLink) lookup(name string) (iface, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.ifaces[name]
	if fi == nil {
		return iface{}, fmt.Errorf("link %s not found", name)
	}
	return fi.ifc, nil
}

func (f *fakeLink) addrs(ifindex int) ([]linkAddr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.byIndex(ifindex)
	if fi == nil {
		return nil, fmt.Errorf("no interface with index %d", ifindex)
	}
	return slices.Clone(fi.addrs), nil
}

func (f *fakeLink) watch(ctx context.Context, out chan<- change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes = out
	return nil
}

func (f *fakeLink) openAdverts(ifi iface, bind netip.Addr, receive bool) (advertConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.openErr != nil {
		return nil, f.openErr
	}
	c := &fakeConn{link: f, index: ifi.Index, bind: bind, receiving: receive, linger: f.linger,
		in: make(chan fakeRead, 16), done: make(chan struct{})}
	f.conns = append(f.conns, c)
	return c, nil
}

func (f *fakeLink) vmacName(base iface) string { return vmacName(f.vrid, f.v6, base.Index) }

func (f *fakeLink) ensureVMAC(base iface) (iface, error) {
	f.mu.Lock()
	if f.vmacErr != nil {
		defer f.mu.Unlock()
		return iface{}, f.vmacErr
	}
	fi := f.ifaces[f.vmacName(base)]
	f.mu.Unlock()
	if fi != nil {
		return fi.ifc, nil
	}
	ifc := f.addIface(f.vmacName(base), true)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ifaces[ifc.Name].ifc.HardwareAddr = virtualMAC(f.vrid, f.v6)
	return f.ifaces[ifc.Name].ifc, nil
}

func (f *fakeLink) removeVMAC(base iface) error {
	f.delIface(f.vmacName(base))
	return nil
}

func (f *fakeLink) addVIPs(ifi iface, vips []netip.Prefix) (foreign []netip.Prefix, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi := f.byIndex(ifi.Index)
	if fi == nil {
		return nil, fmt.Errorf("no interface with index %d", ifi.Index)
	}
	for _, p := range vips {
		i := slices.IndexFunc(fi.addrs, func(a linkAddr) bool { return a.prefix.Addr() == p.Addr() })
		switch {
		case i < 0:
			fi.addrs = append(fi.addrs, linkAddr{prefix: p, halb: true})
		case !fi.addrs[i].halb:
			foreign = append(foreign, p)
		}
	}
	return foreign, nil
}

func (f *fakeLink) removeVIPs(ifi iface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fi := f.byIndex(ifi.Index); fi != nil {
		fi.addrs = slices.DeleteFunc(fi.addrs, func(a linkAddr) bool { return a.halb })
	}
	return nil
}

// holdRoutes records the routes as held unless routeErr is set, as the
// kernel refuses a route whose interface or gateway is missing.
func (f *fakeLink) holdRoutes() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routeCalls++
	if f.routeErr != nil {
		return f.routeErr
	}
	f.routesHeld = true
	return nil
}

func (f *fakeLink) releaseRoutes() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routesHeld = false
	return nil
}

// routes reports whether the routes are held, and how often holdRoutes
// was called.
func (f *fakeLink) routes() (held bool, calls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.routesHeld, f.routeCalls
}

func (f *fakeLink) setRouteErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routeErr = err
}

func (f *fakeLink) sendFrame(ifi iface, frame []byte, dst net.HardwareAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, sentFrame{ifindex: ifi.Index, frame: slices.Clone(frame), dst: dst})
	return nil
}

func (f *fakeLink) watchConflicts(ifi iface, base net.HardwareAddr, lladdr netip.Addr,
	report func(conflictReport), due chan<- conflictReport) (conflictWatcher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWatch{index: ifi.Index, report: report, due: due}
	f.watches = append(f.watches, w)
	return w, nil
}

// conflictWatches are the conflict watches the instance started, in
// order.
func (f *fakeLink) conflictWatches() []*fakeWatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.watches)
}

func (f *fakeLink) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
}

// fakeConn is an advert socket: what the instance sends is recorded on
// its link; what a test puts in comes out of receive.
type fakeConn struct {
	link      *fakeLink
	index     int
	bind      netip.Addr
	receiving bool
	in        chan fakeRead
	done      chan struct{}
	once      sync.Once
	// linger: the read that the close ends returns that much later.
	// read is set once someone reads the socket, ended once that read
	// has returned after the close.
	linger      time.Duration
	read, ended atomic.Bool
}

// fakeRead is one result of receive: an advert, or an error.
type fakeRead struct {
	p   packetIn
	err error
}

func (c *fakeConn) send(a *Advert, src netip.Addr) error {
	c.link.mu.Lock()
	defer c.link.mu.Unlock()
	c.link.adverts = append(c.link.adverts, sentAdvert{ifindex: c.index, src: src, priority: a.Priority})
	return nil
}

func (c *fakeConn) receive(buf []byte) (packetIn, error) {
	c.read.Store(true)
	select {
	case r := <-c.in:
		return r.p, r.err
	case <-c.done:
		time.Sleep(c.linger)
		c.ended.Store(true)
		return packetIn{}, net.ErrClosed
	}
}

func (c *fakeConn) close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *fakeConn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *fakeConn) ifindex() int { return c.index }

// fakeWatch is a conflict watch whose claims a test makes up: claim
// reports one as the watch's reader does, and makes its answer due.
type fakeWatch struct {
	index  int
	report func(conflictReport)
	due    chan<- conflictReport

	mu      sync.Mutex
	stopped bool
	asked   int // calls of answer, stopped or not
	answers int // answers sent
}

// claim reports a claim on vip from mac, as the reader does on reading
// it; it returns the report whose answer comes due later.
func (w *fakeWatch) claim(vip netip.Addr, mac net.HardwareAddr, claims uint64) conflictReport {
	r := conflictReport{vip: vip, mac: mac, claims: claims, watch: w}
	w.report(r)
	r.due = true
	return r
}

func (w *fakeWatch) ifindex() int { return w.index }

func (w *fakeWatch) answer(r conflictReport) (conflictReport, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.asked++
	if w.stopped {
		return r, false
	}
	w.answers++
	r.due, r.answered = false, true
	return r, true
}

func (w *fakeWatch) isStopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}

// counts returns how often answer was called, and how many answers it
// sent.
func (w *fakeWatch) counts() (asked, answers int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.asked, w.answers
}

func (w *fakeWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
}

var errFake = errors.New("fake failure")
