package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// ErrOtherHalb is an interface whose XDP or tcx hook holds the program of
// another halb: one with its own datapath.bpffs, whose pins this run does
// not adopt. Two halbs balancing one interface send one flow two ways,
// and the second's links would outlive it; so halb refuses to attach.
var ErrOtherHalb = errors.New("the interface runs another halb's data path")

// otherHalb says which halb program other than this run's holds the XDP
// or tcx hook of the interface l, as an error wrapping ErrOtherHalb, or
// nil when none does. This run's are the programs it loaded and those of
// the links pinned under its own datapath.bpffs, which it adopts. It
// reads only, so that attach can refuse before changing anything.
func (d *Datapath) otherHalb(l netlink.Link) error {
	attrs := l.Attrs()
	ours := map[ebpf.ProgramID]bool{}
	if d.lb != nil { // nil before NewDatapath loads
		for _, p := range d.lb.loaded() {
			if info, err := p.Info(); err == nil {
				if id, ok := info.ID(); ok {
					ours[id] = true
				}
			}
		}
	}
	for _, prog := range []string{halbProgHalbXdpLb, halbProgHalbTcLb} {
		if id := pinnedLinkProgram(linkPin(d.dir, prog, attrs.Name)); id != 0 {
			ours[id] = true
		}
	}

	type held struct {
		hook string
		id   ebpf.ProgramID
	}
	var on []held
	if x := attrs.Xdp; x != nil && x.ProgId != 0 {
		on = append(on, held{"xdp", ebpf.ProgramID(x.ProgId)})
	}
	// A kernel without tcx has no halb on it either.
	if res, err := link.QueryPrograms(link.QueryOptions{Target: attrs.Index, Attach: ebpf.AttachTCXIngress}); err == nil {
		for _, p := range res.Programs {
			on = append(on, held{"tcx", p.ID})
		}
	}
	for _, h := range on {
		if ours[h.id] {
			continue
		}
		name := programName(h.id)
		if name != halbProgHalbXdpLb && name != halbProgHalbTcLb {
			continue
		}
		where := "pinned in no bpf filesystem this host mounts here"
		if pin := findLinkPin(h.id, name, attrs.Name); pin != "" {
			where = "pinned at " + pin
		}
		return fmt.Errorf("datapath.interfaces: %s: its %s hook holds %s (program id %d) of another halb, %s: %w; "+
			"stop that halb (halb run --cleanup removes its pins) or give this one another interface",
			attrs.Name, h.hook, name, h.id, where, ErrOtherHalb)
	}
	return nil
}

// programName is the name of program id, "" when it cannot be read.
func programName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ""
	}
	return info.Name
}

// pinnedLinkProgram is the program of the link pinned at path, 0 when
// there is none.
func pinnedLinkProgram(path string) ebpf.ProgramID {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return 0
	}
	return info.Program
}

// findLinkPin looks through the bpf filesystems mounted here for the pin
// halb gives the link of prog on ifname (linkPin), and says which one
// runs program id, or "" when none does. It looks a few levels deep and
// at a bounded number of entries: it only names the other halb in an
// error.
func findLinkPin(id ebpf.ProgramID, prog, ifname string) string {
	base := filepath.Base(linkPin("", prog, ifname))
	budget := 10000
	// The mounts this thread sees, which are those its walk resolves:
	// /proc/self is the thread group leader, whose mount namespace a
	// thread that unshared its own (and, in Go, was wedged rather than
	// ended because it was the main thread) may hold apart.
	data, err := os.ReadFile("/proc/thread-self/mounts")
	if err != nil {
		return ""
	}
	for _, mnt := range bpfMounts(data) {
		var found string
		_ = filepath.WalkDir(mnt, func(path string, e fs.DirEntry, err error) error {
			budget--
			if err != nil || budget < 0 {
				return filepath.SkipAll
			}
			if e.IsDir() {
				if strings.Count(strings.TrimPrefix(path, mnt), "/") > 3 {
					return filepath.SkipDir
				}
				return nil
			}
			if e.Name() == base && pinnedLinkProgram(path) == id {
				found = path
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			return found
		}
	}
	return ""
}
