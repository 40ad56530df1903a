package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	cfipvs "github.com/cloudflare/ipvs"
	"github.com/cloudflare/ipvs/netmask"

	"github.com/halb-lb/halb/internal/kmod"
	"github.com/halb-lb/halb/service"
)

// resyncInterval is how often the daemon should call Apply when nothing has
// changed. IPVS sends no notice when someone changes its table (its generic
// netlink family has no multicast group), so halb finds out by looking: a
// pass that finds nothing to do costs one read of the whole table
// (tableReader, /proc/net/ip_vs) and changes nothing; only when that read
// differs from what the last pass left, or that pass failed, does it list
// the services and each one's destinations over netlink and load modules.
const resyncInterval = 10 * time.Second

// Resync is resyncInterval.
func (d *Datapath) Resync() time.Duration { return resyncInterval }

// ModuleLoader makes kernel modules available; kmod.Loader is the host's.
type ModuleLoader interface {
	Ensure(ctx context.Context, names ...string) error
}

// Options configure a Datapath. The zero value works on the host.
type Options struct {
	// Modules loads ip_vs and the schedulers; nil means the host's loader.
	Modules ModuleLoader
	// StateFile records the services halb owns; "" means DefaultStateFile.
	StateFile string
	// Log receives every change made to IPVS's table; nil logs nothing.
	Log *slog.Logger
}

func (o Options) modules() ModuleLoader {
	if o.Modules == nil {
		return hostModules(o.Log)
	}
	return o.Modules
}

// Datapath is the IPVS data path: a service.Datapath that reconciles IPVS's
// table with halb's services.
type Datapath struct {
	mu    sync.Mutex // one Apply at a time
	k     Kernel     // nil once closed
	mods  ModuleLoader
	state string
	log   *slog.Logger
	owned keySet   // what the state file lists
	want  []target // what the last Apply asked for, for Report
	// clean: the last full pass ended without an error, so the table
	// holds its want; a resync then only checks that it still does
	// (unchanged).
	clean bool
	// seen: each wanted service's persist as the table read right after
	// the last clean pass showed it (settle), for the resync to compare.
	seen map[service.Key]string
}

var _ service.Datapath = (*Datapath)(nil)

// New returns a Datapath over k. It reads the state file, which says what
// earlier runs of halb programmed; a missing file means nothing.
func New(k Kernel, opts Options) (*Datapath, error) {
	d := &Datapath{k: k, mods: opts.modules(), state: opts.StateFile, log: opts.Log}
	if d.state == "" {
		d.state = DefaultStateFile
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	owned, problems, err := readState(d.state)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w; halb needs it to know which IPVS services it made: fix its permissions, or remove it (halb then leaves alone the services it made before)", d.state, err)
	}
	for _, p := range problems {
		d.log.Warn("ignoring a line of the ipvs state file", "error", p)
	}
	d.owned = owned
	return d, nil
}

// Name is what the daemon logs.
func (d *Datapath) Name() string { return "ipvs" }

// Close releases the netlink socket. IPVS's table stays as it is, so
// traffic keeps flowing while halb restarts.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.k == nil {
		return nil
	}
	err := closeKernel(d.k)
	d.k = nil
	return err
}

// Cleanup removes every IPVS service halb owns (hand-made ones stay) and
// closes the Datapath: `halb run --cleanup`.
func (d *Datapath) Cleanup() error {
	err := d.Apply(context.Background(), nil)
	return errors.Join(err, d.Close())
}

// Apply makes IPVS's table hold exactly services, as far as halb owns it:
// it creates the services that are missing, updates those whose scheduler
// or persistence differ, removes those halb owns that are no longer wanted,
// and, in each, adds, reweighs and removes destinations. A backend of
// weight 0 stays, drained. Services halb does not own are never touched.
//
// Apply loads ip_vs and the schedulers first and fails, having changed
// nothing, when one is missing. Other failures do not stop it: it changes
// what it can and returns every error, and the next Apply tries again.
func (d *Datapath) Apply(ctx context.Context, services []service.Service) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.k == nil {
		return fmt.Errorf("ipvs apply: %w", service.ErrClosed)
	}
	want, err := targets(services)
	if err != nil {
		return err
	}
	if d.unchanged(want) {
		return nil
	}
	d.want, d.clean = want, false
	if err := d.ensureModules(ctx, want); err != nil {
		return err
	}
	have, err := d.read(want)
	if err != nil {
		return err
	}

	owned := keySet{}
	for k := range d.owned {
		owned[k] = true
	}
	for _, t := range want {
		owned[t.key] = true
	}
	p := plan(want, have, owned)
	for i := range p.services {
		sc := &p.services[i]
		sc.restore = sc.old == nil && d.owned[sc.t.key]
	}

	for _, t := range want {
		if c, ok := have[t.key]; ok && !d.owned[t.key] {
			d.log.Info("ipvs service existed before halb took it over", "service", t.name, "scheduler", c.svc.Scheduler)
		}
	}
	var errs []error
	// Record first what this pass may create, so that after a crash halfway
	// a restarted halb still knows those services are its own.
	if !owned.equal(d.owned) {
		errs = append(errs, d.record(owned))
	}

	present := keySet{}
	for k := range have {
		present[k] = true
	}
	errs = append(errs, d.execute(ctx, p, present)...)

	// Keep what halb still owns in the kernel, and what it wants even where
	// creating it failed, so that a lasting failure does not rewrite the
	// file on every pass.
	after := keySet{}
	for k := range owned {
		if present[k] {
			after[k] = true
		}
	}
	for _, t := range want {
		after[t.key] = true
	}
	if !after.equal(d.owned) {
		errs = append(errs, d.record(after))
	}
	err = errors.Join(errs...)
	d.clean = err == nil
	if d.clean {
		d.settle(want)
	}
	return err
}

// record writes keys to the state file.
func (d *Datapath) record(keys keySet) error {
	if err := writeState(d.state, keys); err != nil {
		return fmt.Errorf("record the services halb owns in %s: %w; a restarted halb would not remove those that left its configuration", d.state, err)
	}
	d.owned = keys
	return nil
}

// target is one service as IPVS should hold it.
type target struct {
	name  string // "web (192.0.2.10:80/tcp)", for errors and logs
	cfg   string // "web", the service's name in the config
	key   service.Key
	svc   cfipvs.Service
	dests []cfipvs.Destination
}

// maxTimeout is the longest persistence IPVS keeps: it holds the timeout in
// jiffies in an unsigned int (ip_vs_add_service: u->timeout * HZ), and HZ is
// at most 1000.
const maxTimeout = math.MaxUint32 / 1000 * time.Second

// targets turns services into what IPVS should hold, and reports every
// service the kernel would refuse, all at once.
func targets(services []service.Service) ([]target, error) {
	var errs []error
	out := make([]target, 0, len(services))
	seen := map[service.Key]string{}
	for _, s := range services {
		name := s.Key.String()
		if s.Name != "" {
			name = fmt.Sprintf("%s (%s)", s.Name, s.Key)
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("service %s: %s", name, fmt.Sprintf(format, args...)))
		}
		if first, dup := seen[s.Key]; dup {
			bad("%s is also service %s: IPVS holds one service per (VIP, port, protocol)", s.Key, first)
			continue
		}
		seen[s.Key] = name

		t := target{name: name, cfg: s.Name, key: s.Key}
		t.svc = cfipvs.Service{Address: s.Key.VIP, Port: s.Key.Port, Scheduler: s.Scheduler}
		switch {
		case !s.Key.VIP.IsValid():
			bad("no VIP")
		case s.Key.VIP.Zone() != "":
			// IPVS keeps no zone: the service would never match the one
			// halb asked for.
			bad("VIP %s has a zone; IPVS takes none", s.Key.VIP)
		case s.Key.VIP.Is4():
			t.svc.Family = cfipvs.INET
			// The kernel wants a netmask with every service; it matters only
			// to persistence, which groups clients by it. One address per
			// client, as ipvsadm's default.
			t.svc.Netmask = netmask.MaskFrom(32, 32)
		default:
			t.svc.Family = cfipvs.INET6
			t.svc.Netmask = netmask.MaskFrom(128, 128) // ip_vs_add_service: EINVAL outside 1..128
		}
		switch s.Key.Proto {
		case service.TCP:
			t.svc.Protocol = cfipvs.TCP
		case service.UDP:
			t.svc.Protocol = cfipvs.UDP
		default:
			bad("protocol %s: halb programs tcp and udp", s.Key.Proto)
		}
		if s.Key.Port == 0 {
			bad("port 0: use a port from 1 to 65535")
		}
		if !slices.Contains(schedulers, s.Scheduler) {
			bad("scheduler %q: IPVS has no such scheduler (use one of %s)", s.Scheduler, strings.Join(schedulers, ", "))
		}
		switch {
		case s.Persistence < 0:
			bad("persistence %s is negative", s.Persistence)
		case s.Persistence > maxTimeout:
			bad("persistence %s is longer than IPVS keeps (%s)", s.Persistence, maxTimeout)
		case s.Persistence > 0:
			t.svc.Flags = cfipvs.ServicePersistent
			t.svc.Timeout = uint32((s.Persistence + time.Second - 1) / time.Second)
		}
		fwd, ok := forwards[s.Forward]
		if !ok {
			bad("forward %s: IPVS does dr, tun and nat only (full NAT runs on the eBPF data path)", s.Forward)
		}

		backends := map[netip.AddrPort]bool{}
		for _, b := range s.Backends {
			port := b.Port
			if port == 0 {
				port = s.Key.Port // as ipvsadm does when a real server has no port
			}
			ap := netip.AddrPortFrom(b.Addr, port)
			switch {
			case !b.Addr.IsValid():
				bad("a backend has no address")
				continue
			case b.Addr.Zone() != "":
				bad("backend %s has a zone; IPVS takes none", ap)
			case backends[ap]:
				bad("backend %s is listed twice", ap)
				continue
			case b.Addr.Is4() != s.Key.VIP.Is4() && s.Forward != service.TUN:
				// ip_vs_genl_set_cmd: a destination of the other family
				// only for tunnelling.
				bad("backend %s is not of the VIP's address family; IPVS mixes families only with forward: tun", ap)
			case b.Weight > math.MaxInt32:
				bad("backend %s: weight %d is more than IPVS takes (%d)", ap, b.Weight, math.MaxInt32)
			}
			backends[ap] = true
			dst := cfipvs.Destination{Address: b.Addr, Port: port, Weight: b.Weight, FwdMethod: fwd, Family: cfipvs.INET}
			if b.Addr.Is6() {
				dst.Family = cfipvs.INET6
			}
			if fwd == cfipvs.Tunnel {
				dst.TunnelType = cfipvs.IPIP // IPIP for IPv4, IP6IP6 for IPv6
			}
			t.dests = append(t.dests, dst)
		}
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

// forwards maps halb's forwarding methods to IPVS's.
var forwards = map[service.Forward]cfipvs.ForwardType{
	service.DR:  cfipvs.DirectRoute,
	service.TUN: cfipvs.Tunnel,
	service.NAT: cfipvs.Masquerade,
}

func forwardName(f cfipvs.ForwardType) string {
	for k, v := range forwards {
		if v == f {
			return k.String()
		}
	}
	return strings.ToLower(f.String())
}

// ensureModules loads ip_vs and the schedulers want uses, before anything
// in the kernel is changed.
func (d *Datapath) ensureModules(ctx context.Context, want []target) error {
	var scheds []string
	for _, t := range want {
		scheds = append(scheds, t.svc.Scheduler)
	}
	mods, err := Needed(scheds)
	if err != nil {
		return err
	}
	if err := d.mods.Ensure(ctx, mods[0]); err != nil {
		return fmt.Errorf("IPVS itself (module ip_vs): %w", err)
	}
	var errs []error
	for _, m := range mods[1:] {
		err := d.mods.Ensure(ctx, m)
		if err == nil {
			continue
		}
		sched := strings.TrimPrefix(m, "ip_vs_")
		var users []string
		for _, t := range want {
			if t.svc.Scheduler == sched {
				users = append(users, t.name)
			}
		}
		errs = append(errs, &SchedulerError{Service: strings.Join(users, ", "), Scheduler: sched, Err: err})
		if !errors.Is(err, kmod.ErrNotShipped) {
			break // Ensure's rule: the next module would fail the same way
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("nothing changed in IPVS: %w", errors.Join(errs...))
	}
	return nil
}

// current is one service as IPVS holds it.
type current struct {
	svc   cfipvs.Service
	dests []cfipvs.Destination // read only for the services halb wants
	// persist is what /proc/net/ip_vs shows after "persistent": the
	// timeout in jiffies and the netmask ("75000 FFFFFFFF"), which cannot
	// be turned back into seconds without the kernel's HZ; empty when read
	// over netlink, or when the service is not persistent.
	persist string
}

// keyOf is the key of an IPVS service; false for those halb never makes
// (firewall-mark services, SCTP).
func keyOf(s cfipvs.Service) (service.Key, bool) {
	if s.FWMark != 0 || (s.Protocol != cfipvs.TCP && s.Protocol != cfipvs.UDP) {
		return service.Key{}, false
	}
	return service.Key{VIP: s.Address, Port: s.Port, Proto: service.Protocol(s.Protocol)}, true
}

// read returns IPVS's services by key, with the destinations of those in
// want.
func (d *Datapath) read(want []target) (map[service.Key]*current, error) {
	list, err := d.k.Services()
	switch err = listed(err); {
	case errors.Is(err, ErrEmptyTable):
		list = nil
	case isENOENT(err):
		return nil, fmt.Errorf("list IPVS services: %w (was ip_vs unloaded?): %w", ErrFamilyMissing, err)
	case err != nil:
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	have := make(map[service.Key]*current, len(list))
	for _, s := range list {
		if k, ok := keyOf(s.Service); ok {
			have[k] = &current{svc: s.Service}
		}
	}
	for _, t := range want {
		c, ok := have[t.key]
		if !ok {
			continue
		}
		dests, err := d.k.Destinations(c.svc)
		switch err = listed(err); {
		case errors.Is(err, ErrEmptyTable):
		case err != nil:
			return nil, fmt.Errorf("list the destinations of IPVS service %s: %w", t.name, err)
		}
		for _, x := range dests {
			c.dests = append(c.dests, x.Destination)
		}
	}
	return have, nil
}

// changes is what one Apply does, in the order it does it: services created
// or updated (each may need a scheduler the kernel lacks, so these go first,
// where they can be undone), then destinations, then removals.
type changes struct {
	services []serviceChange
	dests    []destChange // of services that exist already
	remove   []cfipvs.Service
}

type serviceChange struct {
	t   target
	old *cfipvs.Service // nil: create
	// restore: halb owned the service already and the kernel lost it
	// (ipvsadm -C, or an edit behind halb's back).
	restore bool
}

type destChange struct {
	op   destOp
	t    *target
	dest cfipvs.Destination // the new one, or the one to remove
	old  cfipvs.Destination // for destUpdate
}

type destOp int

const (
	destCreate destOp = iota
	destUpdate
	destRemove
)

// plan compares want with what IPVS has and returns what to change. It
// removes services that halb owns and does not want; it never looks at any
// other.
func plan(want []target, have map[service.Key]*current, owned keySet) changes {
	var c changes
	wanted := keySet{}
	for i := range want {
		t := &want[i]
		wanted[t.key] = true
		cur, ok := have[t.key]
		if !ok {
			c.services = append(c.services, serviceChange{t: *t})
			continue
		}
		if !sameService(cur.svc, t.svc) {
			old := cur.svc
			c.services = append(c.services, serviceChange{t: *t, old: &old})
		}
		c.dests = append(c.dests, diffDests(t, cur.dests)...)
	}
	var gone []service.Key
	for k := range have {
		if owned[k] && !wanted[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b service.Key) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range gone {
		c.remove = append(c.remove, have[k].svc)
	}
	return c
}

// sameService reports whether IPVS holds a service as halb wants it.
// ServiceHashed is the kernel's own bookkeeping, set on every service in its
// table.
func sameService(have, want cfipvs.Service) bool {
	return have.Scheduler == want.Scheduler &&
		have.Flags&^cfipvs.ServiceHashed == want.Flags &&
		have.Timeout == want.Timeout &&
		have.Netmask == want.Netmask
}

func destKey(d cfipvs.Destination) netip.AddrPort { return netip.AddrPortFrom(d.Address, d.Port) }

// diffDests returns the destination changes that turn have into t's.
func diffDests(t *target, have []cfipvs.Destination) []destChange {
	byKey := make(map[netip.AddrPort]cfipvs.Destination, len(have))
	for _, h := range have {
		byKey[destKey(h)] = h
	}
	var out []destChange
	for _, w := range t.dests {
		h, ok := byKey[destKey(w)]
		switch {
		case !ok:
			out = append(out, destChange{op: destCreate, t: t, dest: w})
		case !sameDest(h, w):
			out = append(out, destChange{op: destUpdate, t: t, dest: w, old: h})
		}
		delete(byKey, destKey(w))
	}
	for _, h := range have {
		if _, unwanted := byKey[destKey(h)]; unwanted {
			out = append(out, destChange{op: destRemove, t: t, dest: h})
		}
	}
	return out
}

// sameDest reports whether IPVS holds a destination as halb wants it.
func sameDest(have, want cfipvs.Destination) bool {
	// Older kernels turned the method of a destination whose address is
	// local to the director into Local (__ip_vs_update_dest); that is the
	// kernel's choice, not a difference to correct on every pass.
	fwdOK := have.FwdMethod == want.FwdMethod || have.FwdMethod == cfipvs.Local
	tunOK := want.FwdMethod != cfipvs.Tunnel ||
		have.TunnelType == want.TunnelType && have.TunnelPort == want.TunnelPort && have.TunnelFlags == want.TunnelFlags
	return fwdOK && tunOK && have.Weight == want.Weight &&
		have.UpperThreshold == want.UpperThreshold && have.LowerThreshold == want.LowerThreshold
}

// execute makes the changes, keeping present (the keys of the services in
// the kernel) up to date, and returns every error.
func (d *Datapath) execute(ctx context.Context, c changes, present keySet) []error {
	var errs []error
	failed := keySet{} // services that could not be created: skip their destinations
	var done []serviceChange
	for _, sc := range c.services {
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("ipvs: stopped before service %s: %w", sc.t.name, err))
		}
		var err error
		if sc.old == nil {
			err = d.k.CreateService(sc.t.svc)
		} else {
			err = d.k.UpdateService(sc.t.svc)
		}
		if isENOENT(err) {
			// The scheduler went missing after ensureModules (someone
			// unloaded it): undo this pass's service changes, so that
			// nothing is half-programmed.
			errs = append(errs, fmt.Errorf("nothing changed in IPVS: %w",
				&SchedulerError{Service: sc.t.name, Scheduler: sc.t.svc.Scheduler, Err: err}))
			return append(errs, d.undo(done, present)...)
		}
		if err != nil {
			verb := "create"
			if sc.old != nil {
				verb = "update"
			}
			errs = append(errs, fmt.Errorf("%s IPVS service %s: %w", verb, sc.t.name, err))
			if sc.old == nil {
				failed[sc.t.key] = true
			}
			continue
		}
		done = append(done, sc)
		switch {
		case sc.restore:
			// Ours, and gone from the kernel: someone flushed or edited
			// the table behind halb's back.
			present[sc.t.key] = true
			d.log.Warn("ipvs service was missing from the kernel; restored", "service", sc.t.name, "scheduler", sc.t.svc.Scheduler)
		case sc.old == nil:
			present[sc.t.key] = true
			d.log.Info("ipvs service added", "service", sc.t.name, "scheduler", sc.t.svc.Scheduler, "persistence", persistence(sc.t.svc))
		default:
			d.log.Info("ipvs service changed", "service", sc.t.name,
				"scheduler", sc.t.svc.Scheduler, "persistence", persistence(sc.t.svc),
				"was_scheduler", sc.old.Scheduler, "was_persistence", persistence(*sc.old))
		}
	}

	// Destinations: all of each new service's, then the changes to the
	// others'.
	var dcs []destChange
	for i := range c.services {
		sc := &c.services[i]
		if sc.old == nil && !failed[sc.t.key] {
			for _, dst := range sc.t.dests {
				dcs = append(dcs, destChange{op: destCreate, t: &sc.t, dest: dst})
			}
		}
	}
	dcs = append(dcs, c.dests...)
	for _, dc := range dcs {
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("ipvs: stopped before backend %s of service %s: %w", destKey(dc.dest), dc.t.name, err))
		}
		if err := d.applyDest(dc); err != nil {
			errs = append(errs, err)
		}
	}

	for _, s := range c.remove {
		k, _ := keyOf(s)
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("ipvs: stopped before removing service %s: %w", k, err))
		}
		// ESRCH: someone removed it meanwhile.
		if err := d.k.RemoveService(s); err != nil && !isESRCH(err) {
			errs = append(errs, fmt.Errorf("remove IPVS service %s, which left halb's configuration: %w", k, err))
			continue
		}
		delete(present, k)
		d.log.Info("ipvs service removed", "service", k.String())
	}
	return errs
}

func (d *Datapath) applyDest(dc destChange) error {
	backend := destKey(dc.dest).String()
	switch dc.op {
	case destCreate:
		if err := d.k.CreateDestination(dc.t.svc, dc.dest); err != nil {
			return fmt.Errorf("add backend %s to IPVS service %s: %w", backend, dc.t.name, err)
		}
		d.log.Info("ipvs backend added", "service", dc.t.name, "backend", backend, "weight", dc.dest.Weight, "forward", forwardName(dc.dest.FwdMethod))
	case destUpdate:
		if err := d.k.UpdateDestination(dc.t.svc, dc.dest); err != nil {
			return fmt.Errorf("update backend %s of IPVS service %s: %w", backend, dc.t.name, err)
		}
		d.log.Info("ipvs backend changed", "service", dc.t.name, "backend", backend,
			"weight", dc.dest.Weight, "forward", forwardName(dc.dest.FwdMethod),
			"was_weight", dc.old.Weight, "was_forward", forwardName(dc.old.FwdMethod))
	case destRemove:
		// ENOENT: someone removed it meanwhile (ip_vs_del_dest).
		if err := d.k.RemoveDestination(dc.t.svc, dc.dest); err != nil && !isENOENT(err) {
			return fmt.Errorf("remove backend %s from IPVS service %s: %w", backend, dc.t.name, err)
		}
		d.log.Info("ipvs backend removed", "service", dc.t.name, "backend", backend)
	}
	return nil
}

// undo reverses service changes made in this pass, newest first.
func (d *Datapath) undo(done []serviceChange, present keySet) []error {
	var errs []error
	for _, sc := range slices.Backward(done) {
		if sc.old == nil {
			if err := d.k.RemoveService(sc.t.svc); err != nil {
				errs = append(errs, fmt.Errorf("undo: remove IPVS service %s again: %w", sc.t.name, err))
				continue
			}
			delete(present, sc.t.key)
			continue
		}
		old := *sc.old
		old.Flags &^= cfipvs.ServiceHashed
		if err := d.k.UpdateService(old); err != nil {
			errs = append(errs, fmt.Errorf("undo: restore IPVS service %s to scheduler %s: %w", sc.t.name, old.Scheduler, err))
		}
	}
	return errs
}

// persistence is how a service keeps clients on a backend, for logs.
func persistence(s cfipvs.Service) time.Duration {
	if s.Flags&cfipvs.ServicePersistent == 0 {
		return 0
	}
	return time.Duration(s.Timeout) * time.Second
}
