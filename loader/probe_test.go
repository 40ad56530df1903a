package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/config"
)

// fakeKernel answers the kernel checks from its fields; nil means supported.
type fakeKernel struct {
	xdp, schedCLS, xdpLink, tcx, ipvsFamily, mmapable error
}

func (k fakeKernel) ProgramType(t ebpf.ProgramType) error {
	switch t {
	case ebpf.XDP:
		return k.xdp
	case ebpf.SchedCLS:
		return k.schedCLS
	}
	return fmt.Errorf("fake kernel: unexpected program type %s", t)
}
func (k fakeKernel) XDPLink() error        { return k.xdpLink }
func (k fakeKernel) TCX() error            { return k.tcx }
func (k fakeKernel) IPVSFamily() error     { return k.ipvsFamily }
func (k fakeKernel) MmapableArrays() error { return k.mmapable }

var (
	errNoXDP    = errors.New("load XDP program: not supported")
	errNoTC     = errors.New("load SchedCLS program: not supported")
	errNoFamily = errors.New("resolve generic netlink family IPVS: not registered")
	errNoMmap   = errors.New("create a BPF array with BPF_F_MMAPABLE: not supported")
	errXDPPerm  = errors.New("load XDP program: operation not permitted")
	errTCPerm   = errors.New("load SchedCLS program: operation not permitted")
)

// writeTree creates files under root: a key ending in "/" is a directory,
// anything else a file with the value as its content.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const procMounts = `sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
tmpfs /run/with\040space tmpfs rw 0 0
`

// status returns a /proc/self/status excerpt with the given CapEff.
func status(capEff string) string {
	return "Name:\thalb\nState:\tR (running)\nCapInh:\t0000000000000000\nCapPrm:\t" + capEff +
		"\nCapEff:\t" + capEff + "\nCapBnd:\t" + capEff + "\n"
}

// A Raspberry Pi OS kernel: no BTF, no bpffs, IPVS shipped as xz-compressed
// modules that nobody has loaded yet.
func TestProbeRaspberryPi(t *testing.T) {
	root := t.TempDir()
	const rel = "6.1.21-v8+"
	writeTree(t, root, map[string]string{
		"proc/sys/kernel/osrelease": rel + "\n",
		"proc/mounts":               procMounts,
		"proc/self/status":          status("000001ffffffffff"),
		"sys/module/":               "",
		"sys/kernel/":               "",
		"lib/modules/" + rel + "/modules.dep": `kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz
kernel/net/netfilter/ipvs/ip_vs_wrr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz
kernel/net/netfilter/ipvs/ip_vs_ftp.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz kernel/net/netfilter/nf_nat.ko.xz
kernel/net/netfilter/nf_conntrack.ko.xz:
kernel/drivers/net/veth.ko.xz:
`,
		"lib/modules/" + rel + "/modules.builtin": "kernel/net/ipv4/tcp_cubic.ko\nkernel/net/unix/unix.ko\n",
	})
	r := Host{Root: root, Kernel: fakeKernel{ipvsFamily: errNoFamily}}.Probe()

	if r.KernelRelease != rel {
		t.Errorf("KernelRelease = %q, want %q", r.KernelRelease, rel)
	}
	if r.BTF.Present || r.BTF.Path != "/sys/kernel/btf/vmlinux" || r.BTF.Error != "" {
		t.Errorf("BTF = %+v, want absent at /sys/kernel/btf/vmlinux", r.BTF)
	}
	if r.BPFFS.Mounted || len(r.BPFFS.Mounts) != 0 || r.BPFFS.Error != "" {
		t.Errorf("BPFFS = %+v, want not mounted", r.BPFFS)
	}
	i := r.IPVS
	if i.Loaded || i.Builtin || !i.Loadable || i.Family.Supported {
		t.Errorf("IPVS = %+v, want loadable only", i)
	}
	if !slices.Equal(i.Schedulers, []string{"rr", "wrr"}) {
		t.Errorf("Schedulers = %q, want [rr wrr] (ftp is not a scheduler)", i.Schedulers)
	}
	if len(i.LoadedSchedulers) != 0 || len(i.Problems) != 0 {
		t.Errorf("LoadedSchedulers = %q, Problems = %q, want none", i.LoadedSchedulers, i.Problems)
	}
	if i.ModulesDir != "/lib/modules/"+rel {
		t.Errorf("ModulesDir = %q", i.ModulesDir)
	}
	if !i.Usable() {
		t.Error("IPVS not usable, want usable: ip_vs can be loaded")
	}

	d := Choose(config.ModeAuto, r)
	want := Decision{Mode: config.ModeIPVS, Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"}
	if !equalDecision(d, want) {
		t.Errorf("Choose(auto) = %+v, want %+v", d, want)
	}
}

// A line of modules.dep that names no module file (a vendor's blob) is
// skipped, as the probe did before it shared internal/kmod's parser: IPVS
// stays usable with the schedulers the other lines list.
func TestProbeModulesDepOddLine(t *testing.T) {
	const rel = "6.1.0-18-amd64"
	for _, odd := range []string{
		"extra/vendor_blob.ko.bz2:",
		"extra/vendor_blob.ko.bz2: kernel/net/netfilter/ipvs/ip_vs.ko",
		"updates/readme.txt:",
	} {
		t.Run(odd, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, map[string]string{
				"proc/sys/kernel/osrelease": rel + "\n",
				"proc/mounts":               procMounts,
				"proc/self/status":          status("000001ffffffffff"),
				"sys/module/":               "",
				"lib/modules/" + rel + "/modules.dep": "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko\n" +
					odd + "\n" +
					"kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n" +
					"kernel/net/netfilter/nf_conntrack.ko:\n",
				"lib/modules/" + rel + "/modules.builtin": "kernel/net/unix/unix.ko\n",
			})
			i := Host{Root: root, Kernel: fakeKernel{ipvsFamily: errNoFamily}}.Probe().IPVS
			if !i.Loadable || !i.Usable() || len(i.Problems) != 0 {
				t.Errorf("IPVS = %+v, want loadable and usable, no problems", i)
			}
			if !slices.Equal(i.Schedulers, []string{"rr"}) {
				t.Errorf("Schedulers = %q, want [rr]", i.Schedulers)
			}
		})
	}
}

// A kernel built without IPVS, once with its modules installed and once
// without.
func TestProbeNoIPVS(t *testing.T) {
	const rel = "6.6.0-custom"
	base := map[string]string{
		"proc/sys/kernel/osrelease": rel + "\n",
		"proc/mounts":               procMounts,
		"proc/self/status":          status("000001ffffffffff"),
		"sys/module/nf_conntrack/":  "",
	}
	for _, tc := range []struct {
		name        string
		modules     map[string]string
		wantProblem string
	}{
		{
			name: "modules installed",
			modules: map[string]string{
				"lib/modules/" + rel + "/modules.dep":     "kernel/drivers/net/veth.ko.zst:\nkernel/net/netfilter/nf_conntrack.ko.zst:\n",
				"lib/modules/" + rel + "/modules.builtin": "kernel/net/unix/unix.ko\n",
			},
		},
		{
			name:        "no modules dir",
			wantProblem: "no /lib/modules/" + rel + ": modules not installed",
		},
		{
			name:        "no modules.dep",
			modules:     map[string]string{"lib/modules/" + rel + "/modules.builtin": "kernel/net/unix/unix.ko\n"},
			wantProblem: "no /lib/modules/" + rel + "/modules.dep: run depmod",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, base)
			writeTree(t, root, tc.modules)
			r := Host{Root: root, Kernel: fakeKernel{ipvsFamily: errNoFamily}}.Probe()

			i := r.IPVS
			if i.Loaded || i.Builtin || i.Loadable || i.Usable() {
				t.Errorf("IPVS = %+v, want nothing", i)
			}
			if len(i.Schedulers) != 0 || len(i.LoadedSchedulers) != 0 {
				t.Errorf("schedulers = %q, loaded = %q, want none", i.Schedulers, i.LoadedSchedulers)
			}
			var wantProblems []string
			if tc.wantProblem != "" {
				wantProblems = []string{tc.wantProblem}
			}
			if !slices.Equal(i.Problems, wantProblems) {
				t.Errorf("Problems = %q, want %q", i.Problems, wantProblems)
			}

			d := Choose(config.ModeAuto, r)
			if d.Mode != config.ModeIPVS || d.Reason != "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux" {
				t.Errorf("Choose(auto) = %+v, want ipvs for lack of BTF", d)
			}
			if len(d.Warnings) != 1 ||
				!strings.Contains(d.Warnings[0], "ip_vs is neither built in nor shipped as a module for kernel "+rel) ||
				!strings.Contains(d.Warnings[0], "fix: install the kernel's modules package") ||
				!strings.Contains(d.Warnings[0], tc.wantProblem) {
				t.Errorf("Choose(auto).Warnings = %q, want one naming what is missing and the fix", d.Warnings)
			}
		})
	}
}

// A full-featured kernel: BTF, bpffs mounted twice (once at a path with a
// space), ip_vs built in with two schedulers, one of them loaded.
func TestProbeBTFAndBuiltinIPVS(t *testing.T) {
	root := t.TempDir()
	const rel = "6.12.0-1-amd64"
	writeTree(t, root, map[string]string{
		"proc/sys/kernel/osrelease": rel,
		"proc/mounts": procMounts +
			"bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n" +
			`none /run/halb\040bpf\134x bpf rw,relatime 0 0` + "\n",
		"proc/self/status":       status("00000000a80425fb"),
		"sys/kernel/btf/vmlinux": "BTF",
		"sys/module/ip_vs/":      "",
		"sys/module/ip_vs_rr/":   "",
		"sys/module/ip_vs_ftp/":  "",
		"lib/modules/" + rel + "/modules.builtin": "kernel/net/netfilter/ipvs/ip_vs.ko\n" +
			"kernel/net/netfilter/ipvs/ip_vs_rr.ko\nkernel/net/netfilter/ipvs/ip_vs_pe_sip.ko\n",
		"lib/modules/" + rel + "/modules.dep": "kernel/net/netfilter/ipvs/ip_vs_mh.ko.gz:\n" +
			"kernel/net/netfilter/ipvs/ip_vs_wrr.ko:\n",
	})
	r := Host{Root: root, Kernel: fakeKernel{}}.Probe()

	if !r.BTF.Present {
		t.Errorf("BTF = %+v, want present", r.BTF)
	}
	wantMounts := []string{"/sys/fs/bpf", `/run/halb bpf\x`}
	if !r.BPFFS.Mounted || !slices.Equal(r.BPFFS.Mounts, wantMounts) {
		t.Errorf("BPFFS = %+v, want mounted at %q", r.BPFFS, wantMounts)
	}
	for _, f := range []Feature{r.XDP, r.SchedCLS, r.XDPLink, r.TCX, r.IPVS.Family} {
		if !f.Supported || f.Error != "" {
			t.Errorf("feature = %+v, want supported", f)
		}
	}
	// 0xa80425fb is the default set of a root process in a container:
	// NET_RAW yes; BPF, PERFMON, NET_ADMIN, SYS_MODULE, SYS_ADMIN no.
	wantCaps := map[string]bool{
		"CAP_BPF": false, "CAP_PERFMON": false, "CAP_NET_ADMIN": false,
		"CAP_NET_RAW": true, "CAP_SYS_MODULE": false, "CAP_SYS_ADMIN": false,
	}
	if r.Capabilities.CapEff != "00000000a80425fb" || fmt.Sprint(r.Capabilities.Effective) != fmt.Sprint(wantCaps) {
		t.Errorf("Capabilities = %+v, want %v", r.Capabilities, wantCaps)
	}
	i := r.IPVS
	if !i.Loaded || !i.Builtin || i.Loadable || !i.Usable() || len(i.Problems) != 0 {
		t.Errorf("IPVS = %+v, want built in and loaded, no problems", i)
	}
	if !slices.Equal(i.Schedulers, []string{"mh", "rr", "wrr"}) {
		t.Errorf("Schedulers = %q, want [mh rr wrr]", i.Schedulers)
	}
	if !slices.Equal(i.LoadedSchedulers, []string{"rr"}) {
		t.Errorf("LoadedSchedulers = %q, want [rr]", i.LoadedSchedulers)
	}

	for _, tc := range []struct {
		mode string
		want Decision
	}{
		{config.ModeAuto, Decision{Mode: config.ModeXDP, Reason: "xdp: BTF present, XDP loads"}},
		{config.ModeTC, Decision{Mode: config.ModeTC, Reason: "configured: datapath.mode: tc"}},
		{config.ModeIPVS, Decision{Mode: config.ModeIPVS, Reason: "configured: datapath.mode: ipvs"}},
	} {
		if d := Choose(tc.mode, r); !equalDecision(d, tc.want) {
			t.Errorf("Choose(%q) = %+v, want %+v", tc.mode, d, tc.want)
		}
	}
}

// Unreadable files are reported in the sections they belong to; the probe
// goes on.
func TestProbeEmptyRoot(t *testing.T) {
	r := Host{Root: t.TempDir(), Kernel: fakeKernel{ipvsFamily: errNoFamily}}.Probe()
	if r.KernelRelease != "" || !strings.HasPrefix(r.KernelReleaseError, "read kernel release: ") {
		t.Errorf("KernelRelease = %q, error %q", r.KernelRelease, r.KernelReleaseError)
	}
	if !strings.HasPrefix(r.BPFFS.Error, "read mounts: ") {
		t.Errorf("BPFFS.Error = %q", r.BPFFS.Error)
	}
	if !strings.HasPrefix(r.Capabilities.Error, "read capabilities: ") || r.Capabilities.Effective["CAP_BPF"] {
		t.Errorf("Capabilities = %+v", r.Capabilities)
	}
	if want := []string{"kernel release unknown: cannot look in /lib/modules"}; !slices.Equal(r.IPVS.Problems, want) {
		t.Errorf("IPVS.Problems = %q, want %q", r.IPVS.Problems, want)
	}
	d := Choose(config.ModeAuto, r)
	if d.Mode != config.ModeIPVS || len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "for kernel the running kernel") {
		t.Errorf("Choose(auto) = %+v", d)
	}
}

// report builds a Report for Choose: BTF and bpffs present, and the named
// kernel checks failing.
func report(btf bool, xdp, schedCLS error) Report {
	return Report{
		KernelRelease: "6.18.1",
		BTF:           BTF{Path: "/sys/kernel/btf/vmlinux", Present: btf},
		BPFFS:         BPFFS{Mounted: true, Mounts: []string{"/sys/fs/bpf"}},
		XDP:           feature(xdp),
		SchedCLS:      feature(schedCLS),
		XDPLink:       feature(xdp),
		TCX:           feature(schedCLS),
		Capabilities: Capabilities{CapEff: "000001ffffffffff", Effective: map[string]bool{
			"CAP_BPF": true, "CAP_PERFMON": true, "CAP_NET_ADMIN": true,
			"CAP_NET_RAW": true, "CAP_SYS_MODULE": true, "CAP_SYS_ADMIN": true,
		}},
		IPVS: IPVS{Family: Feature{Supported: true}},
	}
}

func TestChoose(t *testing.T) {
	noIPVS := func(r Report) Report {
		r.IPVS = IPVS{Family: feature(errNoFamily), ModulesDir: "/lib/modules/6.18.1"}
		return r
	}
	loadableIPVS := func(caps bool) func(Report) Report {
		return func(r Report) Report {
			r.IPVS = IPVS{Family: feature(errNoFamily), Loadable: true}
			r.Capabilities.Effective["CAP_SYS_MODULE"] = caps
			return r
		}
	}
	// A kernel before Linux 5.5: BTF and XDP, but no mappable arrays.
	unmappable := report(true, nil, nil)
	unmappable.MmapableArrays = feature(errNoMmap)
	for _, tc := range []struct {
		name   string
		mode   string
		report Report
		want   Decision
	}{
		{
			name:   "no BTF",
			mode:   config.ModeAuto,
			report: report(false, nil, nil),
			want:   Decision{Mode: config.ModeIPVS, Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"},
		},
		{
			name:   "BTF and XDP, arrays cannot be mapped (before Linux 5.5)",
			mode:   config.ModeAuto,
			report: unmappable,
			want: Decision{Mode: config.ModeIPVS, Reason: "ipvs: BTF present, but BPF arrays cannot be mapped into memory (" +
				errNoMmap.Error() + "), which the eBPF data path needs (Linux 5.5)"},
		},
		{
			name:   "xdp configured, arrays cannot be mapped",
			mode:   config.ModeXDP,
			report: unmappable,
			want: Decision{Mode: config.ModeXDP, Reason: "configured: datapath.mode: xdp", Warnings: []string{
				"xdp configured but BPF arrays cannot be mapped into memory (" + errNoMmap.Error() +
					"): the eBPF data path will not load; use Linux 5.5 or later, or datapath.mode: ipvs"}},
		},
		{
			name:   "empty mode is auto",
			mode:   "",
			report: report(true, nil, nil),
			want:   Decision{Mode: config.ModeXDP, Reason: "xdp: BTF present, XDP loads"},
		},
		{
			name:   "BTF and XDP",
			mode:   config.ModeAuto,
			report: report(true, nil, nil),
			want:   Decision{Mode: config.ModeXDP, Reason: "xdp: BTF present, XDP loads"},
		},
		{
			name:   "BTF, XDP fails, tc loads",
			mode:   config.ModeAuto,
			report: report(true, errNoXDP, nil),
			want: Decision{Mode: config.ModeTC,
				Reason: "tc: BTF present, XDP does not load (load XDP program: not supported), sched_cls loads"},
		},
		{
			name:   "BTF, nothing loads",
			mode:   config.ModeAuto,
			report: report(true, errNoXDP, errNoTC),
			want: Decision{Mode: config.ModeIPVS,
				Reason: "ipvs: BTF present, but neither XDP (load XDP program: not supported) nor sched_cls (load SchedCLS program: not supported) programs load"},
		},
		{
			name:   "ipvs chosen, not usable",
			mode:   config.ModeAuto,
			report: noIPVS(report(false, nil, nil)),
			want: Decision{Mode: config.ModeIPVS, Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux",
				Warnings: []string{"IPVS is not usable: ip_vs is neither built in nor shipped as a module for kernel 6.18.1: " +
					"the IPVS netlink family is absent (resolve generic netlink family IPVS: not registered); " +
					"fix: install the kernel's modules package"}},
		},
		{
			name:   "ipvs chosen, module but no CAP_SYS_MODULE",
			mode:   config.ModeAuto,
			report: loadableIPVS(false)(report(false, nil, nil)),
			want: Decision{Mode: config.ModeIPVS, Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux",
				Warnings: []string{"ip_vs is a module that is not loaded and CAP_SYS_MODULE is missing: run modprobe ip_vs before halb starts"}},
		},
		{
			name:   "ipvs chosen, module and CAP_SYS_MODULE",
			mode:   config.ModeAuto,
			report: loadableIPVS(true)(report(false, nil, nil)),
			want:   Decision{Mode: config.ModeIPVS, Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"},
		},
		{
			name:   "xdp configured and supported",
			mode:   config.ModeXDP,
			report: report(true, nil, nil),
			want:   Decision{Mode: config.ModeXDP, Reason: "configured: datapath.mode: xdp"},
		},
		{
			name:   "xdp configured without BTF, XDP loads",
			mode:   config.ModeXDP,
			report: report(false, nil, nil),
			want:   Decision{Mode: config.ModeXDP, Reason: "configured: datapath.mode: xdp"},
		},
		{
			name:   "xdp configured, XDP does not load",
			mode:   config.ModeXDP,
			report: report(true, errNoXDP, nil),
			want: Decision{Mode: config.ModeXDP, Reason: "configured: datapath.mode: xdp",
				Warnings: []string{"xdp configured but XDP programs do not load: load XDP program: not supported"}},
		},
		{
			name: "xdp configured, no XDP link, no bpffs",
			mode: config.ModeXDP,
			report: func() Report {
				r := report(true, nil, nil)
				r.XDPLink = feature(errors.New("unshare network namespace for the probe (needs CAP_SYS_ADMIN): operation not permitted"))
				r.BPFFS = BPFFS{Mounts: []string{}}
				return r
			}(),
			want: Decision{Mode: config.ModeXDP, Reason: "configured: datapath.mode: xdp",
				Warnings: []string{
					"XDP programs load but the XDP bpf_link check failed: unshare network namespace for the probe (needs CAP_SYS_ADMIN): operation not permitted",
					"no bpffs mounted: pinned programs and maps need one (mount -t bpf bpf /sys/fs/bpf)",
				}},
		},
		{
			name:   "tc configured and supported",
			mode:   config.ModeTC,
			report: report(true, errNoXDP, nil),
			want:   Decision{Mode: config.ModeTC, Reason: "configured: datapath.mode: tc"},
		},
		{
			name:   "tc configured, sched_cls does not load",
			mode:   config.ModeTC,
			report: report(true, nil, errNoTC),
			want: Decision{Mode: config.ModeTC, Reason: "configured: datapath.mode: tc",
				Warnings: []string{"tc configured but sched_cls programs do not load: load SchedCLS program: not supported"}},
		},
		{
			name:   "ipvs configured and usable",
			mode:   config.ModeIPVS,
			report: report(true, nil, nil),
			want:   Decision{Mode: config.ModeIPVS, Reason: "configured: datapath.mode: ipvs"},
		},
		{
			name:   "ipvs configured, not usable",
			mode:   config.ModeIPVS,
			report: noIPVS(report(true, nil, nil)),
			want: Decision{Mode: config.ModeIPVS, Reason: "configured: datapath.mode: ipvs",
				Warnings: []string{"IPVS is not usable: ip_vs is neither built in nor shipped as a module for kernel 6.18.1: " +
					"the IPVS netlink family is absent (resolve generic netlink family IPVS: not registered); " +
					"fix: install the kernel's modules package"}},
		},
		{
			name: "unprivileged",
			mode: config.ModeAuto,
			report: func() Report {
				r := report(true, errXDPPerm, errTCPerm)
				r.Capabilities = Capabilities{CapEff: "0000000000002000", Effective: map[string]bool{"CAP_NET_RAW": true}}
				return r
			}(),
			want: Decision{Mode: config.ModeIPVS,
				Reason: "ipvs: BTF present, but neither XDP (load XDP program: operation not permitted) nor sched_cls (load SchedCLS program: operation not permitted) programs load",
				Warnings: []string{"this process lacks CAP_BPF and CAP_NET_ADMIN, so the program checks show its own privileges, not the kernel's: " +
					"run halb probe as the user halb runs as"}},
		},
		{
			name: "CAP_BPF and CAP_NET_ADMIN without CAP_SYS_ADMIN",
			mode: config.ModeAuto,
			report: func() Report {
				r := report(true, errNoXDP, nil)
				r.Capabilities.Effective["CAP_SYS_ADMIN"] = false
				return r
			}(),
			want: Decision{Mode: config.ModeTC,
				Reason: "tc: BTF present, XDP does not load (load XDP program: not supported), sched_cls loads"},
		},
		{
			name:   "unknown mode",
			mode:   "dpdk",
			report: report(true, nil, nil),
			want: Decision{Mode: "dpdk", Reason: "configured: datapath.mode: dpdk",
				Warnings: []string{`unknown datapath.mode "dpdk": want auto, xdp, tc or ipvs`}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := Choose(tc.mode, tc.report); !equalDecision(d, tc.want) {
				t.Errorf("Choose(%q) =\n%#v\nwant\n%#v", tc.mode, d, tc.want)
			}
		})
	}
}

func equalDecision(a, b Decision) bool {
	return a.Mode == b.Mode && a.Reason == b.Reason && slices.Equal(a.Warnings, b.Warnings)
}

// `halb probe --json` prints these keys; the CLI contract depends on them.
func TestReportJSONKeys(t *testing.T) {
	r := report(true, errNoXDP, nil)
	r.KernelReleaseError = "x"
	r.BTF.Error, r.BPFFS.Error, r.Capabilities.Error = "x", "x", "x"
	r.IPVS.Problems = []string{"x"}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"":             {"bpffs", "btf", "capabilities", "ipvs", "kernel_release", "kernel_release_error", "sched_cls", "tcx", "xdp", "xdp_link"},
		"btf":          {"error", "path", "present"},
		"bpffs":        {"error", "mounted", "mounts"},
		"xdp":          {"error", "supported"},
		"capabilities": {"cap_eff", "effective", "error"},
		"ipvs":         {"builtin", "family", "loadable", "loaded", "loaded_schedulers", "modules_dir", "problems", "schedulers"},
	}
	for section, keys := range want {
		obj := got
		if section != "" {
			obj = got[section].(map[string]any)
		}
		var have []string
		for k := range obj {
			have = append(have, k)
		}
		slices.Sort(have)
		if !slices.Equal(have, keys) {
			t.Errorf("JSON keys of %q = %q, want %q", section, have, keys)
		}
	}

	data, err = json.Marshal(Decision{Mode: "xdp", Reason: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"mode":"xdp","reason":"r"}` {
		t.Errorf("Decision JSON = %s", data)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/fs/bpf":            "/sys/fs/bpf",
		`/a\040b`:                "/a b",
		`/tab\011x\012y`:         "/tab\tx\ny",
		`/back\134slash`:         `/back\slash`,
		`/not\09octal`:           `/not\09octal`,
		`/short\04`:              `/short\04`,
		`/end\`:                  `/end\`,
		`/two\040\040spaces`:     "/two  spaces",
		`/too\477big`:            `/too\477big`,
		`/utf8\303\251t\303\251`: "/utf8été",
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
