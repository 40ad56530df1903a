package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The pins under datapath.bpffs. Their names are the objects' own, so that
// `bpftool map dump pinned /sys/fs/bpf/halb/halb_services` and `bpftool prog
// show name halb_xdp_lb` find the same things; a link is named after its
// program and interface (halb_xdp_lb_eth0).
var pinnedMaps = []string{
	halbMapHalbServices,
	halbMapHalbServiceIds,
	halbMapHalbVips,
	halbMapHalbBackends,
	halbMapHalbMaglev,
	halbMapHalbCt,
	halbMapHalbFnat,
	halbMapHalbTxPorts,
	halbMapHalbServiceStats,
	halbMapHalbBackendStats,
	halbMapHalbDrops,
	halbMapHalbEvents,
}

// What a restart loses when a pinned map must be replaced, for the log.
var replaceEffect = map[string]string{
	halbMapHalbServices:     "services are written again at the next apply",
	halbMapHalbServiceIds:   "rebuilt from halb_services now",
	halbMapHalbVips:         "services are written again at the next apply",
	halbMapHalbBackends:     "backends are written again at the next apply",
	halbMapHalbMaglev:       "maglev tables are written again at the next apply",
	halbMapHalbCt:           "established flows are scheduled again by their maglev tables",
	halbMapHalbFnat:         "full NAT flows lose their source ports: a reply goes to the kernel until its client's next packet maps it again",
	halbMapHalbTxPorts:      "tx ports are written again now",
	halbMapHalbServiceStats: "service counters start again from zero",
	halbMapHalbBackendStats: "backend counters start again from zero",
	halbMapHalbDrops:        "drop counters start again from zero",
	halbMapHalbEvents:       "event counters start again from zero",
}

// linkPin is where the link of prog on ifname is pinned. A bpf filesystem
// takes no dots in names, and VLAN interfaces have them (eth0.100): a dot
// becomes a dash.
func linkPin(dir, prog, ifname string) string {
	return filepath.Join(dir, prog+"_"+strings.ReplaceAll(ifname, ".", "-"))
}

// tmpPrefix marks a pin on its way to its name (pinReplace).
const tmpPrefix = "new_"

// hostBPFFS is where a host's bpf filesystem is mounted (what systemd
// mounts at boot, and where bpftool and every other loader look). It is
// the only place halb mounts one.
const hostBPFFS = "/sys/fs/bpf"

// CheckBPFFS says, changing nothing, why dir cannot be datapath.bpffs on
// this host, or nil when it can: dir, or the directory it would be made
// in, is on a bpf filesystem, or is /sys/fs/bpf or under it, where halb
// mounts one when the host booted without. Anywhere else a mount of
// halb's would hide what the directory holds and outlive halb, so the
// operator mounts one.
func CheckBPFFS(dir string) error {
	_, err := bpffsPlan(filepath.Clean(dir))
	return err
}

// bpffsPlan says where a bpf filesystem must be mounted for dir to be on
// one: "" when none is needed, hostBPFFS when it is missing there, or an
// error naming the mount to make when dir is elsewhere.
func bpffsPlan(dir string) (mount string, err error) {
	parent := filepath.Dir(dir)
	if onBPFFS(dir) || onBPFFS(parent) {
		return "", nil
	}
	if dir != hostBPFFS && parent != hostBPFFS {
		return "", fmt.Errorf("datapath.bpffs %s: %s is not on a bpf filesystem; mount one there (mount -t bpf bpf %s) "+
			"or choose a path under %s", dir, parent, parent, hostBPFFS)
	}
	// Mounting hides what the directory holds: only an empty one (as
	// /sys/fs/bpf is before anything is mounted there) is taken.
	entries, err := os.ReadDir(hostBPFFS)
	if err != nil {
		return "", fmt.Errorf("datapath.bpffs %s: %w; mount a bpf filesystem (mount -t bpf bpf %s)", dir, err, hostBPFFS)
	}
	if len(entries) > 0 {
		return "", fmt.Errorf("datapath.bpffs %s: %s is not on a bpf filesystem and not empty; mount one there (mount -t bpf bpf %s)",
			dir, hostBPFFS, hostBPFFS)
	}
	return hostBPFFS, nil
}

// prepareBPFFS makes dir a directory on a bpf filesystem. When dir is
// /sys/fs/bpf or directly under it and no bpf filesystem is mounted
// there, it mounts one: hosts that boot without get what `mount -t bpf
// bpf /sys/fs/bpf` would give. Anywhere else it refuses, before changing
// anything, a dir that is not on a bpf filesystem (bpffsPlan). It says
// where it mounted one ("" if nowhere) and whether it created dir, for a
// start that fails to take back.
func prepareBPFFS(dir string, log *slog.Logger) (mounted string, created bool, err error) {
	mount, err := bpffsPlan(dir)
	if err != nil {
		return "", false, err
	}
	if mount != "" {
		if err := unix.Mount("bpf", mount, "bpf", 0, "mode=0700"); err != nil {
			return "", false, fmt.Errorf("mount a bpf filesystem on %s for datapath.bpffs %s: %w", mount, dir, err)
		}
		mounted = mount
		log.Info("mounted a bpf filesystem", "path", mount)
		if private, ns := privateMountNS(); private {
			// ip netns exec gives its command a mount namespace of
			// its own (to mount the namespace's /sys): what halb
			// mounts there goes with its last process, and the
			// pins with it, so a restart adopts nothing and an
			// exit detaches the data path.
			log.Warn("mounted the bpf filesystem in a private mount namespace: its pins are lost when halb exits; "+
				"run halb with nsenter --net=/run/netns/NAME rather than ip netns exec, to keep the host's mounts",
				"path", mount, "mnt_ns", ns)
		}
	}
	if dir == mount {
		return mounted, false, nil
	}
	err = os.Mkdir(dir, 0o700)
	created = err == nil
	if err != nil && !errors.Is(err, os.ErrExist) {
		return mounted, false, fmt.Errorf("create datapath.bpffs %s: %w", dir, err)
	}
	if !onBPFFS(dir) {
		return mounted, created, fmt.Errorf("datapath.bpffs %s is not on a bpf filesystem", dir)
	}
	return mounted, created, nil
}

// initMountNS is the mount namespace of the host's mounts: PID 1's. A
// test points it at its own process's.
var initMountNS = "/proc/1/ns/mnt"

// privateMountNS tells whether the calling thread's mount namespace is not
// init's (PID 1's), and names it. Not being able to tell is not private:
// the warning it drives must not be a false alarm.
func privateMountNS() (bool, string) {
	self, err := os.Readlink("/proc/thread-self/ns/mnt")
	if err != nil {
		return false, ""
	}
	init, err := os.Readlink(initMountNS)
	if err != nil {
		// Some hosts deny reading PID 1's link from another mount
		// namespace (seen under ip netns exec on the development
		// machine, whose PID 1 is not systemd): then the parent's,
		// the shell or unit that started halb, stands for the host's.
		if init, err = os.Readlink(parentMountNS()); err != nil {
			return false, self
		}
	}
	return self != init, self
}

// parentMountNS is the link to the mount namespace of halb's parent.
var parentMountNS = func() string { return fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()) }

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

// dropIncompatiblePins removes the pins of maps that spec can no longer
// use, each with a log line that says why and what it costs, so that
// loading creates them anew. The old maps live on as long as the program
// attached before the restart uses them: traffic flows on until the new
// program takes over. It returns the names of the maps it removed.
func dropIncompatiblePins(dir string, spec *ebpf.CollectionSpec, log *slog.Logger) ([]string, error) {
	var replaced []string
	for _, name := range pinnedMaps {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		reason := ""
		if err != nil {
			reason = err.Error()
		} else {
			if err := spec.Maps[name].Compatible(m); err != nil {
				reason = err.Error()
			} else if name == halbMapHalbMaglev {
				reason = maglevIncompatible(m, spec.Maps[name].InnerMap)
			}
			m.Close()
		}
		if reason == "" {
			continue
		}
		if err := os.Remove(path); err != nil {
			return replaced, fmt.Errorf("replace pinned map %s: %w", path, err)
		}
		log.Warn("pinned map does not fit this configuration, replacing it",
			"map", name, "reason", reason, "effect", replaceEffect[name])
		replaced = append(replaced, name)
	}
	return replaced, nil
}

// maglevIncompatible tells why a pinned halb_maglev cannot take tables
// made from inner, or "" when it can. The kernel does not report an
// outer map's inner template, so the first table in it stands for all;
// an empty halb_maglev holds nothing worth keeping and is replaced too.
func maglevIncompatible(outer *ebpf.Map, inner *ebpf.MapSpec) string {
	var (
		key, id uint32
		found   bool
	)
	it := outer.Iterate()
	for it.Next(&key, &id) {
		found = true
		break
	}
	if !found {
		return "empty, and its table size cannot be told"
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return fmt.Sprintf("read its table %d: %v", key, err)
	}
	defer m.Close()
	if m.MaxEntries() != inner.MaxEntries || m.ValueSize() != inner.ValueSize {
		// An older halb kept two slots to each of (M+1)/2 elements.
		return fmt.Sprintf("maglev tables of %d elements of %d bytes, and this halb with datapath.maglev_table_size %d makes them of %d of %d",
			m.MaxEntries(), m.ValueSize(), inner.ValueSize/4, inner.MaxEntries, inner.ValueSize)
	}
	if m.Flags() != inner.Flags {
		// The kernel would refuse this halb's tables in that map.
		return fmt.Sprintf("maglev tables with flags %#x, and this halb writes them with %#x", m.Flags(), inner.Flags)
	}
	return ""
}

// pinner is a map, program or link.
type pinner interface {
	Pin(string) error
	Unpin() error
}

// pinReplace pins obj at path, replacing what was there in one rename so
// that the name never goes missing.
//
// cilium/ebpf remembers where it pinned an object and takes a second Pin
// to that place for a no-op; after the rename it would remember tmp, and
// the next pinReplace (an interface that appeared late, a pin restored)
// would pin nothing. So it is made to forget: Unpin removes tmp, which is
// gone already.
func pinReplace(obj pinner, path string) error {
	tmp := filepath.Join(filepath.Dir(path), tmpPrefix+filepath.Base(path))
	_ = os.Remove(tmp)
	if err := obj.Unpin(); err != nil {
		return fmt.Errorf("pin %s: forget the last pin: %w", path, err)
	}
	if err := obj.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pin %s: %w", path, err)
	}
	if err := obj.Unpin(); err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}

// RemovePinned detaches every program halb attached through the links
// pinned in dir, and removes everything halb pinned there and then dir
// itself: what `halb run --cleanup` does on its way out. Files halb did not
// name are left, and so is dir when they are there. A dir that does not
// exist is already clean.
func RemovePinned(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read datapath.bpffs %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case isLinkPin(strings.TrimPrefix(name, tmpPrefix)):
			errs = append(errs, detachPinned(path))
		case isHalbPin(name):
		default:
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove datapath.bpffs %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// isLinkPin reports whether name is one of the links halb pins.
func isLinkPin(name string) bool {
	return strings.HasPrefix(name, halbProgHalbXdpLb+"_") || strings.HasPrefix(name, halbProgHalbTcLb+"_")
}

// isHalbPin reports whether name is a map or program halb pins (or a
// leftover of pinReplace).
func isHalbPin(name string) bool {
	name = strings.TrimPrefix(name, tmpPrefix)
	return name == halbProgHalbXdpLb || name == halbProgHalbTcLb || isLinkPin(name) ||
		slices.Contains(pinnedMaps, name)
}

// detachPinned detaches the link pinned at path, even when other holders
// keep it open.
func detachPinned(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	return nil
}
