package loader

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
)

// The pins are what keeps the data path alive between two halbs: a link
// whose pin is gone is detached when halb closes it, and a map whose pin
// is gone is not found by the next halb, which starts from empty maps. A
// person (rm -r /sys/fs/bpf/halb), a script or a tool that tidies bpffs
// can take them away under a running halb, which would notice nothing
// until it stops, and then leave the interface without its program. So a
// cheap check (pinChecks) runs every pinCheckInterval, and once more on Close: each
// pin is there and names the object halb holds open, or is pinned again
// from it, with a log line. It is apart from Apply and from the daemon's
// periodic apply on purpose: those are about services and may become
// driven by events only, while nothing announces that a pin went.

// pinCheckInterval is how often the pins are checked: a few bpf syscalls
// per pin.
const pinCheckInterval = 5 * time.Second

// guardPins checks the pins every pinCheckInterval until ctx ends.
func (d *Datapath) guardPins(ctx context.Context) {
	tick := time.NewTicker(pinCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.mu.Lock()
		if !d.closed {
			d.checkPins()
		}
		d.mu.Unlock()
	}
}

// pinChecks makes a check of pins that nobody touched cost one lstat
// each: a pin found right is remembered by its inode, which a pin made
// again never keeps, and read again (opened, its object's id asked) only
// when the inode differs. The objects' ids are asked once. d.mu guards
// it.
type pinChecks struct {
	inodes map[string]pinInode
	ids    map[pinner]uint32
	reads  int // pins opened and read, for the tests
}

// pinInode is the inode a pin was found right with, for the object of id.
type pinInode struct {
	ino, dev uint64
	id       uint32
}

// unchanged tells whether p's pin is the one found right before.
func (c *pinChecks) unchanged(p pinned) bool {
	seen, ok := c.inodes[p.path]
	now, found := inodeOf(p.path)
	return ok && found && seen == pinInode{ino: now.ino, dev: now.dev, id: p.id}
}

// saw remembers p's pin as right.
func (c *pinChecks) saw(p pinned) {
	now, ok := inodeOf(p.path)
	if !ok {
		return
	}
	if c.inodes == nil {
		c.inodes = map[string]pinInode{}
	}
	now.id = p.id
	c.inodes[p.path] = now
}

func inodeOf(path string) (pinInode, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return pinInode{}, false
	}
	return pinInode{ino: st.Ino, dev: uint64(st.Dev)}, true
}

// id is obj's id in the kernel, asked once.
func (c *pinChecks) id(obj pinner, ask func() (uint32, bool)) (uint32, bool) {
	if id, ok := c.ids[obj]; ok {
		return id, true
	}
	id, ok := ask()
	if ok {
		if c.ids == nil {
			c.ids = map[pinner]uint32{}
		}
		c.ids[obj] = id
	}
	return id, ok
}

// pinned is one object halb keeps pinned, and where.
type pinned struct {
	path string
	obj  pinner
	id   uint32 // the kernel's id of obj
	kind string // map, program or link
}

// checkPins pins again, from the objects halb holds open, whatever is not
// pinned where it should be, and attaches again a program whose link was
// detached from under halb. d.mu is held.
func (d *Datapath) checkPins() {
	if !onBPFFS(d.dir) {
		if _, _, err := prepareBPFFS(d.dir, d.log); err != nil {
			d.log.Error("datapath.bpffs is gone and cannot be made again; a restart will lose the data path", "bpffs", d.dir, "err", err)
			return
		}
		d.log.Warn("datapath.bpffs was removed, made it again", "bpffs", d.dir)
	}
	d.reattachDetached()
	for _, p := range d.pins() {
		if d.pinChecks.unchanged(p) {
			continue
		}
		d.pinChecks.reads++
		why := pinProblem(p)
		if why == "" {
			d.pinChecks.saw(p)
			continue
		}
		if err := pinReplace(p.obj, p.path); err != nil {
			d.log.Error("cannot restore a pin; a restart will lose it", "pin", p.path, "was", why, "err", err)
			continue
		}
		d.log.Warn("restored a pin removed from under halb", "pin", p.path, "kind", p.kind, "was", why)
	}
}

// pins lists what should be pinned now: the maps, the programs in use
// and the links.
func (d *Datapath) pins() []pinned {
	var out []pinned
	add := func(path string, obj pinner, kind string, id uint32, ok bool) {
		if ok {
			out = append(out, pinned{path: path, obj: obj, id: id, kind: kind})
		}
	}
	for _, name := range pinnedMaps {
		if m := d.lb.shared[name]; m != nil {
			id, ok := d.pinChecks.id(m, func() (uint32, bool) { return idOfMap(m) })
			add(filepath.Join(d.dir, name), m, "map", id, ok)
		}
	}
	progs := map[string]bool{}
	for _, a := range d.ifaces {
		if !progs[a.progName()] {
			progs[a.progName()] = true
			prog, err := a.progFor(d.lb) // loaded: it runs there
			if err == nil {
				id, ok := d.pinChecks.id(prog, func() (uint32, bool) { return idOfProg(prog) })
				add(filepath.Join(d.dir, a.progName()), prog, "program", id, ok)
			}
		}
		l := a.link
		id, ok := d.pinChecks.id(l, func() (uint32, bool) {
			info, err := l.Info()
			if err != nil {
				return 0, false
			}
			return uint32(info.ID), true
		})
		add(linkPin(d.dir, a.progName(), a.Interface), l, "link", id, ok)
	}
	return out
}

// pinProblem says what is wrong with p's pin, or "" when it is there and
// is p's object.
func pinProblem(p pinned) string {
	if _, err := os.Lstat(p.path); errors.Is(err, os.ErrNotExist) {
		return "missing"
	}
	var (
		id  uint32
		ok  bool
		err error
	)
	// The kernel opens a pinned program or link only read-write; a map
	// read-only is enough to learn its id.
	switch p.kind {
	case "map":
		var m *ebpf.Map
		if m, err = ebpf.LoadPinnedMap(p.path, &ebpf.LoadPinOptions{ReadOnly: true}); err == nil {
			id, ok = idOfMap(m)
			m.Close()
		}
	case "program":
		var prog *ebpf.Program
		if prog, err = ebpf.LoadPinnedProgram(p.path, nil); err == nil {
			id, ok = idOfProg(prog)
			prog.Close()
		}
	default:
		var l link.Link
		if l, err = link.LoadPinnedLink(p.path, nil); err == nil {
			if info, ierr := l.Info(); ierr == nil {
				id, ok = uint32(info.ID), true
			}
			l.Close()
		}
	}
	switch {
	case err != nil:
		return fmt.Sprintf("unreadable (%v)", err)
	case ok && id != p.id:
		return fmt.Sprintf("another %s (id %d)", p.kind, id)
	}
	return ""
}

// reattachDetached attaches again the program of an interface whose link
// was detached from under halb (bpftool link detach) while the interface
// stayed: the link is defunct, and the interface gets no program. An
// interface that went is linkChanged's to let go.
func (d *Datapath) reattachDetached() {
	for _, a := range d.ifaces {
		info, err := a.link.Info()
		if err != nil || linkIfindex(info) != 0 {
			continue
		}
		if l, err := d.nl.LinkByIndex(a.ifindex); err != nil || l.Attrs().Name != a.Interface {
			continue
		}
		pin := linkPin(d.dir, a.progName(), a.Interface)
		var l link.Link
		err = nsthread.Do(d.ns, func() (err error) {
			l, err = d.attachNew(a.Hook, a.ifindex)
			return err
		})
		if err == nil {
			err = pinReplace(l, pin)
			if err != nil {
				l.Close()
			}
		}
		if err != nil {
			d.log.Error("the program was detached from an interface and cannot be attached again", "interface", a.Interface, "hook", string(a.Hook), "err", err)
			continue
		}
		a.link.Close()
		a.link, a.adopted = l, false
		d.log.Warn("the program was detached from under halb, attached it again", "interface", a.Interface, "hook", string(a.Hook))
	}
}

// linkIfindex is the interface a link is attached to, 0 when none.
func linkIfindex(info *link.Info) int {
	if x := info.XDP(); x != nil {
		return int(x.Ifindex)
	}
	if t := info.TCX(); t != nil {
		return int(t.Ifindex)
	}
	return 0
}

func idOfMap(m *ebpf.Map) (uint32, bool) {
	info, err := m.Info()
	if err != nil {
		return 0, false
	}
	id, ok := info.ID()
	return uint32(id), ok
}

func idOfProg(p *ebpf.Program) (uint32, bool) {
	info, err := p.Info()
	if err != nil {
		return 0, false
	}
	id, ok := info.ID()
	return uint32(id), ok
}
