package loader

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/maglev"
	"github.com/halb-lb/halb/service"
)

// svcState is a service as the maps hold it.
type svcState struct {
	name     string
	key      service.Key
	id       uint32
	rec      halbService
	backends backendSet
	// table is the signature of the Maglev table last written; zero
	// after a restart, when the table in the kernel is read back and
	// compared before it is written again.
	table tableSig
	// problems are the backends the data path cannot serve now, or not
	// fully, and why; those among backends keep their id and record,
	// inactive (but a TUN backend waiting for its next hop).
	problems map[netip.AddrPort]*problem
	// nat: forward: nat, whose backends' replies halb_nat_replies
	// translates back.
	nat bool
	// fullnat: forward: fullnat, whose replies halb_fnat translates
	// back (nat is set too).
	fullnat bool
}

// problem is why a backend is not served: the host gives no way to it
// (no route, routed elsewhere, no source address, forwarding off, its
// interface missing), or the neighbour table lacks its MAC or its next
// hop's yet. None of these is the configuration's fault, and all can mend
// without halb: at boot routes and interfaces come late. So a backend
// with a problem is reported, not refused, and tried again on the next
// netlink event and every retryPending.
type problem struct {
	reason string
	// wait: the kernel was asked to resolve a MAC and the answer should
	// come by itself; logged only if it has not come by the next retry.
	wait   bool
	weight uint32 // configured, for Status
	since  time.Time
	logged bool
}

// beState is a backend as the maps hold it: its id and its record, which
// holds its key (address and port) from the moment it takes the id
// (stubRecord), and the interface it is reached through (ifindex).
type beState struct {
	id  uint32
	rec halbBackend
}

// key is the backend's identity within its service (backendKey).
func (b *beState) key() netip.AddrPort {
	return netip.AddrPortFrom(addrFrom(b.rec.Addr, b.rec.Family), b.rec.Port)
}

// stubRecord is the record of a backend that took an id and is not
// written yet: its key and service, inactive, so that the key is known
// even when the first write fails.
func stubRecord(ap netip.AddrPort, service uint32) halbBackend {
	addr, family, _ := addrOf(ap.Addr())
	return halbBackend{Addr: addr, Family: family, Port: ap.Port(), Service: service}
}

// stateSlab hands out the states of the services an Apply adds from one
// allocation. They live as long as the services, and each allocated
// alone would share its heap page with what the Apply allocates and
// frees of their size (a wantBackend is as large): 1000 new services
// would hold some 1000 pages of 8 KiB that are otherwise free. A state
// of a service removed later stays until the whole slab is unused.
type stateSlab []svcState

// newStateSlab is a slab for the services of keys not in applied yet.
func newStateSlab(keys []service.Key, applied map[service.Key]*svcState) stateSlab {
	n := 0
	for _, key := range keys {
		if applied[key] == nil {
			n++
		}
	}
	return make(stateSlab, 0, n)
}

// next is a zero state from the slab, or a new one when it is used up.
func (s *stateSlab) next() *svcState {
	if len(*s) == cap(*s) {
		return new(svcState)
	}
	*s = (*s)[:len(*s)+1]
	return &(*s)[len(*s)-1]
}

// backendSet is a service's backends as the maps hold them, in key
// order: values in a slice, some 64 bytes a backend, where a map of
// pointers to them took some 150 (100 000 backends: 6 MB of heap, not 15).
// A *beState taken from it is good until the set changes (add, compact).
type backendSet []beState

// find is where ap is, or would be, in s. It compares ap with the
// records' bytes (compareKey) rather than with their keys: making a
// key for each comparison was a third of the planning of a one-backend
// change to a service of 1000 (four searches a backend).
func (s backendSet) find(ap netip.AddrPort) (int, bool) {
	if ap.Addr().Zone() != "" {
		// No record has a zone: only a key compares with it.
		return slices.BinarySearchFunc(s, ap, func(b beState, ap netip.AddrPort) int { return b.key().Compare(ap) })
	}
	k := keyBytesOf(ap)
	i, j := 0, len(s)
	for i < j {
		h := int(uint(i+j) >> 1)
		if s[h].compareKey(&k) < 0 {
			i = h + 1
		} else {
			j = h
		}
	}
	return i, i < len(s) && s[i].compareKey(&k) == 0
}

// keyBytes is a backend key as its record holds it: the address
// IPv4-mapped, in two halves.
type keyBytes struct {
	v6     bool
	hi, lo uint64
	port   uint16
}

func keyBytesOf(ap netip.AddrPort) keyBytes {
	a := ap.Addr().As16()
	return keyBytes{v6: !ap.Addr().Is4(), hi: binary.BigEndian.Uint64(a[:8]), lo: binary.BigEndian.Uint64(a[8:]), port: ap.Port()}
}

// compareKey orders b's key and k as netip.AddrPort.Compare does: IPv4
// before IPv6, then the address, then the port.
func (b *beState) compareKey(k *keyBytes) int {
	if v6 := b.rec.Family != halbFamilyFAMILY_IPV4; v6 != k.v6 {
		if v6 {
			return 1
		}
		return -1
	}
	a := &b.rec.Addr.Bytes
	if hi := binary.BigEndian.Uint64(a[:8]); hi != k.hi {
		return cmp.Compare(hi, k.hi)
	}
	if lo := binary.BigEndian.Uint64(a[8:]); lo != k.lo {
		return cmp.Compare(lo, k.lo)
	}
	return cmp.Compare(b.rec.Port, k.port)
}

// get is the backend of key ap, or nil.
func (s backendSet) get(ap netip.AddrPort) *beState {
	if i, ok := s.find(ap); ok {
		return &s[i]
	}
	return nil
}

// inOrder looks up the backends of keys given in ascending order, as the
// steps that walk a service's backends do: each get takes a step or two
// of a merge of the keys with s rather than a search.
func (s backendSet) inOrder() *setWalk { return &setWalk{s: s} }

// setWalk is inOrder's walk: at is where the next key may be.
type setWalk struct {
	s  backendSet
	at int
}

// get is the backend of key ap, or nil. A key before the last one asked
// for is searched for.
func (w *setWalk) get(ap netip.AddrPort) *beState {
	if ap.Addr().Zone() != "" {
		return w.s.get(ap)
	}
	k := keyBytesOf(ap)
	i := w.at
	if i > 0 && w.s[i-1].compareKey(&k) >= 0 {
		i, _ = w.s.find(ap)
	}
	for i < len(w.s) && w.s[i].compareKey(&k) < 0 {
		i++
	}
	w.at = i
	if i < len(w.s) && w.s[i].compareKey(&k) == 0 {
		w.at = i + 1
		return &w.s[i]
	}
	return nil
}

// at are the backends at addr, whatever their port.
func (s backendSet) at(addr netip.Addr) []beState {
	i, _ := s.find(netip.AddrPortFrom(addr, 0))
	j := i
	for j < len(s) && s[j].key().Addr() == addr {
		j++
	}
	return s[i:j]
}

// add puts backends not in s yet into it, in key order, and returns it.
// It grows the slice to fit them exactly: a service's backends change
// rarely, and slack kept for growth would be kept for good.
func (s backendSet) add(more []beState) backendSet {
	if len(more) == 0 {
		return s
	}
	if cap(s)-len(s) < len(more) {
		s = append(make(backendSet, 0, len(s)+len(more)), s...)
	}
	s = append(s, more...)
	slices.SortFunc(s, func(a, b beState) int { return a.key().Compare(b.key()) })
	return s
}

// keys are the backends' keys, in order.
func (s backendSet) keys() []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i := range s {
		out[i] = s[i].key()
	}
	return out
}

// compact drops the backends whose id is 0 (freed) and returns s.
func (s backendSet) compact() backendSet {
	s = slices.DeleteFunc(s, func(b beState) bool { return b.id == 0 })
	if cap(s) > 2*len(s)+8 {
		s = slices.Clone(s)
	}
	return s
}

func (b *beState) live() bool {
	return b.rec.Weight > 0 && b.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE != 0
}

// servedWithMAC reports whether st (nil for a new service) serves its
// backend of key ap with a MAC, and has no problem with it.
func (st *svcState) servedWithMAC(ap netip.AddrPort) bool {
	if st == nil || st.problems[ap] != nil {
		return false
	}
	be := st.backends.get(ap)
	return be != nil && be.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE != 0 && be.rec.Mac != [6]byte{}
}

// tunnel tells a TUN backend, which has an outer source address.
func (b *beState) tunnel() bool { return b.rec.Src != halbAddr{} }

func (s *svcState) String() string {
	if s.name == "" {
		return s.key.String()
	}
	return s.name + " (" + s.key.String() + ")"
}

// Apply makes the maps serve exactly services, changing only what differs:
// a service whose backends and weights are unchanged keeps its Maglev table
// and its flows untouched. A backend of weight 0 is drained: its flows
// stay, and it gets no new ones. A backend whose MAC is not in the
// neighbour table yet is asked for and joins its service's table when the
// answer comes.
//
// forward: tun and nat backends may be anywhere the kernel routes to out
// of one of datapath.interfaces; the next hop's MAC comes from the
// kernel's FIB for each packet, and the data path asks the kernel to
// resolve the next hops it does not know yet. A NAT backend's replies are
// translated back by their source address, port and protocol
// (halb_nat_replies, written from the services alone): one of them in two
// NAT services is an error, and the first service in key order keeps it.
//
// A service the data path cannot serve (an IPVS-only scheduler) is left out and reported in the error (errors.Is
// service.ErrUnsupported); the rest is applied all the same. A backend it cannot
// reach now (DR: not on the link layer of one of datapath.interfaces;
// TUN: not routed through one of them, or through one that does not
// forward, which the program cannot route for) is no error: the host may
// still be bringing its network up. It is left out of its service's
// table, so that new flows go to the backends that can be reached,
// reported in Status with the reason, and tried again at each route,
// address, link or neighbour change and every retryPending.
func (d *Datapath) Apply(ctx context.Context, services []service.Service) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("apply: %w", service.ErrClosed)
	}
	var err error
	if !d.unchanged(services) {
		d.desired = newDesired(services)
		d.natServed.Store(slices.ContainsFunc(services, translates))
		err = d.reconcile()
		d.lastErr = errString(err)
	}
	if len(d.swap) > 0 {
		err = errors.Join(err, d.swapPrograms())
	}
	return err
}

// translates reports whether s rewrites addresses, so that its replies
// come back through the balancer and may wait for a next hop.
func translates(s service.Service) bool {
	return s.Forward == service.NAT || s.Forward == service.FullNAT
}

// unchanged reports whether services are what the maps serve already,
// so that Apply has nothing to do: they are the services of the last
// Apply, which wrote them all without an error, every backend is served,
// and netlink events keep what the data path knows of the network true
// (and apply again what they touch). Comparing them costs about 10 ns a
// backend; applying them again, even with no write, about 3 µs.
// d.mu is held.
func (d *Datapath) unchanged(services []service.Service) bool {
	if d.desired == nil || d.lastErr != "" || d.pending.Load() > 0 {
		return false
	}
	d.reach.mu.Lock()
	followed := d.reach.followed
	d.reach.mu.Unlock()
	return followed && d.desired.same(services)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// reconcile writes d.desired into the maps. d.mu is held.
func (d *Datapath) reconcile() error { return d.reconcileSome(nil) }

// reconcileSome writes the services of d.desired in only into the maps,
// or all of them, and removes those that left, when only is nil: a
// netlink update that touched a few backends re-programs their services
// alone. d.mu is held.
func (d *Datapath) reconcileSome(only map[service.Key]bool) error {
	var errs []error
	want := map[service.Key]*service.Service{}
	desired := d.desired.services(only)
	for i := range desired {
		s := &desired[i]
		s.Key.VIP = s.Key.VIP.Unmap()
		if err := checkService(s); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := want[s.Key]; dup {
			errs = append(errs, fmt.Errorf("service %s: %s is listed twice", s.Name, s.Key))
			continue
		}
		want[s.Key] = s
	}
	if only == nil {
		for _, key := range sortedKeys(d.applied) {
			if want[key] == nil {
				errs = append(errs, d.removeService(d.applied[key]))
			}
		}
		d.reach.forgetHops()
	}
	var keys []service.Key
	for _, key := range sortedKeys(want) {
		if only == nil || only[key] {
			keys = append(keys, key)
		}
	}
	early := d.earlyGuess(keys, want)
	n := d.neighbourView(only == nil)
	d.askNeighbours(want, only, n)
	d.now = time.Now()
	d.newStates = newStateSlab(keys, d.applied)
	errs = append(errs, d.applyServices(keys, want, n, early))
	d.newStates = nil
	if only == nil {
		d.packBackends()
	}
	d.countPending()
	return errors.Join(errs...)
}

// packBackends moves the backends of every service into one slice, each
// service's set a part of it, after an Apply of all: the sets were
// allocated one by one while the Apply allocated and freed far more
// beside them, and each would hold a heap page that is otherwise free
// (1000 × 100: some 4 MB of RSS). A set that grows later leaves the
// slice (its capacity is its length); the next Apply of all packs again.
func (d *Datapath) packBackends() {
	n := 0
	for _, st := range d.applied {
		n += len(st.backends)
	}
	all := make(backendSet, 0, n)
	for _, key := range sortedKeys(d.applied) {
		st := d.applied[key]
		at := len(all)
		all = append(all, st.backends...)
		st.backends = all[at:len(all):len(all)]
	}
}

func checkService(s *service.Service) error {
	name := s.Name + " (" + s.Key.String() + ")"
	if s.Forward != service.DR && s.Forward != service.TUN && s.Forward != service.NAT && s.Forward != service.FullNAT {
		return fmt.Errorf("service %s: %w; use forward: dr, tun, nat or fullnat, or datapath.mode: ipvs", name, unsupported("forward "+s.Forward.String()))
	}
	if s.SNAT.IsValid() && s.SNAT.Unmap().Is4() != s.Key.VIP.Unmap().Is4() {
		return fmt.Errorf("service %s: snat_address %s is not of the VIP's address family", name, s.SNAT)
	}
	if s.Scheduler != "" && !slices.Contains(config.BPFSchedulers(), s.Scheduler) {
		return fmt.Errorf("service %s: %w; use %s (all Maglev here), or datapath.mode: ipvs",
			name, unsupported("scheduler "+s.Scheduler), orList(config.BPFSchedulers()))
	}
	if !s.Key.VIP.IsValid() || s.Key.Port == 0 || (s.Key.Proto != service.TCP && s.Key.Proto != service.UDP) {
		return fmt.Errorf("service %s: needs a VIP, a port and tcp or udp", name)
	}
	return nil
}

// orList reads a list as a sentence does: "mh, rr, wrr or sh".
func orList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	last := len(items) - 1
	return strings.Join(items[:last], ", ") + " or " + items[last]
}

// backendKey is a backend's identity within its service and its Maglev
// key: DR and TUN leave the packet's port alone, so a backend without a
// port serves the service's.
func backendKey(s *service.Service, b service.Backend) netip.AddrPort {
	port := b.Port
	if port == 0 {
		port = s.Key.Port
	}
	return netip.AddrPortFrom(b.Addr.Unmap(), port)
}

// servicePlan is one service on its way into the maps: its state, what
// its backends' records should be, and the table to build, if it needs a
// new one.
type servicePlan struct {
	s     *service.Service
	st    *svcState
	isNew bool
	want  map[netip.AddrPort]*wantBackend
	// order is want's keys, sorted once: each step walks the backends
	// in it (a key whose id could not be taken stays in it, not in
	// want).
	order []netip.AddrPort
	// fresh are the backend ids taken for it in this Apply.
	fresh map[uint32]bool
	table *tableJob // nil: the table in the kernel is the one wanted
	guess *tableGuess
	errs  []error
}

// applyServices writes the services of want named in keys. The order keeps every packet
// served while it happens, for each service: new backends first, then the
// Maglev table that names them, then the service record that leads to the
// table, and only then the backends that left are cleared. Every service
// takes each step before any takes the next, so that all the tables are
// swapped in with one batch write. The tables, the costly part, are built
// on all cores, each as soon as its service is planned, beside the
// planning of the next and the writing of the records: they are written
// into maps of their own, which no packet reads before the swap.
func (d *Datapath) applyServices(keys []service.Key, want map[service.Key]*service.Service, n *neighbours, early *tableGuess) error {
	var errs []error
	plans := make([]*servicePlan, 0, len(keys))
	// Room for a record of every backend of the new services, made
	// once: grown by appends, the queues of 100 000 records were copied
	// over and over (some 75 MiB allocated for 10 MiB kept). A service
	// applied before has few records to write, usually.
	total := 0
	for _, key := range keys {
		if d.applied[key] == nil {
			total += len(want[key].Backends)
		}
	}
	queued := make([]queuedRecord, 0, total)
	d.maps.expect(total)
	builds := d.startBuilds(len(keys))
	var guessed *tableJob // the one job with a guess, if any
	for _, key := range keys {
		n.serve(key)
		p, err := d.planService(want[key], n, len(plans) == 0 && early == nil)
		errs = append(errs, err)
		if early != nil {
			// The guess of keys[0], made before the neighbours were asked.
			if p != nil {
				p.guess = early
			} else {
				early.drop()
			}
			early = nil
		}
		if p == nil {
			continue
		}
		plans = append(plans, p)
		queued = d.queueBackends(p, queued)
		p.wantsQueued()
		switch p.table = d.planTable(p); {
		case p.table != nil && p.table.guess != nil:
			guessed = p.table
		case p.table != nil:
			builds.jobs <- p.table
		}
	}
	errs = append(errs, d.forgetReusedIDs(plans))
	failed := d.writeBackends(queued)
	if guessed != nil {
		// Its guess builds and stages it on a goroutine of its own:
		// this one takes it from there, with no builder in between.
		guessed.err = d.writeTable(guessed)
	}
	builds.wait()
	d.replanTables(failed)
	// Before any table names the records just written, and before a
	// NAT backend gets a packet, the way back for its replies.
	errs = append(errs, d.maps.moveNexthopGen())
	errs = append(errs, d.writeNATReplies(false))
	d.installTables(plans)
	for _, p := range plans {
		errs = append(errs, d.finishService(p))
	}
	// The records of the backends that left were cleared.
	errs = append(errs, d.maps.moveNexthopGen())
	errs = append(errs, d.writeNATReplies(true))
	return errors.Join(errs...)
}

// queuedWant stands for each want of a plan once its record is queued:
// from there on only whether a backend is wanted matters (planTable,
// finishService). Each service's wants go as soon as they are queued, so
// that an Apply of 100 000 backends never holds all their wants at once
// (some 20 MB; the Go heap's peak is about twice what it holds,
// BenchmarkApplyPeak).
var queuedWant = &wantBackend{}

// wantsQueued lets the plan's wants go, keeping which backends are
// wanted.
func (p *servicePlan) wantsQueued() {
	for ap := range p.want {
		p.want[ap] = queuedWant
	}
}

// planService gives a service its id (when new), works out what each of
// its backends' records should be and takes ids for the new ones. With
// first, the first service of the Apply, its table is built from a guess
// meanwhile (tableGuess).
func (d *Datapath) planService(s *service.Service, n *neighbours, first bool) (*servicePlan, error) {
	st, isNew, err := d.serviceState(s)
	if err != nil {
		return nil, err
	}
	p := &servicePlan{s: s, st: st, isNew: isNew}
	if first {
		p.guess = d.guessTable(s, st, isNew)
	}
	st.nat = s.Forward == service.NAT || s.Forward == service.FullNAT
	st.fullnat = s.Forward == service.FullNAT
	probs := d.wantBackends(p, n)
	d.noteProblems(st, probs, p.want)
	d.takeBackendIDs(p)
	return p, nil
}

// serviceState is the service's state, made with a fresh id and counters
// when the service is new.
func (d *Datapath) serviceState(s *service.Service) (*svcState, bool, error) {
	st := d.applied[s.Key]
	if st != nil {
		st.name = s.Name
		return st, false, nil
	}
	id, ok := d.svcIDs.take()
	if !ok {
		return nil, false, fmt.Errorf("service %s (%s): the maps hold %d services and all are in use", s.Name, s.Key, d.lb.maxServices())
	}
	if err := d.maps.resetServiceStats(id); err != nil {
		d.svcIDs.free(id)
		return nil, false, err
	}
	st = d.newStates.next()
	*st = svcState{name: s.Name, key: s.Key, id: id, backends: make(backendSet, 0, len(s.Backends))}
	d.applied[s.Key] = st
	return st, true, nil
}

// wantBackends works out what each backend's record should be (p.want,
// p.order), and returns the problems of those the data path cannot serve
// now.
func (d *Datapath) wantBackends(p *servicePlan, n *neighbours) map[netip.AddrPort]*problem {
	s, st := p.s, p.st
	var errs []error
	wantBE := make(map[netip.AddrPort]*wantBackend, len(s.Backends))
	order := make([]netip.AddrPort, 0, len(s.Backends))
	set := func(ap netip.AddrPort, w *wantBackend) {
		wantBE[ap] = w
		order = append(order, ap)
	}
	// The wants made here, in one allocation: they go together
	// (wantsQueued).
	var wants []wantBackend
	newWant := func(w wantBackend) *wantBackend {
		if wants == nil {
			wants = make([]wantBackend, 0, len(s.Backends))
		}
		wants = append(wants, w)
		return &wants[len(wants)-1]
	}
	ways := drWays{d: d, n: n}
	probs := map[netip.AddrPort]*problem{}
	note := func(ap netip.AddrPort, weight uint32, reason string, wait bool) {
		probs[ap] = &problem{reason: reason, wait: wait, weight: weight}
	}
	// A backend that cannot be reached any more keeps its id, its
	// counters and its record, inactive: the table leaves it out, and
	// the flows it had are scheduled again.
	unreachable := func(ap netip.AddrPort, weight uint32, reason string) {
		note(ap, weight, reason, false)
		if old := st.backends.get(ap); old != nil {
			set(ap, newWant(wantBackend{via: d.attachmentOf(int(old.rec.Ifindex)), unreachable: true, b: Backend{Weight: weight}}))
		}
	}
	for _, b := range s.Backends {
		ap := backendKey(s, b)
		if _, dup := wantBE[ap]; dup || probs[ap] != nil {
			errs = append(errs, fmt.Errorf("service %s: backend %s is listed twice", st, ap))
			continue
		}
		if ap.Addr().Is4() != s.Key.VIP.Unmap().Is4() {
			errs = append(errs, fmt.Errorf("service %s: backend %s is not of the VIP's address family", st, ap))
			continue
		}
		if s.Forward == service.TUN || s.Forward == service.NAT || s.Forward == service.FullNAT {
			w, err := d.routedBackend(s.Forward, ap.Addr(), n)
			if w != nil && s.SNAT.IsValid() {
				w.b.Src = s.SNAT.Unmap() // full NAT's source, in place of the kernel's
			}
			switch {
			case w == nil:
				unreachable(ap, b.Weight, err.Error())
			case err != nil:
				note(ap, b.Weight, err.Error(), true)
				fallthrough
			default:
				w.b.Service, w.b.Weight, w.b.Port = st.id, b.Weight, ap.Port()
				set(ap, w)
			}
			continue
		}
		way := ways.to(ap.Addr())
		if way.viaErr != nil {
			unreachable(ap, b.Weight, way.viaErr.Error())
			continue
		}
		via, mac, err := way.via, way.mac, way.macErr
		if err != nil {
			note(ap, b.Weight, err.Error(), true)
		}
		if mac == nil {
			if old := st.backends.get(ap); old != nil && old.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE != 0 && int(old.rec.Ifindex) == via.ifindex && old.rec.Mac != ([6]byte{}) {
				// Keep the MAC we had: the entry may have been
				// garbage collected, since the kernel does not see
				// the traffic XDP forwards.
				mac = net.HardwareAddr(old.rec.Mac[:])
			} else if err == nil {
				note(ap, b.Weight, fmt.Sprintf("its MAC is not in the neighbour table of %s yet: asked for it (ARP or neighbour solicitation)", via.Interface), true)
			}
			d.solicit(via, ap.Addr(), false)
		}
		set(ap, newWant(wantBackend{via: via, b: Backend{
			Addr:    ap.Addr(),
			MAC:     mac,
			Ifindex: via.ifindex,
			SrcMAC:  via.mac,
			Port:    ap.Port(),
			Service: st.id,
			Weight:  b.Weight,
		}}))
	}
	// The service's order, which the configuration usually keeps sorted
	// already: then the sort only checks it.
	slices.SortFunc(order, netip.AddrPort.Compare)
	p.want, p.order, p.errs = wantBE, order, errs
	return probs
}

// drWays are the ways to the addresses of one service's DR backends,
// each looked up once however many ports the service has there (a route
// and a neighbour looked up, under reach's lock, for each of the 1000
// backends of a service on 100 hosts was a sixth of its planning).
type drWays struct {
	d    *Datapath
	n    *neighbours
	seen map[netip.Addr]drWay
}

// drWay is how the DR backends at one address are reached: the
// interface, and the MAC the neighbour table has, with why either is
// missing.
type drWay struct {
	via    *attachment
	viaErr error
	mac    net.HardwareAddr
	macErr error
}

// to is the way to addr.
func (ws *drWays) to(addr netip.Addr) drWay {
	if w, ok := ws.seen[addr]; ok {
		return w
	}
	var w drWay
	if w.via, w.viaErr = ws.d.via(addr); w.viaErr == nil {
		w.mac, w.macErr = ws.n.lookup(w.via.ifindex, addr)
	}
	if ws.seen == nil {
		ws.seen = map[netip.Addr]drWay{}
	}
	ws.seen[addr] = w
	return w
}

// takeBackendIDs takes ids for the service's new backends.
func (d *Datapath) takeBackendIDs(p *servicePlan) {
	p.fresh = map[uint32]bool{}
	var added []beState
	have := p.st.backends.inOrder()
	for _, ap := range p.order {
		if have.get(ap) != nil || p.want[ap].unreachable {
			continue
		}
		id, ok := d.beIDs.take()
		if !ok {
			p.errs = append(p.errs, fmt.Errorf("service %s: backend %s: the maps hold %d backends and all are in use", p.st, ap, d.lb.maxBackends()-1))
			delete(p.want, ap)
			continue
		}
		p.fresh[id] = true
		added = append(added, beState{id: id, rec: stubRecord(ap, p.st.id)})
	}
	p.st.backends = p.st.backends.add(added)
}

// forgetReusedIDs makes conntrack forget what it knew of the ids taken in
// this Apply, in one pass over halb_ct, before their records are written.
func (d *Datapath) forgetReusedIDs(plans []*servicePlan) error {
	fresh := map[uint32]bool{}
	for _, p := range plans {
		for id := range p.fresh {
			fresh[id] = true
		}
	}
	n, err := d.maps.purgeConntrack(fresh)
	if err != nil {
		return err
	}
	if n > 0 {
		d.log.Debug("forgot flows of reused backend ids", "flows", n)
	}
	return nil
}

// queuedRecord is a backend record queued for writeBackends, and the one
// it replaces (which names the backend, for a failed write).
type queuedRecord struct {
	p   *servicePlan
	be  *beState
	old halbBackend
}

// queueBackends queues the records of the service's backends that
// changed, and the zeroing of the counters of the new ones, onto queued.
func (d *Datapath) queueBackends(p *servicePlan, queued []queuedRecord) []queuedRecord {
	st := p.st
	have := st.backends.inOrder()
	for _, ap := range p.order {
		w, be := p.want[ap], have.get(ap)
		if w == nil {
			continue // no id for it
		}
		rec, err := d.recordOf(be, w)
		if err != nil {
			p.errs = append(p.errs, fmt.Errorf("service %s: %w", st, err))
			continue
		}
		fresh := p.fresh[be.id]
		if !fresh && rec == be.rec {
			continue
		}
		d.maps.queueBackend(be.id, rec, fresh)
		queued = append(queued, queuedRecord{p: p, be: be, old: be.rec})
		if !fresh {
			d.logMACChange(st, ap, be.rec.Mac, rec.Mac)
		}
		be.rec = rec
	}
	return queued
}

// logMACChange says that a backend's MAC changed from old to mac, when
// it had one and has one.
func (d *Datapath) logMACChange(st *svcState, ap netip.AddrPort, old, mac [6]byte) {
	if old != mac && old != ([6]byte{}) && mac != ([6]byte{}) {
		d.log.Info("backend mac changed", "service", st.String(), "backend", ap.String(),
			"old", net.HardwareAddr(old[:]).String(), "new", net.HardwareAddr(mac[:]).String())
	}
}

// waitsAt tells whether the service has a backend at addr that cannot be
// served (DR: a MAC at addr may be what it waits for), or, for TUN and
// NAT, one whose next hop is not resolved (which may be at addr).
func (st *svcState) waitsAt(addr netip.Addr) bool {
	for ap, p := range st.problems {
		if ap.Addr() == addr || (p.wait && st.rec.Forward != halbForwardMode(ForwardDR)) {
			return true
		}
	}
	return false
}

// writeBackends writes the queued records. A backend whose record could
// not be written keeps the one it had, and its service reports why; it
// returns those services, whose tables must be planned again from the
// records the maps hold.
func (d *Datapath) writeBackends(queued []queuedRecord) map[*servicePlan]bool {
	failed := d.maps.flushBackends()
	if len(failed) == 0 {
		return nil
	}
	again := map[*servicePlan]bool{}
	for _, q := range queued {
		if err := failed[q.be.id]; err != nil {
			q.be.rec = q.old
			q.p.errs = append(q.p.errs, fmt.Errorf("service %s: backend %s: %w", q.p.st, q.be.key(), err))
			again[q.p] = true
		}
	}
	return again
}

// replanTables drops the tables built for plans from records that were
// not written, and builds them again from the records the maps hold.
func (d *Datapath) replanTables(plans map[*servicePlan]bool) {
	for p := range plans {
		if j := p.table; j != nil && j.staged != nil {
			j.staged.discard()
		}
		if p.table = d.planTable(p); p.table != nil {
			p.table.err = d.writeTable(p.table)
		}
	}
}

// finishService writes the service record that leads to the table, then
// clears the backends that left.
func (d *Datapath) finishService(p *servicePlan) error {
	st := p.st
	errs := p.errs
	var tableErr error
	if p.table != nil {
		tableErr = p.table.err
		errs = append(errs, tableErr)
	}
	fwd := ForwardDR
	switch p.s.Forward {
	case service.TUN:
		fwd = ForwardTUN
	case service.NAT:
		fwd = ForwardNAT
	case service.FullNAT:
		fwd = ForwardFullNAT
	}
	rec := halbService{Id: st.id, Forward: halbForwardMode(fwd)}
	if p.s.Persistence > 0 || p.s.Scheduler == "sh" {
		rec.Flags |= halbServiceFlagsSERVICE_F_SOURCE_HASH
	}
	if p.isNew || rec != st.rec {
		svc := Service{ID: st.id, Forward: fwd, Persistence: rec.Flags&halbServiceFlagsSERVICE_F_SOURCE_HASH != 0}
		if err := d.maps.putService(st.key, svc); err != nil {
			errs = append(errs, err)
		} else {
			st.rec = rec
		}
	}

	// Backends that left: out of the table already, now out of the maps.
	// If the table could not be written they stay, in it and in the
	// maps, until an Apply writes one without them. Every backend in want
	// has its state (takeBackendIDs), so some left only when the service
	// has more states than wants.
	if tableErr == nil && len(st.backends) > len(p.want) {
		for i := range st.backends {
			if be := &st.backends[i]; p.want[be.key()] == nil {
				errs = append(errs, d.dropBackend(st, be, true))
			}
		}
		st.backends = st.backends.compact()
	}
	if p.isNew {
		d.log.Info("service added", "service", st.String(), "id", st.id, "backends", len(st.backends))
	}
	return errors.Join(errs...)
}

// recordOf is what be's record should become: the one w describes, or
// for a backend that cannot be reached now, the one it has, inactive.
func (d *Datapath) recordOf(be *beState, w *wantBackend) (halbBackend, error) {
	if !w.unreachable {
		return d.lb.backendRecord(be.id, w.b)
	}
	rec := be.rec
	if rec != (halbBackend{}) {
		rec.Flags &^= halbBackendFlagsBACKEND_F_ACTIVE
		rec.Weight = w.b.Weight
	}
	return rec, nil
}

// noteProblems makes probs the service's problems and logs what changed:
// a problem at once, or for one that waits for the neighbour table only
// when it is still there after retryPending, and its end when its start
// was logged and the backend is still in want.
func (d *Datapath) noteProblems(st *svcState, probs map[netip.AddrPort]*problem, want map[netip.AddrPort]*wantBackend) {
	for _, ap := range sortedAddrPorts(probs) {
		p, old := probs[ap], st.problems[ap]
		p.since = d.now
		if old != nil && old.reason == p.reason {
			p.since, p.logged = old.since, old.logged
		}
		said := old != nil && old.logged
		if !p.logged && (!p.wait || said || d.now.Sub(p.since) >= retryPending) {
			p.logged = true
			msg := "backend not served"
			if w := want[ap]; w != nil && !w.unreachable && w.b.Src.IsValid() {
				msg = "backend served, its next hop not resolved"
			}
			d.log.Warn(msg, "service", st.String(), "backend", ap.String(), "reason", p.reason)
		}
	}
	for _, ap := range sortedAddrPorts(st.problems) {
		if old := st.problems[ap]; old.logged && probs[ap] == nil && want[ap] != nil {
			d.log.Info("backend served again", "service", st.String(), "backend", ap.String(), "was", old.reason)
		}
	}
	if len(probs) == 0 {
		probs = nil // an empty map kept for each service would hold a heap page each (stateSlab)
	}
	st.problems = probs
}

// wantBackend is what a backend's record should be, and the one of
// datapath.interfaces that reaches it.
type wantBackend struct {
	b   Backend
	via *attachment
	// unreachable: the backend has an id but no way to it now; its
	// record stays as it was, inactive, with the weight of b.
	unreachable bool
}

// routedBackend is what the record of TUN or NAT backend addr should be:
// the kernel's route to it names the interface, which must be one of
// datapath.interfaces that forwards (bpf_fib_lookup refuses to route for
// one that does not), and the source, the address the kernel would send
// from (TUN's outer source; NAT's FIB lookups start there). When one of
// these is missing it returns no record, and why.
//
// A next hop the neighbour table lacks is asked for, and the backend is
// served all the same, with the reason: XDP drops its packets
// (DropNoNeigh) until the answer comes, and tc has the kernel resolve it
// (bpf_redirect_neigh). Taking it out of the table would cost more: the
// kernel forgets such entries now and then, since it does not see the
// traffic XDP sends there, and every backend behind that next hop would
// leave and rejoin each time, moving its share of new flows away and
// back. A next hop that is gone for good takes the backends' health
// checks with it, and those drain them.
func (d *Datapath) routedBackend(fwd service.Forward, addr netip.Addr, n *neighbours) (*wantBackend, error) {
	r, err := d.routeTo(addr)
	if err != nil {
		return nil, err
	}
	via := d.attachmentOf(r.LinkIndex)
	if via == nil {
		return nil, d.routedElsewhere(r.LinkIndex)
	}
	src, ok := netip.AddrFromSlice(r.Src)
	if !ok || src.Unmap().Is4() != addr.Is4() {
		return nil, fmt.Errorf("the kernel has no source address toward it on %s: give %s an address of its family", via.Interface, via.Interface)
	}
	next := addr
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
		next = gw.Unmap()
	}
	if on, err := d.forwarding(via.Interface, next.Is4()); err != nil {
		return nil, err
	} else if !on {
		family := "ipv6"
		if next.Is4() {
			family = "ipv4"
		}
		return nil, fmt.Errorf("forward: %s needs forwarding on %s, where the kernel's FIB lookup refuses without it: sysctl -w net.%s.conf.%s.forwarding=1",
			fwd, via.Interface, family, via.Interface)
	}
	w := &wantBackend{via: via, b: Backend{
		Addr:    addr,
		Src:     src.Unmap(),
		Ifindex: via.ifindex,
		SrcMAC:  via.mac,
	}}
	mac, err := n.lookup(via.ifindex, next)
	d.reach.noteHop(hop{ifindex: via.ifindex, addr: next}, mac == nil)
	if err != nil {
		return w, err
	}
	if mac == nil {
		d.solicit(via, next, false)
		return w, fmt.Errorf("the MAC of its next hop %s is not in the neighbour table of %s yet: asked for it", next, via.Interface)
	}
	return w, nil
}

// tableJob is one service's Maglev table to build and write: the
// signature of the table, and what the build reads.
type tableJob struct {
	st    *svcState
	isNew bool
	sig   tableSig
	// backends and ids are what the build reads, taken when the job is
	// planned: it runs beside the planning of the next services.
	backends []maglev.Backend
	ids      []uint32
	// guess: the table built while the service was planned, if any;
	// guessed: built from the job's inputs (backends is nil then).
	guess   *tableGuess
	guessed bool
	// staged: written aside, for installTables to swap in with the rest.
	staged *stagedTable
	err    error
}

// planTable is the table the service needs, or nil when the one in the
// kernel is built from the same live backends. The table is built without
// the backends that leave, before their records and ids go: a slot must
// never name a freed id.
func (d *Datapath) planTable(p *servicePlan) *tableJob {
	g := p.guess
	p.guess = nil
	in := liveInputs(p.st, p.order)
	j := &tableJob{st: p.st, isNew: p.isNew, sig: g.signatureOf(in)}
	if j.sig == p.st.table && !p.isNew {
		g.drop()
		return nil
	}
	// What the build reads is taken, not the backends' states and keys:
	// the job holds no more until it is installed with every other of
	// the Apply (100 000 backends: some 4 MB less at the Apply's peak).
	j.ids, j.guess = in.ids, g
	if j.guessed = g != nil && g.in.sameBuild(in); !j.guessed {
		j.backends = in.maglevBackends()
	}
	return j
}

// sameBuild reports whether in and o build the same table (their ids
// may differ: they are not the build's).
func (in tableInputs) sameBuild(o tableInputs) bool {
	return slices.Equal(in.keys, o.keys) && slices.Equal(in.weights, o.weights)
}

// tableInputs are what a table is built from: the keys of its live
// backends, in address order, their weights and their ids.
type tableInputs struct {
	keys    []netip.AddrPort
	weights []uint32
	ids     []uint32
}

// liveInputs are the inputs of st's table: its live backends among keys,
// which are sorted.
func liveInputs(st *svcState, keys []netip.AddrPort) tableInputs {
	in := inputsFor(len(keys))
	have := st.backends.inOrder()
	for _, ap := range keys {
		if be := have.get(ap); be != nil && be.live() {
			in.keys = append(in.keys, ap)
			in.weights = append(in.weights, be.rec.Weight)
			in.ids = append(in.ids, be.id)
		}
	}
	return in
}

// inputsFor is room for the inputs of up to n backends (none for 0).
func inputsFor(n int) tableInputs {
	if n == 0 {
		return tableInputs{}
	}
	return tableInputs{keys: make([]netip.AddrPort, 0, n), weights: make([]uint32, 0, n), ids: make([]uint32, 0, n)}
}

// maglevBackends are the backends as maglev.Build takes them.
// The keys are parts of one string: a string each was 1000 allocations
// for a service of 1000 backends.
func (in tableInputs) maglevBackends() []maglev.Backend {
	var text []byte
	ends := make([]int, len(in.keys))
	for i, ap := range in.keys {
		text = ap.AppendTo(text)
		ends[i] = len(text)
	}
	all := string(text)
	mb := make([]maglev.Backend, len(in.keys))
	start := 0
	for i, end := range ends {
		mb[i] = maglev.Backend{Key: all[start:end], Weight: in.weights[i]}
		start = end
	}
	return mb
}

// tableGuess is the Maglev table of the first service of an Apply, built
// while that service is planned, from the backends it most likely serves:
// those of weight above 0 that were served before or are new. Its build
// would otherwise wait for its planning (1000 backends: about 1 ms, half
// a build) with every core but one idle; the services after it are built
// beside the planning of the next. When the planning finds other live
// backends, the guess is dropped and the table built again.
type tableGuess struct {
	in    tableInputs
	sig   tableSig // in's, when every backend had an id (else zero)
	buf   *[]int32 // from tableBufs; nil once staged
	draft *tableDraft
	// staged: the table staged from in, when sig is known.
	staged *stagedTable
	done   chan struct{}
	err    error
}

// earlyGuess starts the guess of the first service of keys, when the
// maps serve it already, before the Apply asks for the neighbours of all:
// the guess's build is most of a one-service Apply, and all of it that
// comes before is time added to it. A new service's guess starts once it
// has an id (planService).
func (d *Datapath) earlyGuess(keys []service.Key, want map[service.Key]*service.Service) *tableGuess {
	if len(keys) == 0 || d.applied[keys[0]] == nil {
		return nil
	}
	return d.guessTable(want[keys[0]], d.applied[keys[0]], false)
}

// guessTable starts building s's table from a guess, unless the guess is
// the table st has already (then the Apply will likely build none), or
// st is adopted and its table not read yet.
func (d *Datapath) guessTable(s *service.Service, st *svcState, isNew bool) *tableGuess {
	if st.table == (tableSig{}) && !isNew {
		return nil
	}
	in, known := guessInputs(s, st)
	if in.keys == nil {
		return nil
	}
	var sig tableSig
	if known {
		if sig = in.signature(); sig == st.table {
			return nil
		}
	}
	g := &tableGuess{in: in, sig: sig, buf: tableBufs.Get().(*[]int32), draft: d.maps.draftTable(st.id), done: make(chan struct{})}
	go g.build(d.lb.maglevTableSize())
	// The build is what the Apply waits for: it takes this thread at
	// once, and the planning goes on as soon as the runtime has another
	// (on a busy machine the thread woken for a new goroutine may wait
	// milliseconds for a core; then the planning waits, not the build).
	runtime.Gosched()
	return g
}

// guessInputs are the inputs of s's table if every backend of weight
// above 0 that had no problem at the last Apply is served; known: each
// of them has an id already (else the table changes anyway). No keys
// when a backend is listed twice: the planning says which one counts.
//
// The guess's build waits for it, so it takes the key order from
// st.backends, which keeps it, and sorts only the keys st does not have
// (a sort of all 1000 keys of a service took twice as long as the rest).
func guessInputs(s *service.Service, st *svcState) (in tableInputs, known bool) {
	type guess struct {
		ap     netip.AddrPort
		weight uint32
	}
	// The weight of each backend st has, by its place in st.backends; 0
	// for one not guessed.
	weights := make([]uint32, len(st.backends))
	n := 0
	var added []guess
	for _, b := range s.Backends {
		ap := backendKey(s, b)
		if b.Weight == 0 || ap.Addr().Is4() != s.Key.VIP.Unmap().Is4() || st.problems[ap] != nil {
			continue
		}
		n++
		if i, ok := st.backends.find(ap); !ok {
			added = append(added, guess{ap, b.Weight})
		} else if weights[i] != 0 {
			return tableInputs{}, false
		} else {
			weights[i] = b.Weight
		}
	}
	slices.SortFunc(added, func(a, b guess) int { return a.ap.Compare(b.ap) })
	for i := 1; i < len(added); i++ {
		if added[i].ap == added[i-1].ap {
			return tableInputs{}, false
		}
	}
	in = inputsFor(n)
	addNew := func(until func(netip.AddrPort) bool) {
		for len(added) > 0 && until(added[0].ap) {
			in.keys, in.weights, in.ids = append(in.keys, added[0].ap), append(in.weights, added[0].weight), append(in.ids, 0)
			added = added[1:]
		}
	}
	known = len(added) == 0
	for i := range st.backends {
		if weights[i] == 0 {
			continue
		}
		be := &st.backends[i]
		ap := be.key()
		addNew(func(a netip.AddrPort) bool { return a.Compare(ap) < 0 })
		in.keys, in.weights, in.ids = append(in.keys, ap), append(in.weights, weights[i]), append(in.ids, be.id)
	}
	addNew(func(netip.AddrPort) bool { return true })
	return in, known
}

// signatureOf is in's signature, the guess's when the guess was made of
// the same inputs (g may be nil).
func (g *tableGuess) signatureOf(in tableInputs) tableSig {
	if g != nil && g.sig != (tableSig{}) && g.in.sameBuild(in) && slices.Equal(g.in.ids, in.ids) {
		return g.sig
	}
	return in.signature()
}

// build builds the guess's table of m slots and, when the guess knows
// every backend's id (sig), stages it too, on the same thread: handing
// the table to a builder to stage cost a wake-up of another thread on
// the way to the swap.
func (g *tableGuess) build(m int) {
	defer close(g.done)
	idx := tableOf(g.buf, m)
	if g.err = maglev.BuildInto(idx, g.in.maglevBackends()); g.err != nil || g.sig == (tableSig{}) {
		return
	}
	draft := g.draft
	g.draft = nil
	g.staged, g.err = draft.stage(idx, g.in.ids)
	tableBufs.Put(g.buf)
	g.buf = nil
}

// take returns what of the guess serves job j, once it is done: its
// staged table, when staged from j's inputs; else its table, when built
// from them (guessed), and its draft, if it has one left; and the build's
// error when it was j's. The guess is used up.
func (g *tableGuess) take(j *tableJob) (*stagedTable, []int32, *tableDraft, error) {
	<-g.done
	if g.staged != nil && j.guessed && slices.Equal(g.in.ids, j.ids) {
		return g.staged, nil, nil, nil
	}
	draft := g.draft
	g.draft = nil
	if g.err != nil && j.guessed {
		g.drop()
		return nil, nil, draft, g.err
	}
	if g.buf == nil || g.err != nil || !j.guessed {
		g.drop()
		return nil, nil, draft, nil
	}
	return nil, *g.buf, draft, nil
}

// drop lets a guess, or what is left of it, go once it is done.
func (g *tableGuess) drop() {
	if g == nil {
		return
	}
	<-g.done
	if g.buf != nil {
		tableBufs.Put(g.buf)
		g.buf = nil
	}
	if g.draft != nil {
		g.draft.discard()
		g.draft = nil
	}
	if g.staged != nil {
		g.staged.discard()
		g.staged = nil
	}
}

// tableBuilds builds and stages the tables of an Apply on as many
// goroutines as there are cores to run them (GOMAXPROCS), each job as it
// comes; the Apply waits for them before it swaps the tables in.
type tableBuilds struct {
	jobs chan *tableJob
	wg   sync.WaitGroup
}

// startBuilds starts the builders of up to n jobs.
func (d *Datapath) startBuilds(n int) *tableBuilds {
	b := &tableBuilds{jobs: make(chan *tableJob, n)}
	for range min(n, runtime.GOMAXPROCS(0)) {
		b.wg.Go(func() {
			for j := range b.jobs {
				j.err = d.writeTable(j)
			}
		})
	}
	return b
}

// wait waits for every job sent to be built and staged; each job keeps
// its error.
func (b *tableBuilds) wait() {
	close(b.jobs)
	b.wg.Wait()
}

// installTables swaps the staged tables of the plans in with one batch
// write.
func (d *Datapath) installTables(plans []*servicePlan) {
	var staged []*stagedTable
	for _, p := range plans {
		if j := p.table; j != nil && j.staged != nil {
			staged = append(staged, j.staged)
		}
	}
	installErr := d.maps.installTables(staged)
	for _, p := range plans {
		j := p.table
		if j == nil || j.staged == nil {
			continue
		}
		if installErr != nil {
			j.err = fmt.Errorf("service %s: %w", j.st, installErr)
			continue
		}
		if !j.isNew {
			d.log.Info("maglev table rebuilt", "service", j.st.String(), "live_backends", len(j.ids))
		}
		j.st.table = j.sig
	}
}

// tableBufs lend writeTable the table it builds, which it keeps no
// longer than the write: an Apply of 1000 services would otherwise
// allocate and drop 256 KiB for each (65537 slots), a quarter of a GiB of
// garbage that costs the Go heap collections and RSS.
var tableBufs = sync.Pool{New: func() any { return new([]int32) }}

// tableOf is buf's table of m slots, grown if it must be.
func tableOf(buf *[]int32, m int) []int32 {
	*buf = slices.Grow((*buf)[:0], m)[:m]
	return *buf
}

// writeTable builds a service's Maglev table and stages it. It runs
// beside the others of its Apply and beside the planning of the next
// services: it reads only the job, and writes only its own service's
// state.
func (d *Datapath) writeTable(j *tableJob) error {
	st := j.st
	restart := st.table == (tableSig{}) && !j.isNew
	var idx []int32
	var draft *tableDraft
	if g := j.guess; g != nil {
		j.guess = nil
		staged, built, left, err := g.take(j)
		switch {
		case err != nil:
			if left != nil {
				left.discard()
			}
			return fmt.Errorf("service %s: maglev table: %w", st, err)
		case staged != nil:
			j.staged = staged
			return nil
		case built != nil:
			idx = built
			defer tableBufs.Put(g.buf)
		case j.guessed:
			// Staged with other ids: built again, from the same keys.
			j.backends = g.in.maglevBackends()
		}
		if draft = left; draft == nil {
			draft = d.maps.draftTable(st.id)
		}
	} else if !restart {
		// The new map is made while the table is built.
		draft = d.maps.draftTable(st.id)
	}
	if idx == nil {
		buf := tableBufs.Get().(*[]int32)
		defer tableBufs.Put(buf)
		idx = tableOf(buf, d.lb.maglevTableSize())
		if err := maglev.BuildInto(idx, j.backends); err != nil {
			if draft != nil {
				draft.discard()
			}
			return fmt.Errorf("service %s: maglev table: %w", st, err)
		}
	}
	j.backends = nil // built: its keys go before the Apply's other builds end
	if restart {
		// After a restart: the table the last halb wrote may be this
		// very one.
		if d.sameTable(st, idx, j.ids) {
			st.table = j.sig
			return nil
		}
		draft = d.maps.draftTable(st.id)
	}
	staged, err := draft.stage(idx, j.ids)
	if err != nil {
		return fmt.Errorf("service %s: %w", st, err)
	}
	j.staged = staged
	return nil
}

// sameTable reports whether the table in the kernel for st is the one idx
// and ids make, and if so notes what it names.
func (d *Datapath) sameTable(st *svcState, idx []int32, ids []uint32) bool {
	old, err := d.lb.maglevTable(st.id)
	if err != nil || len(old) != len(idx) {
		return false
	}
	table := make([]uint32, len(idx))
	fillSlots(table, idx, ids)
	if !slices.Equal(old, table) {
		return false
	}
	d.maps.knowTable(st.id, table)
	return true
}

// tableSig names what a Maglev table is built from: a SHA-256 of the
// live backends' keys, weights and IDs (and, for all services alike, the
// table size). A hash, not the text: the text is some 26 bytes a backend,
// kept for every service as long as the daemon runs (2.6 MB at 100 000
// backends), to be compared only for equality. The zero value is "not
// known" (after a restart).
type tableSig [sha256.Size]byte

// signature is the tableSig of a table built from in.
func (in tableInputs) signature() tableSig {
	h := sha256.New()
	var buf []byte
	for i, ap := range in.keys {
		a := ap.Addr().As16()
		buf = append(append(buf[:0], byte(ap.Addr().BitLen())), a[:]...)
		buf = binary.LittleEndian.AppendUint16(buf, ap.Port())
		buf = binary.LittleEndian.AppendUint32(buf, in.weights[i])
		buf = binary.LittleEndian.AppendUint32(buf, in.ids[i])
		h.Write(buf)
	}
	var sig tableSig
	h.Sum(sig[:0])
	return sig
}

// dropBackend clears a backend that left its service and frees its ID,
// which it sets to 0 for the caller to compact st.backends. Its flows are
// scheduled again by the service's table, which no longer names it. With
// keep (the service stays), its counters go on in the service's own, once
// the program no longer counts in them: a service's counters are its
// backends' and its own (Status).
func (d *Datapath) dropBackend(st *svcState, be *beState, keep bool) error {
	if err := d.maps.freeBackend(be.id); err != nil {
		return fmt.Errorf("service %s: backend %s: %w", st, be.key(), err)
	}
	var err error
	if keep {
		err = d.maps.foldBackendStats(st.id, be.id)
	}
	d.beIDs.free(be.id)
	d.log.Info("backend removed", "service", st.String(), "backend", be.key().String(), "id", be.id)
	be.id = 0
	if err != nil {
		return fmt.Errorf("service %s: backend %s: counters: %w", st, be.key(), err)
	}
	return nil
}

// removeService takes a service out: first the record that leads packets
// to it (they go to the kernel from then on), then its table and backends.
func (d *Datapath) removeService(st *svcState) error {
	if err := d.maps.deleteService(st.key); err != nil {
		return err
	}
	if err := d.maps.deleteTable(st.id); err != nil {
		return err
	}
	for i := range st.backends {
		if err := d.dropBackend(st, &st.backends[i], false); err != nil {
			st.backends = st.backends.compact()
			return err
		}
	}
	d.svcIDs.free(st.id)
	delete(d.applied, st.key)
	d.log.Info("service removed", "service", st.String(), "id", st.id)
	return nil
}

// adopt reads what an earlier halb left in the maps, so that Apply
// changes only what differs. Records that belong to nothing are cleared.
func (d *Datapath) adopt() error {
	byID := map[uint32]*svcState{}
	var bad []halbServiceKey
	err := d.lb.eachService(func(k halbServiceKey, v halbService) {
		key := keyOfService(k)
		if !d.svcIDs.mark(v.Id) {
			bad = append(bad, k)
			return
		}
		st := &svcState{key: key, id: v.Id, rec: v}
		byID[v.Id] = st
		d.applied[key] = st
	})
	if err != nil {
		return err
	}
	for _, k := range bad {
		// A second service with one ID: a newer halb wrote it, or a
		// person did. Apply writes it again.
		if err := d.maps.dropServiceRecord(k); err != nil {
			return err
		}
	}

	var orphans []uint32
	err = d.lb.eachBackend(func(id uint32, b halbBackend) {
		if b == (halbBackend{}) {
			return
		}
		st := byID[b.Service]
		if st == nil || !d.beIDs.mark(id) {
			orphans = append(orphans, id)
			return
		}
		st.backends = append(st.backends, beState{id: id, rec: b})
	})
	if err != nil {
		return err
	}
	for _, st := range byID {
		orphans = append(orphans, st.adoptBackends(d.beIDs)...)
	}

	// The tables of services gone go first, then the records of the
	// backends that belong to nothing: ids leave the tables before they
	// are freed. The tables kept may name any of their service's
	// backends until an Apply writes or reads them back.
	var tables []uint32
	err = d.lb.eachTable(func(slot uint32) {
		st := byID[slot]
		if st == nil {
			tables = append(tables, slot)
			return
		}
		ids := make([]uint32, 0, len(st.backends))
		for i := range st.backends {
			ids = append(ids, st.backends[i].id)
		}
		d.maps.adoptTable(slot, ids)
	})
	if err != nil {
		return err
	}
	for _, slot := range tables {
		if err := d.maps.deleteTable(slot); err != nil {
			return err
		}
	}
	for _, id := range orphans {
		if err := d.maps.freeBackend(id); err != nil {
			return err
		}
	}
	if err := d.maps.moveNexthopGen(); err != nil {
		return err
	}
	// halb_vips and halb_service_ids may have been replaced (or, from an
	// older halb, be new) while halb_services was kept.
	d.lb.mu.Lock()
	defer d.lb.mu.Unlock()
	if err := d.lb.syncServiceIDs(); err != nil {
		return err
	}
	if err := d.lb.syncVIPs(); err != nil {
		return err
	}
	if len(d.applied) > 0 {
		d.log.Info("found services pinned by an earlier halb", "services", len(d.applied))
	}
	return nil
}

// adoptBackends puts the backends adopt found for st in key order, and
// returns the ids of those beyond the first at one key (a newer halb
// wrote them, or a person did), freed in ids, for adopt to clear.
func (st *svcState) adoptBackends(ids *backendIDs) []uint32 {
	slices.SortFunc(st.backends, func(a, b beState) int { return cmp.Or(a.key().Compare(b.key()), cmp.Compare(a.id, b.id)) })
	var dups []uint32
	for i := 1; i < len(st.backends); i++ {
		if be := &st.backends[i]; be.key() == st.backends[i-1].key() {
			dups = append(dups, be.id)
			ids.free(be.id)
		}
	}
	if len(dups) > 0 {
		st.backends = slices.CompactFunc(st.backends, func(a, b beState) bool { return a.key() == b.key() })
	}
	return dups
}

// ServiceStatus is one service as Report shows it, with the eBPF data
// path's own facts beside: the ids the maps know it and its backends by,
// and how each backend is reached. Report is Status less those.
type ServiceStatus struct {
	// Report.Backends stays empty: the backends are below, each with
	// its Report.
	service.Report
	ID       uint32
	Backends []BackendStatus
}

// BackendStatus is one backend of a service.
type BackendStatus struct {
	service.BackendReport
	// ID names it in the maps; 0 for one that never could be served.
	ID        uint32
	Interface string           // the one of datapath.interfaces it is on (TUN: its next hop)
	MAC       net.HardwareAddr // DR: nil while its neighbour entry is awaited
	TunnelSrc netip.Addr       // TUN: the outer source address; NAT: the balancer's address toward it
}

// Status reads what the data path serves and its counters, services in
// key order and backends in address order.
func (d *Datapath) Status() ([]ServiceStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("status: %w", service.ErrClosed)
	}
	var out []ServiceStatus
	for _, key := range sortedKeys(d.applied) {
		st := d.applied[key]
		// The service's counters: its own (what no backend took) and
		// its backends', added up below.
		total, err := d.lb.unservedStats(st.id)
		if err != nil {
			return nil, err
		}
		ss := ServiceStatus{Report: service.Report{Name: st.name, Key: key, Datapath: d.name}, ID: st.id}
		keys := st.backends.keys()
		for ap := range st.problems {
			if st.backends.get(ap) == nil {
				keys = append(keys, ap)
			}
		}
		slices.SortFunc(keys, netip.AddrPort.Compare)
		for _, ap := range keys {
			bs := BackendStatus{BackendReport: service.BackendReport{Addr: ap}}
			if p := st.problems[ap]; p != nil {
				bs.Problem, bs.Weight = p.reason, p.weight
			}
			be := st.backends.get(ap)
			if be == nil {
				ss.Backends = append(ss.Backends, bs)
				continue
			}
			stats, err := d.lb.backendStats(be.id)
			if err != nil {
				return nil, err
			}
			total = total.plus(stats)
			bs.ID, bs.Weight, bs.Live, bs.Stats = be.id, be.rec.Weight, be.live(), stats.report()
			if st.nat {
				replies, err := d.lb.replyStats(be.id)
				if err != nil {
					return nil, err
				}
				r := replies.report() // NewFlows stays 0
				bs.Replies = &r
			}
			if be.tunnel() {
				bs.TunnelSrc = addrFrom(be.rec.Src, be.rec.Family)
			} else if be.rec.Flags&halbBackendFlagsBACKEND_F_ACTIVE != 0 {
				bs.MAC = slices.Clone(net.HardwareAddr(be.rec.Mac[:]))
			}
			if via := d.attachmentOf(int(be.rec.Ifindex)); via != nil {
				bs.Interface = via.Interface
			}
			ss.Backends = append(ss.Backends, bs)
		}
		ss.Stats = total.report()
		out = append(out, ss)
	}
	return out, nil
}

func addrFrom(a halbAddr, f halbFamily) netip.Addr {
	addr := netip.AddrFrom16(a.Bytes)
	if f == halbFamilyFAMILY_IPV4 {
		return addr.Unmap()
	}
	return addr
}

func sortedKeys[V any](m map[service.Key]V) []service.Key {
	keys := make([]service.Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b service.Key) int {
		return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	return keys
}

func sortedAddrPorts[V any](m map[netip.AddrPort]V) []netip.AddrPort {
	keys := make([]netip.AddrPort, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, netip.AddrPort.Compare)
	return keys
}

// Drops reads the per-CPU drop counters, summed, by reason.
func (d *Datapath) Drops() (map[DropReason]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("drops: %w", service.ErrClosed)
	}
	return d.lb.drops()
}
