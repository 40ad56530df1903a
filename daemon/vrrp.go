package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/vrrp"
)

// vrrpSet runs the configured VRRP instances. A reload changes only what
// changed: an instance whose configuration (and sync group) is the same
// keeps running in its state; a changed one is stopped, as at shutdown
// (priority 0, VIPs given up), and started anew; a removed one is stopped;
// a new one starts.
//
// apply runs on the daemon's loop and never waits for an instance to stop
// (a notify script may hold one for seconds): an instance that takes the
// place of stopping ones waits for them on its own goroutine, so that two
// instances never hold the same VRID, VIPs or VMAC at once.
type vrrpSet struct {
	log *slog.Logger

	mu      sync.Mutex // guards running, order and r.inst for the control socket
	running map[string]*runningInstance
	order   []string
	groups  map[string]*vrrp.Group // by group signature
	// stopping are the instances told to stop that may not have yet.
	stopping []*runningInstance
	// run is (*vrrp.Instance).Run; a test makes an instance slow to stop.
	run func(context.Context, *vrrp.Instance) error
	// changed, when set, is called on an instance's goroutine at each of
	// its changes of state; it must not block (the daemon's BGP
	// announcements follow MASTER with it).
	changed func()

	// locks are the virtual routers this halb holds (lockInstance), in
	// lockDir: one for each running instance and each stopping one that
	// has not stopped, so that no other halb runs one at the same time.
	// Only the daemon's loop uses them.
	locks   map[instanceKey]*lockFile
	lockDir string
	netns   string // netnsID, read at the first lock
}

type runningInstance struct {
	cfg   config.Instance
	group string         // the signature of its sync group; "" when in none
	inst  *vrrp.Instance // nil while it waits for the instances it replaces
	stop  context.CancelFunc
	done  chan struct{} // closed when its goroutine has returned
}

func newVRRPSet(log *slog.Logger, lockDir string) *vrrpSet {
	return &vrrpSet{log: log, running: map[string]*runningInstance{}, groups: map[string]*vrrp.Group{},
		run:   func(ctx context.Context, in *vrrp.Instance) error { return in.Run(ctx) },
		locks: map[instanceKey]*lockFile{}, lockDir: lockDir}
}

// lockAll takes the lock of every instance of c, at start, before
// anything is changed: a halb whose virtual router another halb runs
// exits naming it (*LockedError) and holds none.
func (s *vrrpSet) lockAll(c config.VRRP) error {
	for _, ic := range c.Instances {
		if err := s.lock(ic); err != nil {
			s.releaseLocks()
			return err
		}
	}
	return nil
}

// lock takes the lock of ic's virtual router unless this halb holds it.
func (s *vrrpSet) lock(ic config.Instance) error {
	k := keyOf(ic)
	if s.locks[k] != nil {
		return nil
	}
	if s.netns == "" {
		id, err := netnsID()
		if err != nil {
			return err
		}
		s.netns = id
	}
	l, err := lockInstance(s.lockDir, s.netns, ic.Name, k)
	if err != nil {
		return err
	}
	s.locks[k] = l
	return nil
}

// releaseUnused lets go of the virtual routers no instance runs and no
// stopping one still holds.
func (s *vrrpSet) releaseUnused() {
	used := map[instanceKey]bool{}
	for _, r := range s.running {
		used[keyOf(r.cfg)] = true
	}
	for _, r := range s.stopping {
		if !isClosed(r.done) {
			used[keyOf(r.cfg)] = true
		}
	}
	for k, l := range s.locks {
		if !used[k] {
			l.release()
			delete(s.locks, k)
		}
	}
}

// releaseLocks lets go of every lock, at exit.
func (s *vrrpSet) releaseLocks() {
	for k, l := range s.locks {
		l.release()
		delete(s.locks, k)
	}
}

// groupSignatures names each instance's sync group by its name, members
// and notify scripts, so that a group whose membership or scripts change
// is a new group.
func groupSignatures(c config.VRRP) map[string]string {
	sig := map[string]string{}
	for _, g := range c.SyncGroups {
		members := slices.Clone(g.Instances)
		slices.Sort(members)
		s := g.Name + ":" + strings.Join(members, ",") + fmt.Sprint(g.StateScripts())
		for _, m := range g.Instances {
			sig[m] = s
		}
	}
	return sig
}

// groupNamed is c's sync group called name.
func groupNamed(c config.VRRP, name string) config.SyncGroup {
	i := slices.IndexFunc(c.SyncGroups, func(g config.SyncGroup) bool { return g.Name == name })
	return c.SyncGroups[i]
}

// apply makes the running instances those of c. It returns at once.
func (s *vrrpSet) apply(c config.VRRP) {
	sigs := groupSignatures(c)
	want := map[string]config.Instance{}
	for _, ic := range c.Instances {
		want[ic.Name] = ic
	}
	// Stop what left or changed, all at once: instances of one sync
	// group go down together.
	s.mu.Lock()
	for name, r := range s.running {
		ic, ok := want[name]
		if ok && sameInstance(ic, r.cfg) && sigs[name] == r.group {
			r.cfg = ic
			continue
		}
		if ok {
			s.log.Info("vrrp instance changed; restarting it", "instance", name)
		} else {
			s.log.Info("vrrp instance removed", "instance", name)
		}
		r.stop()
		s.stopping = append(s.stopping, r)
		delete(s.running, name)
	}
	s.mu.Unlock()
	s.stopping = slices.DeleteFunc(s.stopping, func(r *runningInstance) bool { return isClosed(r.done) })
	// Groups nobody runs in any more are forgotten.
	inUse := map[string]bool{}
	for _, r := range s.running {
		inUse[r.group] = true
	}
	for sig := range s.groups {
		if !inUse[sig] {
			delete(s.groups, sig)
		}
	}

	var order []string
	for _, ic := range c.Instances {
		order = append(order, ic.Name)
		if _, ok := s.running[ic.Name]; ok {
			continue
		}
		// Another halb running this virtual router keeps it: this one
		// runs the rest, and tries again at the next reload.
		if err := s.lock(ic); err != nil {
			s.log.Error("vrrp instance not started", "instance", ic.Name, "err", err)
			order = order[:len(order)-1]
			continue
		}
		var g *vrrp.Group
		if sig := sigs[ic.Name]; sig != "" {
			g = s.groups[sig]
			if g == nil {
				g = vrrp.NewSyncGroup(groupNamed(c, sig[:strings.Index(sig, ":")]), s.log)
				s.groups[sig] = g
			}
		}
		s.start(ic, sigs[ic.Name], g)
	}
	s.mu.Lock()
	s.order = order
	s.mu.Unlock()
	s.releaseUnused()
}

// start runs the instance ic on a goroutine of its own, once every
// instance stopping now has stopped.
func (s *vrrpSet) start(ic config.Instance, group string, g *vrrp.Group) {
	ctx, stop := context.WithCancel(context.Background())
	r := &runningInstance{cfg: ic, group: group, stop: stop, done: make(chan struct{})}
	wait := slices.Clone(s.stopping)
	run := s.run
	newInstance := func() *vrrp.Instance {
		in := vrrp.NewInstance(ic, s.log)
		if s.changed != nil {
			changed := s.changed
			in.OnTransition(func(vrrp.State) { changed() })
		}
		if g != nil {
			in.JoinGroup(g)
		}
		return in
	}
	if len(wait) == 0 {
		r.inst = newInstance() // listed in halb status from now
	}
	s.mu.Lock()
	s.running[ic.Name] = r
	s.mu.Unlock()
	go func() {
		defer close(r.done)
		for _, old := range wait {
			select {
			case <-old.done:
			case <-ctx.Done():
				return
			}
		}
		s.mu.Lock()
		if r.inst == nil {
			r.inst = newInstance()
		}
		in := r.inst
		s.mu.Unlock()
		if err := run(ctx, in); err != nil {
			s.log.Error("vrrp instance stopped", "instance", ic.Name, "err", err)
		}
	}()
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// sameInstance reports whether a running instance configured as b can go
// on as a. Accept_Mode does not count: the accept filter carries it out,
// and a reload that changes it changes the filter, not the instance.
func sameInstance(a, b config.Instance) bool {
	a.Accept, b.Accept = false, false
	return reflect.DeepEqual(a, b)
}

// stopAll stops every instance: each gives its VIPs up and, as Master,
// sends priority 0 so the backup takes over after skew time. It waits for
// them, and for those a reload stopped, until the deadline, and names any
// that have not stopped by then.
func (s *vrrpSet) stopAll(deadline time.Time) {
	s.apply(config.VRRP{})
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	for _, r := range s.stopping {
		select {
		case <-r.done:
		case <-timeout.C:
			var left []string
			for _, r := range s.stopping {
				if !isClosed(r.done) {
					left = append(left, r.cfg.Name)
				}
			}
			s.log.Error("vrrp instances did not stop in time; exiting without them", "instances", strings.Join(left, ","))
			return
		}
	}
	s.stopping = nil
}

// instances lists the running instances in configuration order.
func (s *vrrpSet) instances() []*vrrp.Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*vrrp.Instance
	for _, name := range s.order {
		if r, ok := s.running[name]; ok && r.inst != nil {
			out = append(out, r.inst)
		}
	}
	return out
}

// acceptFilter keeps the kernel's Accept_Mode filter (vrrp.AcceptRules) equal
// to what the configuration in force asks for. It is a function of the
// configuration alone, so that failover never waits on it.
//
// The table has one name per network namespace, so it belongs to one
// halb: the one holding its lock (acceptLockName). A halb that does not
// hold it never touches the table, so that a second halb on the host
// neither replaces the first one's rules nor deletes them at its stop.
//
// Others can change the table too: `nft flush ruleset`, which
// nftables.service runs at start and reload, removes it. Each resync
// reads it back and reinstalls it when it is not what halb applied.
type acceptFilter struct {
	mu      sync.Mutex // apply and remove run on the daemon's loop, dropped on a scrape
	log     *slog.Logger
	table   *vrrp.AcceptTable
	applied []vrrp.AcceptRule
	// stale is set while the kernel may not hold applied: at start (a
	// killed halb may have left a table) and after a change failed.
	stale bool
	// lock is held while this halb owns the table; lockDir holds it.
	lock    *lockFile
	lockDir string
	// refused is the last reason the lock was not had, logged once.
	refused string
}

func newAcceptFilter(log *slog.Logger, lockDir string) (*acceptFilter, error) {
	table, err := vrrp.OpenAcceptTable(0)
	if err != nil {
		return nil, err
	}
	return &acceptFilter{log: log, table: table, stale: true, lockDir: lockDir}, nil
}

// claim takes the table's lock unless this halb holds it.
func (a *acceptFilter) claim() error {
	if a.lock != nil {
		return nil
	}
	netns, err := netnsID()
	if err != nil {
		return err
	}
	if err := makeLockDir(a.lockDir); err != nil {
		return err
	}
	l, err := acquireLock(filepath.Join(a.lockDir, "nft-netns"+netns+"-inet-"+vrrp.AcceptTableName+".lock"),
		"accept_mode filter (nftables table inet "+vrrp.AcceptTableName+")",
		"stop that halb first, run this one in a network namespace of its own, or set accept: true on its v3 instances")
	if err != nil {
		return err
	}
	a.lock = l
	return nil
}

// claimFor takes the table's lock when c needs the filter, at start,
// with the other locks: a halb whose filter another halb holds exits.
func (a *acceptFilter) claimFor(c *config.Config) error {
	if len(vrrp.AcceptRules(c)) == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.claim()
}

// apply installs c's rules when they differ from the ones in force, the
// last change failed, or the kernel no longer holds what was installed;
// otherwise it does nothing.
func (a *acceptFilter) apply(c *config.Config) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rules, hostOwn := vrrp.LeaveOutHostAddrs(vrrp.AcceptRules(c))
	table := "inet " + vrrp.AcceptTableName
	if !a.stale && slices.Equal(rules, a.applied) {
		if len(rules) == 0 {
			return
		}
		ok, why := a.table.Holds(rules)
		if ok {
			return
		}
		a.log.Warn("accept_mode filter changed or removed outside halb; reinstalling", "table", table, "found", why,
			"cause", "nft flush ruleset (nftables.service start or reload) removes it")
	}
	if err := a.claim(); err != nil {
		if len(rules) == 0 {
			// Another halb's table, or none: not this one's to remove.
			a.applied, a.stale = nil, false
			return
		}
		a.stale = true
		if msg := err.Error(); msg != a.refused {
			a.refused = msg
			a.log.Error("accept_mode filter not installed; retrying at each resync: a master will accept all traffic to its vips",
				"table", table, "err", err)
		}
		return
	}
	a.refused = ""
	for _, vip := range hostOwn {
		a.log.Warn("accept_mode filter leaves out a vip that is the host's own address (on an interface, not added by halb)", "vip", vip)
	}
	if err := a.table.Apply(rules); err != nil {
		a.stale = true
		a.log.Error("accept_mode filter not installed; retrying at the next resync: a master will accept all traffic to its vips",
			"table", table, "err", err, "fix", "a kernel with nf_tables, or accept: true on the v3 instances")
		return
	}
	had := len(a.applied) > 0
	a.applied, a.stale = rules, false
	var vips []string
	for _, r := range rules {
		if r.Drop {
			vips = append(vips, r.Dst.String())
		}
	}
	switch {
	case len(vips) > 0:
		a.log.Info("accept_mode filter installed", "table", table, "vips", strings.Join(vips, ","),
			"effect", "as master, these vips take only halb's services, icmp errors and neighbour discovery; accept: true lifts it")
	case had:
		a.log.Info("accept_mode filter removed", "table", table)
	}
	if len(rules) == 0 {
		a.lock.release() // no table: another halb may have one
		a.lock = nil
	}
}

// remove takes the filter out of the kernel, at exit, if this halb owns
// it.
func (a *acceptFilter) remove() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lock == nil {
		return
	}
	defer func() {
		a.lock.release()
		a.lock = nil
	}()
	if err := a.table.Remove(); err != nil {
		a.log.Error("accept_mode filter not removed", "table", "inet "+vrrp.AcceptTableName, "err", err,
			"fix", "nft delete table inet "+vrrp.AcceptTableName)
		return
	}
	if len(a.applied) > 0 {
		a.log.Info("accept_mode filter removed", "table", "inet "+vrrp.AcceptTableName)
	}
}

// dropped is how many packets the filter dropped, by VIP.
func (a *acceptFilter) dropped() map[netip.Addr]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var vips []netip.Addr
	for _, r := range a.applied {
		if r.Drop {
			vips = append(vips, r.Dst)
		}
	}
	if len(vips) == 0 {
		return nil
	}
	counts, err := a.table.Counters()
	if err != nil || len(counts) != len(vips) {
		return nil
	}
	out := make(map[netip.Addr]uint64, len(vips))
	for i, v := range vips {
		out[v] += counts[i]
	}
	return out
}
