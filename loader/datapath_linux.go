package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/nsthread"
	"github.com/halb-lb/halb/service"
)

// unsupported is the error for a service the eBPF data path cannot serve
// (a forward mode or scheduler it lacks); the IPVS data path can.
func unsupported(feature string) error {
	return &service.UnsupportedError{Datapath: "the eBPF data path", Feature: feature}
}

// Hook is where a program is attached to an interface.
type Hook string

const (
	HookXDPNative  Hook = "xdp native"  // halb_xdp_lb in the driver
	HookXDPGeneric Hook = "xdp generic" // halb_xdp_lb on the skb path, any driver
	HookTCX        Hook = "tcx"         // halb_tc_lb on the tc ingress hook
)

func (h Hook) xdp() bool { return h != HookTCX }

// Attachment is the program on one of datapath.interfaces.
type Attachment struct {
	Interface string
	Hook      Hook
}

// Datapath is halb's eBPF data path: halb_xdp_lb (or halb_tc_lb) attached
// to datapath.interfaces, and the maps it reads, all pinned under
// datapath.bpffs. It implements service.Datapath.
//
// Pins make it outlive the process: Close leaves the program attached and
// the maps as they are, so traffic keeps flowing while halb restarts, and
// the next NewDatapath adopts what it finds. Cleanup takes it all away.
//
// A Datapath works in the network namespace NewDatapath was called in,
// whichever goroutine calls its methods later.
type Datapath struct {
	cfg  config.Datapath
	log  *slog.Logger
	dir  string
	lb   *kernelLB
	maps *mapWriter // every write Apply makes to lb's maps
	ns   netns.NsHandle
	nl   *netlink.Handle
	name string

	hooks []Hook // to try on each interface, best first (hooksOn)
	mode  string // the mode NewDatapath was asked for

	ifaces []*attachment // in datapath.interfaces order; not those missing
	// swap holds adopted links still running the program of the halb
	// before this one. They switch to this one's program at the end of the
	// first Apply when some pinned maps had to be replaced (the old
	// program keeps serving from the old maps until the new ones are
	// written), or at once when none were.
	swap []*attachment

	mu      sync.Mutex
	desired *desiredServices // the services of the last Apply
	applied map[service.Key]*svcState
	// newStates hands out the states of the services the Apply under
	// way adds (stateSlab).
	newStates stateSlab
	svcIDs    *serviceIDs
	beIDs     *backendIDs
	pending   atomic.Int64 // backends with a problem, tried again every retryPending
	// natServed is whether the last Apply had a NAT or full NAT service:
	// only then can the program want a reply's next hop (resolveWanted).
	natServed atomic.Bool
	reach     reach // the routes and neighbours to the backends (neigh_linux.go)
	// pinChecks is what the pin check found right (pincheck_linux.go).
	pinChecks pinChecks
	lastErr   string // what the last apply could not do, said once
	// attachErr is the last error attaching to each interface that
	// appeared late, said once.
	attachErr map[string]string
	now       time.Time // when the reconcile under way started
	closed    bool

	kick   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ service.Datapath = (*Datapath)(nil)

type attachment struct {
	Attachment
	ifindex int
	mac     net.HardwareAddr
	link    link.Link
	// adopted: the link was pinned by an earlier halb (a failed start
	// leaves it).
	adopted bool
	// bareVeth: a veth whose peer has no native XDP program, or may
	// have none (veth_linux.go).
	bareVeth bool
}

// program is the name of the program that runs on hook h.
func (h Hook) program() string {
	if h == HookTCX {
		return halbProgHalbTcLb
	}
	return halbProgHalbXdpLb
}

// progName is the name of the program on a's hook.
func (a *attachment) progName() string { return a.Hook.program() }

// progFor is the program of lb that runs on a's hook.
func (a *attachment) progFor(lb *kernelLB) (*ebpf.Program, error) {
	return lb.program(a.progName())
}

// NewDatapath loads halb's programs and maps, or adopts those pinned under
// cfg.BPFFS by an earlier halb, and attaches to every interface in
// cfg.Interfaces. mode is the data path the probe chose (loader.Choose):
// "xdp" attaches halb_xdp_lb as cfg.XDPMode says (auto: native, else
// generic, else halb_tc_lb through tcx); "tc" attaches halb_tc_lb through
// tcx. It mounts a bpf filesystem on /sys/fs/bpf when cfg.BPFFS is there and
// none is mounted, and refuses a cfg.BPFFS on no bpf filesystem elsewhere.
//
// It works in the network namespace of the calling thread, which stays the
// Datapath's for its life. It needs root (CAP_SYS_ADMIN for the mount,
// CAP_BPF and CAP_NET_ADMIN for the rest).
func NewDatapath(cfg config.Datapath, mode string, log *slog.Logger) (_ *Datapath, err error) {
	if log == nil {
		log = slog.Default()
	}
	hooks, err := hooksFor(mode, cfg.XDPMode)
	if err != nil {
		return nil, err
	}
	if len(cfg.Interfaces) == 0 {
		return nil, errors.New("datapath.interfaces is empty: name the interfaces where VIP traffic arrives")
	}
	if cfg.BPFFS == "" || !filepath.IsAbs(cfg.BPFFS) {
		return nil, fmt.Errorf("datapath.bpffs %q: need an absolute path on a bpf filesystem, such as /sys/fs/bpf/halb", cfg.BPFFS)
	}
	if cfg.MaglevTableSize < 0 || cfg.ConntrackEntries < 0 || cfg.MaxBackends < 0 {
		return nil, fmt.Errorf("datapath.maglev_table_size %d, datapath.conntrack_entries %d and datapath.max_backends %d must not be negative", cfg.MaglevTableSize, cfg.ConntrackEntries, cfg.MaxBackends)
	}

	d := &Datapath{
		cfg:     cfg,
		log:     log.With("datapath", mode),
		dir:     filepath.Clean(cfg.BPFFS),
		ns:      netns.None(),
		hooks:   hooks,
		mode:    mode,
		applied: map[service.Key]*svcState{},
		kick:    make(chan struct{}, 1),

		attachErr: map[string]string{},
	}
	d.reach.forget()
	// A start that fails takes back what it made, and only that: the
	// links it attached, the pins it made, the directory and the bpf
	// filesystem it created. What an earlier halb pinned and this one
	// adopted stays, and keeps forwarding.
	var made madeAtStart
	defer func() {
		if err != nil {
			if uerr := d.undo(&made); uerr != nil {
				d.log.Error("undoing a failed start left something behind", "err", uerr)
			}
			d.release()
		}
	}()
	if d.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("network namespace of the data path: %w", err)
	}
	if d.nl, err = netlink.NewHandleAt(d.ns); err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	// Another halb on one of the interfaces is refused before a mount,
	// a pin or a program (attach asks again, for one that appears late).
	for _, ifname := range cfg.Interfaces {
		if l, lerr := d.nl.LinkByName(ifname); lerr == nil {
			if err := d.otherHalb(l); err != nil {
				return nil, err
			}
		}
	}
	if made.mount, made.dir, err = prepareBPFFS(d.dir, d.log); err != nil {
		return nil, err
	}

	snatFirst, snatLast, _ := cfg.SNATPortRange() // 0, 0: the defaults
	opts := Options{
		MaglevTableSize:  uint32(cfg.MaglevTableSize),
		ConntrackEntries: uint32(cfg.ConntrackEntries),
		MaxBackends:      uint32(cfg.MaxBackends),
		SNATPortFirst:    uint16(snatFirst),
		SNATPortLast:     uint16(snatLast),
	}
	spec, maglev, err := newSpec(opts)
	if err != nil {
		return nil, err
	}
	replaced, err := dropIncompatiblePins(d.dir, spec, d.log)
	if err != nil {
		return nil, err
	}
	made.pins = absentPins(d.dir)
	for _, name := range pinnedMaps {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	// The program of the first hook to try is loaded now, so that a
	// kernel that refuses it stops the start; another one when an
	// interface first needs it (kernelLB.program).
	if d.lb, err = load(spec, maglev, opts, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.dir}}, hooks[0].program()); err != nil {
		return nil, err
	}
	d.maps = newMapWriter(d.lb)
	d.svcIDs = newServiceIDs(d.lb.maxServices())
	d.beIDs = newBackendIDs(d.lb.maxBackends())
	if err := d.adopt(); err != nil {
		return nil, err
	}

	for _, ifname := range cfg.Interfaces {
		a, err := d.attach(ifname)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			// Booting before the network: the interface is
			// attached to when it appears (linkChanged).
			d.log.Warn("data path interface missing, waiting for it", "interface", ifname)
			continue
		}
		if err != nil {
			return nil, err
		}
		d.ifaces = append(d.ifaces, a)
	}
	if err := d.syncTxPorts(); err != nil {
		return nil, err
	}
	if err := d.tidyPins(); err != nil {
		return nil, err
	}
	d.setName()
	d.warnRedirects()
	if len(replaced) == 0 {
		if err := d.swapPrograms(); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.wg.Go(func() { d.watchNetwork(ctx) })
	d.wg.Go(func() { d.refresher(ctx) })
	d.wg.Go(func() { d.guardPins(ctx) })
	d.wg.Go(func() { d.watchLocalMACs(ctx) })
	d.wg.Go(func() { d.resolveWanted(ctx) })
	for _, a := range d.ifaces {
		d.log.Info("data path attached", "interface", a.Interface, "hook", string(a.Hook), "bpffs", d.dir)
	}
	return d, nil
}

// madeAtStart is what NewDatapath made, for undo.
type madeAtStart struct {
	mount string          // where it mounted a bpf filesystem, or ""
	dir   bool            // it created datapath.bpffs
	pins  map[string]bool // pins absent before it loaded, by path
}

// absentPins are the paths under dir of the maps and programs halb pins
// that are not there now.
func absentPins(dir string) map[string]bool {
	out := map[string]bool{}
	for _, name := range append(slices.Clone(pinnedMaps), halbProgHalbXdpLb, halbProgHalbTcLb) {
		path := filepath.Join(dir, name)
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			out[path] = true
		}
	}
	return out
}

// undo takes back what a failed NewDatapath made: the links it attached
// anew (detached and unpinned), the pins that were not there before it
// (other than links), datapath.bpffs when it made it and it is empty
// again, and then the bpf filesystem it mounted when nothing else is in
// it. Adopted links and maps stay as they were pinned.
func (d *Datapath) undo(made *madeAtStart) error {
	var errs []error
	for _, a := range d.ifaces {
		if a.adopted {
			continue
		}
		if err := dropLink(a.link, linkPin(d.dir, a.progName(), a.Interface)); err != nil {
			errs = append(errs, err)
		}
		a.link = nil
	}
	for path := range made.pins {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
	}
	if made.dir {
		if err := os.Remove(d.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove datapath.bpffs %s: %w", d.dir, err))
		}
	}
	if made.mount != "" && bpffsUnused(made.mount) {
		if err := unix.Unmount(made.mount, 0); err != nil {
			errs = append(errs, fmt.Errorf("unmount the bpf filesystem on %s: %w", made.mount, err))
		}
	}
	return errors.Join(errs...)
}

// bpffsUnused tells whether the bpf filesystem mounted on dir holds
// nothing but what the kernel puts in every new one (the iterators of
// bpf_preload, maps.debug and progs.debug).
func bpffsUnused(dir string) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name() != "maps.debug" && e.Name() != "progs.debug" {
			return false
		}
	}
	return true
}

// hooksFor lists the hooks to try, best first.
func hooksFor(mode, xdpMode string) ([]Hook, error) {
	switch mode {
	case config.ModeTC:
		return []Hook{HookTCX}, nil
	case config.ModeXDP:
		switch xdpMode {
		case "native":
			return []Hook{HookXDPNative}, nil
		case "generic":
			return []Hook{HookXDPGeneric}, nil
		case "auto", "":
			return []Hook{HookXDPNative, HookXDPGeneric, HookTCX}, nil
		}
		return nil, fmt.Errorf("datapath.xdp_mode %q: use auto, native or generic", xdpMode)
	}
	return nil, fmt.Errorf("data path %q: the eBPF data path runs as xdp or tc", mode)
}

// Name is "xdp", or "tc" when every interface has halb_tc_lb.
func (d *Datapath) Name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.name
}

// setName names the data path after its hooks: "tc" when no interface
// has XDP, and the mode it was opened in while it waits for all of them.
// d.mu is held, or the Datapath is being made.
func (d *Datapath) setName() {
	d.name = d.mode
	if len(d.ifaces) > 0 {
		d.name = config.ModeXDP
		if !slices.ContainsFunc(d.ifaces, func(a *attachment) bool { return a.Hook.xdp() }) {
			d.name = config.ModeTC
		}
	}
}

// Attachments tells what is attached where, in datapath.interfaces order.
// An interface halb waits for is not there.
func (d *Datapath) Attachments() []Attachment {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Attachment, len(d.ifaces))
	for i, a := range d.ifaces {
		out[i] = a.Attachment
	}
	return out
}

// linkChanged follows datapath.interfaces after a link update: it
// attaches to one that appeared (halb started before it, or it was
// deleted and made again), lets go of one that went (the kernel detached
// the program with it), and takes a changed MAC into the backends'
// records. The first is what lets halb start before the network, as a
// VRRP instance waits in FAULT for its interface.
func (d *Datapath) linkChanged() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	changed := false
	for _, name := range d.cfg.Interfaces {
		i := slices.IndexFunc(d.ifaces, func(a *attachment) bool { return a.Interface == name })
		l, err := d.nl.LinkByName(name)
		var gone netlink.LinkNotFoundError
		switch {
		case err != nil && !errors.As(err, &gone):
			d.log.Warn("cannot read a data path interface", "interface", name, "err", err)
			continue
		case i >= 0 && (err != nil || l.Attrs().Index != d.ifaces[i].ifindex):
			d.letGo(i)
			changed = true
			i = -1
		case i >= 0 && !macEqual(l.Attrs().HardwareAddr, d.ifaces[i].mac):
			if len(l.Attrs().HardwareAddr) == 6 {
				d.log.Info("data path interface has a new mac", "interface", name, "mac", l.Attrs().HardwareAddr.String())
				d.ifaces[i].mac = slices.Clone(l.Attrs().HardwareAddr)
				changed = true
			}
		}
		if i >= 0 || err != nil {
			continue
		}
		if d.attachLate(name) {
			changed = true
		}
	}
	if !changed {
		return
	}
	err := nsthread.Do(d.ns, d.syncTxPorts)
	if err == nil {
		err = d.tidyPins()
	}
	if err != nil {
		d.log.Warn("data path interfaces changed", "err", err)
	}
	d.setName()
	d.warnRedirects()
	d.poke("interface")
}

// letGo forgets d.ifaces[i], which went away or was made again with
// another index: the kernel detached the program with it.
func (d *Datapath) letGo(i int) {
	a := d.ifaces[i]
	d.log.Warn("data path interface gone, waiting for it", "interface", a.Interface)
	d.ifaces = slices.Delete(d.ifaces, i, i+1)
	d.swap = slices.DeleteFunc(d.swap, func(s *attachment) bool { return s == a })
	if err := dropLink(a.link, linkPin(d.dir, a.progName(), a.Interface)); err != nil {
		d.log.Warn("let go of a data path interface", "interface", a.Interface, "err", err)
	}
}

// attachLate attaches to name, one of datapath.interfaces that appeared
// after the start, and puts it in its place in d.ifaces. A failure is
// logged when it differs from the last one for name, and tried again at
// the next link update.
func (d *Datapath) attachLate(name string) bool {
	pending := len(d.swap) > 0
	var a *attachment
	err := nsthread.Do(d.ns, func() (err error) {
		a, err = d.attach(name)
		return err
	})
	if err != nil {
		if msg := err.Error(); d.attachErr[name] != msg {
			d.attachErr[name] = msg
			d.log.Warn("cannot attach to a data path interface, trying again when it changes", "interface", name, "err", err)
		}
		return false
	}
	delete(d.attachErr, name)
	// Keep datapath.interfaces order.
	at := 0
	for _, n := range d.cfg.Interfaces {
		if n == name {
			break
		}
		if at < len(d.ifaces) && d.ifaces[at].Interface == n {
			at++
		}
	}
	d.ifaces = slices.Insert(d.ifaces, at, a)
	if a.adopted && !pending {
		// Its maps are in use already: no first Apply to wait for.
		if err := d.swapPrograms(); err != nil {
			d.log.Warn("adopt a pinned link", "interface", name, "err", err)
		}
	}
	d.log.Info("data path attached", "interface", name, "hook", string(a.Hook), "bpffs", d.dir)
	return true
}

// waitingFor names the ones of datapath.interfaces the program is not
// attached to (they are missing), in configured order. d.mu is held, or
// the Datapath is being made.
func (d *Datapath) waitingFor() []string {
	var out []string
	for _, name := range d.cfg.Interfaces {
		if !slices.ContainsFunc(d.ifaces, func(a *attachment) bool { return a.Interface == name }) {
			out = append(out, name)
		}
	}
	return out
}

// attach puts a program on ifname: the link an earlier halb pinned there
// when it is in one of the hooks to try there, or else a new one, the
// first of them that attaches. An adopted link joins d.swap, to get this
// halb's program. A missing interface is a netlink.LinkNotFoundError.
//
// It runs on the calling thread, which must be in the Datapath's network
// namespace: the kernel reads the ifindex of a new link there.
func (d *Datapath) attach(ifname string) (*attachment, error) {
	nlLink, err := d.nl.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("datapath.interfaces: %s: %w", ifname, err)
	}
	attrs := nlLink.Attrs()
	a := &attachment{
		Attachment: Attachment{Interface: ifname},
		ifindex:    attrs.Index,
		mac:        attrs.HardwareAddr,
	}
	if len(a.mac) != 6 {
		return nil, fmt.Errorf("datapath.interfaces: %s has no Ethernet address (%q): DR needs an Ethernet interface", ifname, a.mac)
	}
	// Another halb's program on a hook here: refused before anything
	// changes, as halb_tc_lb beside another's halb_xdp_lb would balance
	// every flow twice.
	if err := d.otherHalb(nlLink); err != nil {
		return nil, err
	}
	// The program balances only frames to the MACs in halb_local_macs:
	// they go in before it runs here (localmac_linux.go).
	if _, err := d.syncLocalMACs(a.ifindex, ifname); err != nil {
		return nil, err
	}
	peer := d.vethPeerOf(nlLink)
	a.bareVeth = peer.isVeth && !peer.xdp
	hooks := d.hooksOn(nlLink, peer)
	xdpPin := linkPin(d.dir, halbProgHalbXdpLb, ifname)
	tcPin := linkPin(d.dir, halbProgHalbTcLb, ifname)
	oldXDP := d.pinnedLink(xdpPin, a.ifindex)
	oldTC := d.pinnedLink(tcPin, a.ifindex)
	closeOld := func() {
		for _, l := range []link.Link{oldXDP, oldTC} {
			if l != nil {
				l.Close() // its pin keeps it attached
			}
		}
	}

	if oldXDP != nil {
		h := d.xdpHook(attrs.Index)
		switch {
		case slices.Contains(hooks, h):
			a.Hook, a.link, a.adopted = h, oldXDP, true
			oldXDP = nil
		case slices.ContainsFunc(hooks, Hook.xdp):
			// Native and generic XDP cannot be on one interface at
			// once: the old one must go first, and traffic passes to
			// the kernel until the new one is in.
			d.log.Warn("attached xdp mode differs from datapath.xdp_mode, attaching again",
				"interface", ifname, "attached", string(h), "want", string(hooks[0]))
			if err := dropLink(oldXDP, xdpPin); err != nil {
				oldXDP = nil
				closeOld()
				return nil, err
			}
			oldXDP = nil
		}
		// Else tc replaces XDP: XDP runs first and goes once tc is in.
	}
	var errs []error
	for _, h := range hooks {
		if a.link != nil {
			break
		}
		if h == HookTCX && oldTC != nil {
			a.Hook, a.link, a.adopted = h, oldTC, true
			oldTC = nil
			break
		}
		l, err := d.attachNew(h, a.ifindex)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h, err))
			continue
		}
		pin := xdpPin
		if h == HookTCX {
			pin = tcPin
		}
		if err := pinReplace(l, pin); err != nil {
			l.Close()
			closeOld()
			return nil, err
		}
		a.Hook, a.link = h, l
	}
	if a.link == nil {
		closeOld()
		return nil, fmt.Errorf("attach to %s: %w", ifname, errors.Join(errs...))
	}
	if len(errs) > 0 {
		tried := errors.Join(errs...).Error()
		if joined := errors.Join(errs...); errors.Is(joined, unix.EBUSY) || errors.Is(joined, unix.EEXIST) {
			// Another program (not halb's: otherHalb refused those)
			// holds the XDP hook (EBUSY, or EEXIST when it is in the
			// other XDP mode) and runs before halb's on tc: what it
			// passes is balanced, what it drops or redirects is not.
			held := uint32(0)
			if x := attrs.Xdp; x != nil {
				held = x.ProgId
			}
			d.log.Warn("another program holds the xdp hook, fell back to another hook",
				"interface", ifname, "hook", string(a.Hook), "xdp_prog_id", held,
				"xdp_prog", programName(ebpf.ProgramID(held)), "tried", tried)
		} else {
			d.log.Info("fell back to another hook", "interface", ifname, "hook", string(a.Hook), "tried", tried)
		}
	}
	// What an earlier halb attached and this one does not use goes now
	// that the new program is in; XDP runs before tc, so the two overlap
	// without a gap.
	var dropErrs []error
	if oldXDP != nil {
		dropErrs = append(dropErrs, dropLink(oldXDP, xdpPin))
	}
	if oldTC != nil {
		dropErrs = append(dropErrs, dropLink(oldTC, tcPin))
	}
	if err := errors.Join(dropErrs...); err != nil {
		if !a.adopted {
			_ = dropLink(a.link, linkPin(d.dir, a.progName(), ifname))
		} else {
			a.link.Close()
		}
		return nil, err
	}
	if a.adopted {
		d.swap = append(d.swap, a)
	}
	return a, nil
}

func (d *Datapath) attachNew(h Hook, ifindex int) (link.Link, error) {
	prog, err := d.lb.program(h.program())
	if err != nil {
		return nil, err
	}
	switch h {
	case HookXDPNative:
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	case HookXDPGeneric:
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
	default:
		return link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
	}
}

// pinnedLink opens the link pinned at path when it is attached to ifindex.
// A pin of a link that is attached elsewhere or nowhere any more (its
// interface was deleted, or renamed and another took the name) is
// removed.
func (d *Datapath) pinnedLink(path string, ifindex int) link.Link {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing an unreadable pin", "pin", path, "err", err)
			_ = os.Remove(path)
		}
		return nil
	}
	on := 0
	if info, err := l.Info(); err == nil {
		on = linkIfindex(info)
	}
	if on != ifindex {
		d.log.Warn("removing a pinned link that is not attached to its interface", "pin", path, "ifindex", on, "want", ifindex)
		if err := dropLink(l, path); err != nil {
			d.log.Warn("remove pinned link", "pin", path, "err", err)
		}
		return nil
	}
	return l
}

// xdpHook tells how XDP is attached to ifindex.
func (d *Datapath) xdpHook(ifindex int) Hook {
	l, err := d.nl.LinkByIndex(ifindex)
	if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.AttachMode == nl.XDP_ATTACHED_SKB {
		return HookXDPGeneric
	}
	return HookXDPNative
}

// dropLink detaches l and removes its pin. Without the pin and this
// handle the kernel releases the link even when the detach failed.
func dropLink(l link.Link, pin string) error {
	defer l.Close()
	var errs []error
	if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("detach %s: %w", pin, err))
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
	}
	return errors.Join(errs...)
}

// swapPrograms gives adopted links this halb's programs.
func (d *Datapath) swapPrograms() error {
	for _, a := range d.swap {
		prog, err := a.progFor(d.lb)
		if err == nil {
			err = a.link.Update(prog)
		}
		if err != nil {
			return fmt.Errorf("replace the program on %s: %w", a.Interface, err)
		}
		d.log.Info("adopted the pinned data path", "interface", a.Interface, "hook", string(a.Hook))
	}
	d.swap = nil
	return nil
}

// syncTxPorts makes halb_tx_ports hold exactly the attached interfaces.
// The kernel reads an ifindex in the network namespace of the thread that
// writes it: this runs in NewDatapath's.
func (d *Datapath) syncTxPorts() error {
	want := map[uint32]bool{}
	for _, a := range d.ifaces {
		want[uint32(a.ifindex)] = true
	}
	var stale []uint32
	err := d.lb.eachTxPort(func(ifindex uint32) {
		if !want[ifindex] {
			stale = append(stale, ifindex)
		}
	})
	if err != nil {
		return err
	}
	for _, i := range stale {
		if err := d.lb.deleteTxPort(int(i)); err != nil {
			return err
		}
	}
	for _, a := range d.ifaces {
		if err := d.lb.addTxPort(a.ifindex); err != nil {
			return err
		}
	}
	return nil
}

// tidyPins pins the programs in use, and removes the pins of programs no
// longer in use and of links on interfaces that left datapath.interfaces.
// The pins of an interface halb waits for stay: attach judges them when
// it appears.
func (d *Datapath) tidyPins() error {
	keep := map[string]bool{}
	for _, name := range d.waitingFor() {
		keep[linkPin(d.dir, halbProgHalbXdpLb, name)] = true
		keep[linkPin(d.dir, halbProgHalbTcLb, name)] = true
	}
	for _, a := range d.ifaces {
		keep[linkPin(d.dir, a.progName(), a.Interface)] = true
		if path := filepath.Join(d.dir, a.progName()); !keep[path] {
			keep[path] = true
			prog, err := a.progFor(d.lb)
			if err != nil {
				return err
			}
			if err := pinReplace(prog, path); err != nil {
				return err
			}
		}
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("read datapath.bpffs %s: %w", d.dir, err)
	}
	for _, e := range entries {
		path := filepath.Join(d.dir, e.Name())
		switch {
		case keep[path]:
		case isLinkPin(e.Name()):
			d.log.Info("detaching from an interface no longer in datapath.interfaces", "pin", path)
			if err := detachPinned(path); err != nil {
				d.log.Warn("detach", "pin", path, "err", err)
			}
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("unpin %s: %w", path, err)
			}
		case e.Name() == halbProgHalbXdpLb || e.Name() == halbProgHalbTcLb || strings.HasPrefix(e.Name(), tmpPrefix):
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("unpin %s: %w", path, err)
			}
		}
	}
	return nil
}

// Close stops the Datapath's own work and releases its handles. What is
// pinned stays (pins that went missing are restored first): the program
// stays attached and keeps forwarding with the maps as they are, for the
// next halb to adopt.
func (d *Datapath) Close() error {
	d.stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	// A pin removed since the last check would take its link, and the
	// program with it, away with this halb.
	d.checkPins()
	d.closed = true
	d.release()
	return nil
}

// Cleanup detaches the programs and removes everything pinned under
// datapath.bpffs, the directory too (the bpf filesystem stays mounted): the
// host is as it was before halb, and traffic to the VIPs goes to the kernel.
// The Datapath is closed afterwards.
func (d *Datapath) Cleanup() error {
	d.stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if !d.closed {
		for _, a := range d.ifaces {
			if err := a.link.Detach(); err != nil {
				errs = append(errs, fmt.Errorf("detach from %s: %w", a.Interface, err))
			}
		}
		d.closed = true
		d.release()
	}
	errs = append(errs, RemovePinned(d.dir))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.log.Info("data path removed", "bpffs", d.dir)
	return nil
}

func (d *Datapath) stop() {
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
}

// release closes every handle; pins keep what they pin.
func (d *Datapath) release() {
	for _, a := range append(d.ifaces, d.swap...) {
		if a.link != nil {
			a.link.Close()
		}
	}
	if d.maps != nil {
		d.maps.closeTables()
	}
	if d.lb != nil {
		d.lb.close()
	}
	if d.nl != nil {
		d.nl.Close()
	}
	if d.ns.IsOpen() {
		d.ns.Close()
	}
}
