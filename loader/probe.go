// Package loader is the kernel side of halb's eBPF data path: the
// capability probe that finds out what the kernel has and decides which
// data path a host can run (XDP, tc or IPVS) and why (cmd/halb prints it),
// the bpf2go bindings of bpf/halb_lb.c with the writers that fill its
// maps, and Datapath, which attaches and pins the programs and turns the
// daemon's services into map entries.
//
// The probe must never change the host: it reads files, loads throwaway
// programs that it closes again, and attaches only inside a network
// namespace of its own (internal/nsthread) that disappears when the check
// returns. The one change it may cause is the kernel's own: resolving the
// IPVS generic netlink family may make a kernel with ip_vs as a module
// load it (IPVSFamily). The map writers change one service's entries
// without disturbing other flows. Datapath touches only what it pins
// under datapath.bpffs and the interfaces in datapath.interfaces, and
// never stops forwarding on its own: only Cleanup detaches.
//
// One service write, in three files. apply_linux.go: Datapath.Apply
// (reconcileSome) plans each service (planService: its id, its backends'
// ids and records), then applyServices writes the backends' records
// (queueBackends, writeBackends), builds and stages the Maglev tables on
// all cores (writeTables) and writes each service's record last
// (finishService), so that a packet finds the table before the service
// leads it there. mapwriter_linux.go: every one of those writes goes
// through mapWriter (queueBackend/flushBackends, stageTable/installTables,
// putService), which keeps the invariants and counts the writes.
// lb_linux.go: kernelLB owns the maps (halbObjects, generated from
// bpf/halb.h into halb_bpfel.go): putService turns the service.Key into
// the map's halbServiceKey (serviceKey, the one place a key changes form;
// keyOfService the other way), writes halb_services and halb_service_ids,
// and keeps halb_vips in step.
package loader

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/kmod"
)

// Host says where the probe looks. Zero value = the real host.
type Host struct {
	Root   string // filesystem root for /proc, /sys, /lib/modules reads; "" means "/"
	Kernel Kernel // checks that ask the running kernel; nil means the real kernel (SystemKernel{})
}

// Kernel is the part of the probe that must ask the running kernel, so tests
// can fake it. Each method returns nil when the feature works and otherwise
// an error that names the operation that failed.
type Kernel interface {
	ProgramType(t ebpf.ProgramType) error // nil when a program of that type loads
	XDPLink() error                       // nil when XDP can be attached through a bpf_link
	TCX() error                           // nil when tcx links (BPF_LINK_CREATE, tcx attach types) work
	IPVSFamily() error                    // nil when the "IPVS" generic netlink family resolves
	MmapableArrays() error                // nil when a BPF array can be mapped into memory (BPF_F_MMAPABLE)
}

// Report is what the probe found. `halb probe --json` prints it, so the JSON
// keys are part of the command-line contract.
type Report struct {
	KernelRelease string `json:"kernel_release"`
	// KernelReleaseError says why the release could not be read.
	KernelReleaseError string `json:"kernel_release_error,omitempty"`

	BTF   BTF   `json:"btf"`
	BPFFS BPFFS `json:"bpffs"`

	XDP      Feature `json:"xdp"`       // an XDP program loads
	SchedCLS Feature `json:"sched_cls"` // a sched_cls (tc) program loads
	XDPLink  Feature `json:"xdp_link"`  // an XDP program attaches through a bpf_link
	TCX      Feature `json:"tcx"`       // a sched_cls program attaches through a tcx link
	// MmapableArrays: a BPF array can be mapped into memory (Linux 5.5),
	// which the eBPF data path needs (its variables are written through
	// mappings). A Report that did not check has neither
	// Supported nor Error, and counts as having them.
	MmapableArrays Feature `json:"mmapable_arrays,omitzero"`

	Capabilities Capabilities `json:"capabilities"`
	IPVS         IPVS         `json:"ipvs"`
}

// Feature is the outcome of one check against the running kernel.
type Feature struct {
	Supported bool   `json:"supported"`
	Error     string `json:"error,omitempty"` // why not, when not supported
}

// BTF is the kernel's own type information, which auto mode requires before
// it picks an eBPF data path.
type BTF struct {
	Path    string `json:"path"` // as seen on the host, e.g. /sys/kernel/btf/vmlinux
	Present bool   `json:"present"`
	Error   string `json:"error,omitempty"` // set when Path exists but could not be checked
}

// BPFFS lists the mounted BPF file systems, where pinned programs and maps
// live.
type BPFFS struct {
	Mounted bool     `json:"mounted"`
	Mounts  []string `json:"mounts"` // mount points of type bpf, in /proc/mounts order
	Error   string   `json:"error,omitempty"`
}

// Capabilities are the probing process's effective capabilities that matter
// to halb.
type Capabilities struct {
	CapEff    string          `json:"cap_eff"`   // raw hex from /proc/self/status
	Effective map[string]bool `json:"effective"` // CAP_BPF, CAP_NET_ADMIN, ...
	Error     string          `json:"error,omitempty"`
}

// capabilityBits are the capabilities reported, in the order the table shows
// them (numbers from linux/capability.h).
var capabilityBits = []struct {
	name string
	bit  uint
}{
	{"CAP_BPF", 39},
	{"CAP_PERFMON", 38},
	{"CAP_NET_ADMIN", 12},
	{"CAP_NET_RAW", 13},
	{"CAP_SYS_MODULE", 16},
	{"CAP_SYS_ADMIN", 21},
}

// CapabilityNames are the capabilities Capabilities.Effective reports, in
// the order a reader should see them.
func CapabilityNames() []string {
	names := make([]string, 0, len(capabilityBits))
	for _, cb := range capabilityBits {
		names = append(names, cb.name)
	}
	return names
}

// IPVS is what the host offers the IPVS fallback data path.
type IPVS struct {
	// Family says whether the "IPVS" generic netlink family resolves.
	// Asking may make the kernel load ip_vs; the probe asks last, so Loaded
	// and LoadedSchedulers describe the host as it was before.
	Family     Feature `json:"family"`
	Loaded     bool    `json:"loaded"`      // /sys/module/ip_vs exists
	Builtin    bool    `json:"builtin"`     // modules.builtin lists ip_vs
	Loadable   bool    `json:"loadable"`    // modules.dep lists ip_vs.ko (any compression)
	ModulesDir string  `json:"modules_dir"` // /lib/modules/<release>, as seen on the host
	// Schedulers are the IPVS schedulers built in or shipped as modules,
	// named as services.scheduler names them ("rr", "wrr", "mh"), sorted.
	Schedulers []string `json:"schedulers"`
	// LoadedSchedulers are the schedulers whose module is in /sys/module.
	LoadedSchedulers []string `json:"loaded_schedulers"`
	// Problems are facts the probe could not establish, each naming the
	// file and why ("no /lib/modules/6.1.21-v8+: modules not installed").
	Problems []string `json:"problems,omitempty"`
}

// Usable reports whether IPVS can work here: the kernel answers for it
// already, or ip_vs is built in, loaded or can be loaded.
func (i IPVS) Usable() bool {
	return i.Family.Supported || i.Builtin || i.Loaded || i.Loadable
}

// Paths the probe reads, as seen on the host; Host.Root is put in front.
const (
	btfPath       = "/sys/kernel/btf/vmlinux"
	osreleasePath = "/proc/sys/kernel/osrelease"
	mountsPath    = "/proc/mounts"
	statusPath    = "/proc/self/status"
	sysModulePath = "/sys/module"
	modulesPath   = "/lib/modules"
)

// Probe looks at the host and the running kernel. It does not fail: what it
// cannot find out is recorded in the Report with the reason.
func (h Host) Probe() Report {
	k := h.Kernel
	if k == nil {
		k = SystemKernel{}
	}
	var r Report
	if rel, err := h.readFile(osreleasePath); err != nil {
		r.KernelReleaseError = fmt.Sprintf("read kernel release: %v", err)
	} else {
		r.KernelRelease = strings.TrimSpace(string(rel))
	}
	r.BTF = h.probeBTF()
	r.BPFFS = h.probeBPFFS()
	r.XDP = feature(k.ProgramType(ebpf.XDP))
	r.SchedCLS = feature(k.ProgramType(ebpf.SchedCLS))
	r.XDPLink = feature(k.XDPLink())
	r.TCX = feature(k.TCX())
	r.MmapableArrays = feature(k.MmapableArrays())
	r.Capabilities = h.probeCapabilities()
	r.IPVS = h.probeIPVS(r.KernelRelease)
	r.IPVS.Family = feature(k.IPVSFamily())
	return r
}

func feature(err error) Feature {
	if err != nil {
		return Feature{Error: err.Error()}
	}
	return Feature{Supported: true}
}

// path turns a host path into the one to read under h.Root.
func (h Host) path(p string) string {
	if h.Root == "" {
		return p
	}
	return filepath.Join(h.Root, p)
}

func (h Host) readFile(p string) ([]byte, error) {
	return os.ReadFile(h.path(p))
}

func (h Host) probeBTF() BTF {
	b := BTF{Path: btfPath}
	_, err := os.Stat(h.path(btfPath))
	switch {
	case err == nil:
		b.Present = true
	case !errors.Is(err, fs.ErrNotExist):
		b.Error = fmt.Sprintf("check kernel BTF: %v", err)
	}
	return b
}

func (h Host) probeBPFFS() BPFFS {
	b := BPFFS{Mounts: []string{}}
	data, err := h.readFile(mountsPath)
	if err != nil {
		b.Error = fmt.Sprintf("read mounts: %v", err)
		return b
	}
	b.Mounts = bpfMounts(data)
	b.Mounted = len(b.Mounts) > 0
	return b
}

// bpfMounts returns the mount points of type bpf in a /proc/mounts file.
func bpfMounts(data []byte) []string {
	mounts := []string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// device mountpoint fstype options dump pass (fstab(5)); the kernel
		// escapes blanks and backslashes in the fields as octal.
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[2] == "bpf" {
			mounts = append(mounts, unescapeMount(f[1]))
		}
	}
	return mounts
}

// unescapeMount undoes the kernel's \ooo escapes in a /proc/mounts field
// (space \040, tab \011, newline \012, backslash \134).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			n, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(n))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	// Three digits whose value fits a byte: \000 to \377.
	return len(s) == 3 && s[0] >= '0' && s[0] <= '3' &&
		s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7'
}

func (h Host) probeCapabilities() Capabilities {
	c := Capabilities{Effective: map[string]bool{}}
	for _, cb := range capabilityBits {
		c.Effective[cb.name] = false
	}
	data, err := h.readFile(statusPath)
	if err != nil {
		c.Error = fmt.Sprintf("read capabilities: %v", err)
		return c
	}
	hex, ok := statusField(data, "CapEff")
	if !ok {
		c.Error = fmt.Sprintf("read capabilities: no CapEff line in %s", statusPath)
		return c
	}
	bits, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		c.Error = fmt.Sprintf("read capabilities: parse CapEff %q: %v", hex, err)
		return c
	}
	c.CapEff = hex
	for _, cb := range capabilityBits {
		c.Effective[cb.name] = bits&(1<<cb.bit) != 0
	}
	return c
}

// statusField returns the value of "key:\tvalue" in a /proc/<pid>/status file.
func statusField(data []byte, key string) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// isIPVSScheduler returns the scheduler name of an ip_vs_* module ("rr" for
// ip_vs_rr). The application helper ip_vs_ftp and the persistence engines
// (ip_vs_pe_sip) share the prefix but are not schedulers.
func isIPVSScheduler(module string) (string, bool) {
	name, ok := strings.CutPrefix(module, "ip_vs_")
	if !ok || name == "ftp" || strings.HasPrefix(name, "pe_") {
		return "", false
	}
	return name, true
}

func (h Host) probeIPVS(release string) IPVS {
	i := IPVS{Schedulers: []string{}, LoadedSchedulers: []string{}}

	// A loaded module always has a directory in /sys/module; built-in ip_vs
	// has one too, because it has parameters.
	entries, err := os.ReadDir(h.path(sysModulePath))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		i.Problems = append(i.Problems, fmt.Sprintf("list %s: %v", sysModulePath, err))
	}
	for _, e := range entries {
		i.Loaded = i.Loaded || e.Name() == "ip_vs"
		if s, ok := isIPVSScheduler(e.Name()); ok {
			i.LoadedSchedulers = append(i.LoadedSchedulers, s)
		}
	}
	slices.Sort(i.LoadedSchedulers)

	if release == "" {
		i.Problems = append(i.Problems, fmt.Sprintf("kernel release unknown: cannot look in %s", modulesPath))
		return i
	}
	i.ModulesDir = path.Join(modulesPath, release)
	if _, err := os.Stat(h.path(i.ModulesDir)); errors.Is(err, fs.ErrNotExist) {
		i.Problems = append(i.Problems, fmt.Sprintf("no %s: modules not installed", i.ModulesDir))
		return i
	} else if err != nil {
		i.Problems = append(i.Problems, fmt.Sprintf("check %s: %v", i.ModulesDir, err))
		return i
	}

	var schedulers []string
	builtin, err := moduleIndex(h, path.Join(i.ModulesDir, "modules.builtin"), "cannot tell what is built in", kmod.ParseBuiltin)
	if err != nil {
		i.Problems = append(i.Problems, err.Error())
	}
	for m := range builtin {
		i.Builtin = i.Builtin || m == "ip_vs"
		if s, ok := isIPVSScheduler(m); ok {
			schedulers = append(schedulers, s)
		}
	}
	dep, err := moduleIndex(h, path.Join(i.ModulesDir, "modules.dep"), "run depmod", kmod.ParseDep)
	if err != nil {
		i.Problems = append(i.Problems, err.Error())
	}
	for m := range dep {
		i.Loadable = i.Loadable || m == "ip_vs"
		if s, ok := isIPVSScheduler(m); ok {
			schedulers = append(schedulers, s)
		}
	}
	slices.Sort(schedulers)
	i.Schedulers = append(i.Schedulers, slices.Compact(schedulers)...)
	return i
}

// moduleIndex reads one of the module lists depmod writes (modules.dep,
// modules.builtin) with its parser from internal/kmod, the one the IPVS
// data path's loader reads them with. A missing file is reported with hint.
func moduleIndex[T any](h Host, p, hint string, parse func(io.Reader) (T, error)) (T, error) {
	var zero T
	data, err := h.readFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return zero, fmt.Errorf("no %s: %s", p, hint)
	}
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", p, err)
	}
	index, err := parse(bytes.NewReader(data))
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", p, err)
	}
	return index, nil
}

// Decision is the data path chosen for datapath.mode on a probed host.
type Decision struct {
	Mode     string   `json:"mode"`   // xdp, tc or ipvs
	Reason   string   `json:"reason"` // one sentence naming the deciding fact
	Warnings []string `json:"warnings,omitempty"`
}

// Choose picks the data path for mode (datapath.mode: auto, xdp, tc or ipvs;
// "" means auto, the default). An explicit mode is always honoured, with a
// warning when the probe shows it cannot work. The reasons are quoted by
// tests and the README: keep them stable.
func Choose(mode string, r Report) Decision {
	var d Decision
	switch mode {
	case config.ModeAuto, "":
		d = chooseAuto(r)
	case config.ModeXDP:
		d = Decision{Mode: mode, Reason: "configured: datapath.mode: xdp"}
		if !r.XDP.Supported {
			d.Warnings = append(d.Warnings, "xdp configured but XDP programs do not load: "+r.XDP.Error)
		}
	case config.ModeTC:
		d = Decision{Mode: mode, Reason: "configured: datapath.mode: tc"}
		if !r.SchedCLS.Supported {
			d.Warnings = append(d.Warnings, "tc configured but sched_cls programs do not load: "+r.SchedCLS.Error)
		}
	case config.ModeIPVS:
		d = Decision{Mode: mode, Reason: "configured: datapath.mode: ipvs"}
	default:
		return Decision{
			Mode:     mode,
			Reason:   "configured: datapath.mode: " + mode,
			Warnings: []string{fmt.Sprintf("unknown datapath.mode %q: want auto, xdp, tc or ipvs", mode)},
		}
	}
	if (d.Mode == config.ModeXDP || d.Mode == config.ModeTC) && r.MmapableArrays.Error != "" {
		d.Warnings = append(d.Warnings, d.Mode+" configured but BPF arrays cannot be mapped into memory ("+
			r.MmapableArrays.Error+"): the eBPF data path will not load; use Linux 5.5 or later, or datapath.mode: ipvs")
	}
	switch d.Mode {
	case config.ModeXDP:
		if r.XDP.Supported && !r.XDPLink.Supported {
			d.Warnings = append(d.Warnings, "XDP programs load but the XDP bpf_link check failed: "+r.XDPLink.Error)
		}
		d.Warnings = append(d.Warnings, bpffsWarnings(r)...)
	case config.ModeTC:
		if r.SchedCLS.Supported && !r.TCX.Supported {
			d.Warnings = append(d.Warnings, "sched_cls programs load but the tcx link check failed: "+r.TCX.Error)
		}
		d.Warnings = append(d.Warnings, bpffsWarnings(r)...)
	case config.ModeIPVS:
		d.Warnings = append(d.Warnings, ipvsWarnings(r)...)
	}
	d.Warnings = append(d.Warnings, privilegeWarnings(r)...)
	return d
}

func chooseAuto(r Report) Decision {
	switch {
	case !r.BTF.Present:
		reason := "ipvs: no kernel BTF at " + r.BTF.Path
		if r.BTF.Error != "" {
			reason += " (" + r.BTF.Error + ")"
		}
		return Decision{Mode: config.ModeIPVS, Reason: reason}
	case (r.XDP.Supported || r.SchedCLS.Supported) && r.MmapableArrays.Error != "":
		return Decision{Mode: config.ModeIPVS, Reason: "ipvs: BTF present, but BPF arrays cannot be mapped into memory (" +
			r.MmapableArrays.Error + "), which the eBPF data path needs (Linux 5.5)"}
	case r.XDP.Supported:
		return Decision{Mode: config.ModeXDP, Reason: "xdp: BTF present, XDP loads"}
	case r.SchedCLS.Supported:
		return Decision{Mode: config.ModeTC, Reason: "tc: BTF present, XDP does not load (" + r.XDP.Error + "), sched_cls loads"}
	default:
		return Decision{Mode: config.ModeIPVS, Reason: "ipvs: BTF present, but neither XDP (" + r.XDP.Error +
			") nor sched_cls (" + r.SchedCLS.Error + ") programs load"}
	}
}

// bpffsWarnings warns that the eBPF data paths have nowhere to pin.
func bpffsWarnings(r Report) []string {
	if r.BPFFS.Mounted {
		return nil
	}
	if r.BPFFS.Error != "" {
		return []string{"cannot tell whether bpffs is mounted: " + r.BPFFS.Error}
	}
	return []string{"no bpffs mounted: pinned programs and maps need one (mount -t bpf bpf /sys/fs/bpf)"}
}

// privilegeWarnings warns that the program checks failed for want of the
// privilege to load programs (CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN),
// so the decision describes the probing process rather than what the daemon
// would get.
func privilegeWarnings(r Report) []string {
	c := r.Capabilities
	if c.Error != "" || (r.XDP.Supported && r.SchedCLS.Supported) || c.Effective["CAP_SYS_ADMIN"] {
		return nil
	}
	var missing []string
	for _, name := range []string{"CAP_BPF", "CAP_NET_ADMIN"} {
		if !c.Effective[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return []string{"this process lacks " + strings.Join(missing, " and ") +
		", so the program checks show its own privileges, not the kernel's: run halb probe as the user halb runs as"}
}

// ipvsWarnings says what is missing when IPVS cannot work, and how to fix it.
func ipvsWarnings(r Report) []string {
	i := r.IPVS
	release := r.KernelRelease
	if release == "" {
		release = "the running kernel"
	}
	if !i.Usable() {
		why := "the IPVS netlink family is absent"
		if i.Family.Error != "" {
			why += " (" + i.Family.Error + ")"
		}
		if len(i.Problems) > 0 {
			why += "; " + strings.Join(i.Problems, "; ")
		}
		return []string{fmt.Sprintf("IPVS is not usable: ip_vs is neither built in nor shipped as a module for kernel %s: %s; "+
			"fix: install the kernel's modules package", release, why)}
	}
	// Resolving the family already asked the kernel to load ip_vs; when the
	// family is still absent, loading the module takes CAP_SYS_MODULE or an
	// operator who loads it beforehand.
	if !i.Family.Supported && !i.Loaded && !i.Builtin && r.Capabilities.Error == "" &&
		!r.Capabilities.Effective["CAP_SYS_MODULE"] {
		return []string{"ip_vs is a module that is not loaded and CAP_SYS_MODULE is missing: run modprobe ip_vs before halb starts"}
	}
	return nil
}
