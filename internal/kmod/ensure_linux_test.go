package kmod

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	debianRelease = "6.1.0-18-amd64"
	trixieRelease = "6.12.38+deb13-amd64"
	capAll        = "000001ffffffffff"
	capNone       = "0000000000000000"
)

// trixieDep is modules.dep as Debian 13 writes it: xz-compressed modules.
const trixieDep = `kernel/lib/libcrc32c.ko.xz:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz:
kernel/net/netfilter/nf_conntrack.ko.xz: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/net/netfilter/ipvs/ip_vs_mh.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz kernel/net/netfilter/nf_conntrack.ko.xz kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz kernel/lib/libcrc32c.ko.xz
`

const builtinList = `kernel/net/ipv6/ipv6.ko
kernel/crypto/crc32c_generic.ko
`

// files is a host's file tree: path → content. A path ending in "*" is an
// executable (the "*" is dropped).
type files map[string]string

// debianHost is a Debian 12 host with modprobe and IPVS shipped as modules.
func debianHost() files {
	f := files{
		"/proc/sys/kernel/osrelease":                         debianRelease + "\n",
		"/proc/sys/kernel/modprobe":                          "/sbin/modprobe\n",
		"/proc/sys/kernel/modules_disabled":                  "0\n",
		"/proc/self/status":                                  "Name:\thalb\nCapInh:\t0000000000000000\nCapEff:\t" + capAll + "\n",
		"/sbin/modprobe*":                                    "",
		"/lib/modules/" + debianRelease + "/modules.dep":     debianDep,
		"/lib/modules/" + debianRelease + "/modules.builtin": builtinList,
	}
	for _, line := range strings.Split(debianDep, "\n") {
		if file, _, ok := strings.Cut(line, ":"); ok {
			f["/lib/modules/"+debianRelease+"/"+file] = "\x7fELF"
		}
	}
	return f
}

// nativeHost is debianHost with module loading on demand switched off and no
// modprobe installed: halb loads with finit_module.
func nativeHost() files {
	f := debianHost()
	f["/proc/sys/kernel/modprobe"] = "/bin/false\n"
	delete(f, "/sbin/modprobe*")
	return f
}

// trixieHost is a Debian 13 host without modprobe: xz-compressed modules
// and a kernel that decompresses xz itself.
func trixieHost() files {
	f := files{
		"/proc/sys/kernel/osrelease":                         trixieRelease + "\n",
		"/proc/sys/kernel/modprobe":                          "\n",
		"/proc/self/status":                                  "CapEff:\t" + capAll + "\n",
		"/sys/module/compression":                            "xz\n",
		"/lib/modules/" + trixieRelease + "/modules.dep":     trixieDep,
		"/lib/modules/" + trixieRelease + "/modules.builtin": builtinList,
	}
	for _, line := range strings.Split(trixieDep, "\n") {
		if file, _, ok := strings.Cut(line, ":"); ok {
			f["/lib/modules/"+trixieRelease+"/"+file] = "\xfd7zXZ"
		}
	}
	return f
}

// crcDep is what Debian 12's modules.dep adds for crc32c: two modules that
// register it with the crypto API, neither of them a dependency of anything.
const crcDep = `kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
`

// softdepHost is nativeHost as Debian 12 really is: crc32c is a module, not
// built in, and modules.softdep and modules.alias say that libcrc32c wants
// it loaded first and which modules provide it.
func softdepHost() files {
	dir := "/lib/modules/" + debianRelease + "/"
	return nativeHost().with(
		dir+"modules.dep", debianDep+crcDep,
		dir+"modules.builtin", "kernel/net/ipv6/ipv6.ko\n",
		dir+"modules.softdep", debianSoftdep,
		dir+"modules.alias", debianAlias,
		dir+"kernel/arch/x86/crypto/crc32c-intel.ko", "\x7fELF",
		dir+"kernel/crypto/crc32c_generic.ko", "\x7fELF",
	)
}

func (f files) with(kv ...string) files {
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == "<none>" {
			delete(f, kv[i])
			continue
		}
		f[kv[i]] = kv[i+1]
	}
	return f
}

// live marks modules as loaded.
func (f files) live(names ...string) files {
	for _, n := range names {
		f["/sys/module/"+n+"/initstate"] = "live\n"
	}
	return f
}

func (f files) write(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range f {
		mode := os.FileMode(0o644)
		if q, ok := strings.CutSuffix(p, "*"); ok {
			p, mode = q, 0o755
		}
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

type finitCall struct {
	file  string // as the host sees it
	flags int
}

// fakeKernel stands in for modprobe and finit_module. A successful load
// writes /sys/module/<name>/initstate, as the kernel would.
type fakeKernel struct {
	t         *testing.T
	root      string
	runs      [][]string
	finits    []finitCall
	runStderr string           // modprobe's standard error when it fails
	runErr    error            // modprobe's failure
	finitErr  map[string]error // by module name
	// requires makes a module's init function fail with ENOENT unless one
	// of the modules listed for it is loaded, as libcrc32c's does when the
	// crypto API has no crc32c.
	requires  map[string][]string
	initstate string // written on load: "live" unless set; "-" writes nothing
}

func (k *fakeKernel) run(_ context.Context, prog string, args ...string) ([]byte, error) {
	k.runs = append(k.runs, append([]string{prog}, args...))
	if k.runErr != nil {
		return []byte(k.runStderr), k.runErr
	}
	k.appear(args[len(args)-1])
	return nil, nil
}

func (k *fakeKernel) finit(f *os.File, params string, flags int) error {
	file := "/" + strings.TrimPrefix(f.Name(), k.root+"/")
	k.finits = append(k.finits, finitCall{file, flags})
	if params != "" {
		k.t.Errorf("finit_module(%s) with params %q, want none", file, params)
	}
	name := NameFromPath(file)
	err := k.finitErr[name]
	if alts, ok := k.requires[name]; ok && err == nil {
		err = unix.ENOENT
		for _, a := range alts {
			if _, statErr := os.Stat(filepath.Join(k.root, "sys/module", a, "initstate")); statErr == nil {
				err = nil
			}
		}
	}
	if err == nil || errors.Is(err, unix.EEXIST) {
		k.appear(name)
	}
	return err
}

func (k *fakeKernel) appear(name string) {
	state := k.initstate
	if state == "" {
		state = "live"
	}
	if state == "-" {
		return
	}
	dir := filepath.Join(k.root, "sys/module", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "initstate"), []byte(state+"\n"), 0o444); err != nil {
		k.t.Fatal(err)
	}
}

func debianFile(p string) string { return path.Join("/lib/modules", debianRelease, p) }
func trixieFile(p string) string { return path.Join("/lib/modules", trixieRelease, p) }

var (
	crcIntel   = finitCall{debianFile("kernel/arch/x86/crypto/crc32c-intel.ko"), 0}
	crcGeneric = finitCall{debianFile("kernel/crypto/crc32c_generic.ko"), 0}
	// libcrc32c's init function asks the crypto API for crc32c.
	needsCRC32C = map[string][]string{"libcrc32c": {"crc32c_intel", "crc32c_generic"}}
)

var debianIPVS = []finitCall{
	{debianFile("kernel/lib/libcrc32c.ko"), 0},
	{debianFile("kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko"), 0},
	{debianFile("kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko"), 0},
	{debianFile("kernel/net/netfilter/nf_conntrack.ko"), 0},
	{debianFile("kernel/net/netfilter/ipvs/ip_vs.ko"), 0},
}

func TestEnsure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		host    files
		release string // Modules.Release
		kernel  fakeKernel
		modules []string

		wantRuns   [][]string
		wantFinits []finitCall
		wantIs     error    // a sentinel the error wraps
		wantMsg    []string // parts of the error message; none: no error
		wantNot    []string // what the error message must not say
	}{
		{
			name:    "already loaded: nothing run",
			host:    debianHost().live("ip_vs", "ip_vs_rr"),
			modules: []string{"ip_vs", "ip_vs_rr"},
		},
		{
			name:    "built in: nothing run",
			host:    debianHost().with("/lib/modules/"+debianRelease+"/modules.builtin", builtinList+"kernel/net/netfilter/ipvs/ip_vs.ko\n"),
			modules: []string{"ip_vs"},
		},
		{
			name:    "built in with parameters and no modules.builtin: nothing run",
			host:    debianHost().with("/lib/modules/"+debianRelease+"/modules.builtin", "<none>", "/sys/module/ip_vs/parameters/conn_tab_bits", "12\n"),
			modules: []string{"ip_vs"},
		},
		{
			name:     "modprobe loads what is missing",
			host:     debianHost().live("ip_vs"),
			modules:  []string{"ip_vs", "ip_vs_rr", "ip_vs_wrr"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs_rr"}, {"/sbin/modprobe", "ip_vs_wrr"}},
		},
		{
			name:     "names with dashes are the kernel's names with underscores",
			host:     debianHost(),
			modules:  []string{"ip-vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
		},
		{
			name:     "modprobe named by /proc/sys/kernel/modprobe",
			host:     debianHost().with("/proc/sys/kernel/modprobe", "/usr/local/sbin/modprobe\n", "/usr/local/sbin/modprobe*", ""),
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/usr/local/sbin/modprobe", "ip_vs"}},
		},
		{
			name:     "/proc/sys/kernel/modprobe names a missing program: /usr/sbin/modprobe",
			host:     debianHost().with("/proc/sys/kernel/modprobe", "/opt/gone/modprobe\n", "/sbin/modprobe*", "<none>", "/usr/sbin/modprobe*", ""),
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/usr/sbin/modprobe", "ip_vs"}},
		},
		{
			name:     "/proc/sys/kernel/modprobe is /bin/false: /sbin/modprobe",
			host:     debianHost().with("/proc/sys/kernel/modprobe", "/bin/false\n", "/bin/false*", ""),
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
		},
		{
			name:     "a modprobe that is not executable is skipped",
			host:     debianHost().with("/sbin/modprobe*", "<none>", "/sbin/modprobe", "", "/usr/sbin/modprobe*", ""),
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/usr/sbin/modprobe", "ip_vs"}},
		},
		{
			name:       "no modprobe: finit_module, dependencies first, each once",
			host:       nativeHost(),
			modules:    []string{"ip_vs", "ip_vs_rr", "ip_vs_wrr"},
			wantFinits: append(slices.Clone(debianIPVS), finitCall{debianFile("kernel/net/netfilter/ipvs/ip_vs_rr.ko"), 0}, finitCall{debianFile("kernel/net/netfilter/ipvs/ip_vs_wrr.ko"), 0}),
		},
		{
			name:       "no modprobe: dependencies already loaded are skipped",
			host:       nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			modules:    []string{"ip_vs_mh"},
			wantFinits: []finitCall{{debianFile("kernel/net/netfilter/ipvs/ip_vs.ko"), 0}, {debianFile("kernel/net/netfilter/ipvs/ip_vs_mh.ko"), 0}},
		},
		{
			name:       "no modprobe: a module loaded meanwhile (EEXIST) is fine",
			host:       nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			kernel:     fakeKernel{finitErr: map[string]error{"ip_vs": unix.EEXIST}},
			modules:    []string{"ip_vs"},
			wantFinits: []finitCall{{debianFile("kernel/net/netfilter/ipvs/ip_vs.ko"), 0}},
		},
		{
			name:    "no modprobe: xz modules go to the kernel compressed",
			host:    trixieHost(),
			modules: []string{"ip_vs_mh"},
			wantFinits: []finitCall{
				{trixieFile("kernel/lib/libcrc32c.ko.xz"), 4},
				{trixieFile("kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz"), 4},
				{trixieFile("kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz"), 4},
				{trixieFile("kernel/net/netfilter/nf_conntrack.ko.xz"), 4},
				{trixieFile("kernel/net/netfilter/ipvs/ip_vs.ko.xz"), 4},
				{trixieFile("kernel/net/netfilter/ipvs/ip_vs_mh.ko.xz"), 4},
			},
		},
		{
			name:    "no modprobe: the kernel cannot decompress xz",
			host:    trixieHost().with("/sys/module/compression", "zstd\n"),
			modules: []string{"ip_vs"},
			wantMsg: []string{"load kernel module libcrc32c (needed by ip_vs) for kernel " + trixieRelease, "xz-compressed", "decompresses zstd only", "install kmod"},
		},
		{
			name:    "no modprobe: a kernel without in-kernel decompression",
			host:    trixieHost().with("/sys/module/compression", "<none>"),
			modules: []string{"ip_vs"},
			wantMsg: []string{"xz-compressed", "no /sys/module/compression", "CONFIG_MODULE_DECOMPRESS"},
		},
		{
			name:    "Release overrides /proc/sys/kernel/osrelease",
			host:    nativeHost().with("/proc/sys/kernel/osrelease", "6.6.31+rpt-rpi-v8\n").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			release: debianRelease,
			modules: []string{"ip_vs"},
			wantFinits: []finitCall{
				{debianFile("kernel/net/netfilter/ipvs/ip_vs.ko"), 0},
			},
		},
		{
			name:       "no modprobe: libcrc32c's soft dependency crc32c first, every module with that alias",
			host:       softdepHost(),
			kernel:     fakeKernel{requires: needsCRC32C},
			modules:    []string{"ip_vs", "ip_vs_wrr", "ip_vs_mh"},
			wantFinits: append([]finitCall{crcIntel, crcGeneric}, append(slices.Clone(debianIPVS), finitCall{debianFile("kernel/net/netfilter/ipvs/ip_vs_wrr.ko"), 0}, finitCall{debianFile("kernel/net/netfilter/ipvs/ip_vs_mh.ko"), 0})...),
		},
		{
			name:       "no modprobe: one module of a soft dependency's alias failing is fine",
			host:       softdepHost(),
			kernel:     fakeKernel{requires: needsCRC32C, finitErr: map[string]error{"crc32c_intel": unix.ENODEV}},
			modules:    []string{"ip_vs"},
			wantFinits: append([]finitCall{crcIntel, crcGeneric}, debianIPVS...),
		},
		{
			name:       "no modprobe: a soft dependency already loaded is not loaded again",
			host:       softdepHost().live("crc32c_generic"),
			kernel:     fakeKernel{requires: needsCRC32C},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS,
		},
		{
			name:       "no modprobe: no soft dependencies for a module already loaded",
			host:       softdepHost().live("libcrc32c"),
			kernel:     fakeKernel{requires: needsCRC32C},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[1:],
		},
		{
			name: "no modprobe: crc32c not shipped: libcrc32c's error names it, not depmod",
			host: softdepHost().with(
				"/lib/modules/"+debianRelease+"/modules.dep", debianDep,
				"/lib/modules/"+debianRelease+"/modules.alias", "",
			),
			kernel:     fakeKernel{requires: needsCRC32C},
			modules:    []string{"ip_vs", "ip_vs_wrr"},
			wantFinits: debianIPVS[:1],
			wantMsg: []string{
				"load kernel module libcrc32c (needed by ip_vs) for kernel " + debianRelease + ": finit_module " + debianFile("kernel/lib/libcrc32c.ko") + ": the kernel answered ENOENT, though the file is there: no such file or directory",
				"modules.softdep says to load crc32c (no module or alias of that name in modules.dep or modules.alias) before libcrc32c, and halb could not: that is the likely cause",
				"linux-image-" + debianRelease,
			},
			wantNot: []string{"depmod"},
		},
		{
			name:       "no modprobe: crc32c's modules fail to load: libcrc32c's error says why",
			host:       softdepHost(),
			kernel:     fakeKernel{requires: needsCRC32C, finitErr: map[string]error{"crc32c_intel": unix.ENODEV, "crc32c_generic": unix.ENOEXEC}},
			modules:    []string{"ip_vs"},
			wantFinits: []finitCall{crcIntel, crcGeneric, debianIPVS[0]},
			wantMsg: []string{
				"load kernel module libcrc32c (needed by ip_vs)",
				"modules.softdep says to load crc32c (crc32c_intel: finit_module " + crcIntel.file + ": no such device; crc32c_generic: finit_module " + crcGeneric.file + ": exec format error) before libcrc32c",
			},
			wantNot: []string{"depmod"},
		},
		{
			name:       "no modprobe: ENOENT without soft dependencies: init function or symbol, dmesg says",
			host:       nativeHost(),
			kernel:     fakeKernel{requires: needsCRC32C},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[:1],
			wantMsg:    []string{"libcrc32c (needed by ip_vs)", "its init function asked the kernel for something it could not find", `for "Unknown symbol", run depmod ` + debianRelease},
		},
		{
			name: "no modprobe: post: after the module; a soft dependency nobody ships is skipped",
			host: softdepHost().with("/lib/modules/"+debianRelease+"/modules.softdep",
				"softdep ip_vs_mh pre: crypto-nosuch post: ip_vs_rr\n").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"),
			modules: []string{"ip_vs_mh"},
			wantFinits: []finitCall{
				{debianFile("kernel/net/netfilter/ipvs/ip_vs_mh.ko"), 0},
				{debianFile("kernel/net/netfilter/ipvs/ip_vs_rr.ko"), 0},
			},
		},
		{
			name: "no modprobe: soft dependencies that name each other end",
			host: softdepHost().with("/lib/modules/"+debianRelease+"/modules.softdep",
				"softdep ip_vs_rr pre: ip_vs_wrr\nsoftdep ip_vs_wrr pre: ip_vs_rr post: ip_vs_rr\n").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"),
			modules: []string{"ip_vs_rr"},
			wantFinits: []finitCall{
				{debianFile("kernel/net/netfilter/ipvs/ip_vs_wrr.ko"), 0},
				{debianFile("kernel/net/netfilter/ipvs/ip_vs_rr.ko"), 0},
			},
		},
		{
			name:     "modprobe: soft dependencies are modprobe's business",
			host:     softdepHost().with("/sbin/modprobe*", ""),
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
		},
		{
			name:    "not in modules.dep: not shipped",
			host:    nativeHost().live("ip_vs"),
			modules: []string{"ip_vs_twos"},
			wantIs:  ErrNotShipped,
			wantMsg: []string{"load kernel module ip_vs_twos for kernel " + debianRelease, "find /lib/modules/" + debianRelease + "/modules.dep: not listed", "linux-image-" + debianRelease, "CONFIG_IP_VS_TWOS"},
		},
		{
			name:    "every module not shipped is reported",
			host:    nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"),
			modules: []string{"ip_vs_twos", "ip_vs_rr", "ip_vs_ovf"},
			wantIs:  ErrNotShipped,
			wantMsg: []string{"ip_vs_twos for kernel", "ip_vs_ovf for kernel", "CONFIG_IP_VS_OVF"},
			wantFinits: []finitCall{
				{debianFile("kernel/net/netfilter/ipvs/ip_vs_rr.ko"), 0},
			},
		},
		{
			name:    "modules.dep lists a file that is gone",
			host:    nativeHost().with("/lib/modules/"+debianRelease+"/kernel/net/netfilter/ipvs/ip_vs.ko", "<none>").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			modules: []string{"ip_vs"},
			wantIs:  ErrNotShipped,
			wantMsg: []string{"ip_vs.ko: modules.dep lists it but there is no such file", "reinstall"},
		},
		{
			name:    "no /lib/modules/<release>: modules not installed",
			host:    nativeHost().with("/lib/modules/"+debianRelease+"/modules.dep", "<none>", "/lib/modules/"+debianRelease+"/modules.builtin", "<none>", "/proc/sys/kernel/osrelease", "6.6.31+rpt-rpi-v8\n"),
			modules: []string{"ip_vs"},
			wantIs:  ErrNotShipped,
			wantMsg: []string{"for kernel 6.6.31+rpt-rpi-v8: find /lib/modules/6.6.31+rpt-rpi-v8: no such directory", "reboot into the kernel"},
		},
		{
			name:    "no modules.dep: run depmod",
			host:    nativeHost().with("/lib/modules/"+debianRelease+"/modules.dep", "<none>"),
			modules: []string{"ip_vs"},
			wantMsg: []string{"find /lib/modules/" + debianRelease + "/modules.dep", "run depmod " + debianRelease},
		},
		{
			name:    "no kernel release",
			host:    nativeHost().with("/proc/sys/kernel/osrelease", "<none>"),
			modules: []string{"ip_vs"},
			wantMsg: []string{"load kernel module ip_vs (kernel release unknown): read /proc/sys/kernel/osrelease"},
		},
		{
			name:       "EPERM without CAP_SYS_MODULE",
			host:       nativeHost().with("/proc/self/status", "CapEff:\t"+capNone+"\n"),
			kernel:     fakeKernel{finitErr: map[string]error{"libcrc32c": unix.EPERM}},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[:1],
			wantIs:     ErrNoPermission,
			wantMsg:    []string{"load kernel module libcrc32c (needed by ip_vs)", "operation not permitted", "lacks CAP_SYS_MODULE: run it as root or grant it the capability", BootConfig},
		},
		{
			name:       "EPERM with CAP_SYS_MODULE: something else refused",
			host:       nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			kernel:     fakeKernel{finitErr: map[string]error{"ip_vs": unix.EPERM}},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[4:],
			wantIs:     ErrNoPermission,
			wantMsg:    []string{"halb has CAP_SYS_MODULE, so something else refused", "user namespace"},
		},
		{
			name:       "EPERM with modules_disabled = 1",
			host:       nativeHost().with("/proc/sys/kernel/modules_disabled", "1\n"),
			kernel:     fakeKernel{finitErr: map[string]error{"libcrc32c": unix.EPERM}},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[:1],
			wantIs:     ErrDisabled,
			wantMsg:    []string{"module loading is disabled (kernel.modules_disabled = 1)", "until the next boot", BootConfig},
		},
		{
			name:       "EPERM under lockdown",
			host:       nativeHost().with("/sys/kernel/security/lockdown", "none [integrity] confidentiality\n"),
			kernel:     fakeKernel{finitErr: map[string]error{"libcrc32c": unix.EPERM}},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[:1],
			wantIs:     ErrSignatureRejected,
			wantMsg:    []string{"locked down (integrity", "signed"},
		},
		{
			name:       "signature rejected",
			host:       nativeHost(),
			kernel:     fakeKernel{finitErr: map[string]error{"libcrc32c": unix.EKEYREJECTED}},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[:1],
			wantIs:     ErrSignatureRejected,
			wantMsg:    []string{"key was rejected by service", "the kernel rejected the module's signature", "signed"},
		},
		{
			name:       "a dependency that does not fit the kernel",
			host:       nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6"),
			kernel:     fakeKernel{finitErr: map[string]error{"nf_conntrack": unix.ENOEXEC}},
			modules:    []string{"ip_vs_rr"},
			wantFinits: debianIPVS[3:4],
			wantMsg:    []string{"load kernel module nf_conntrack (needed by ip_vs_rr) for kernel " + debianRelease + ": finit_module " + debianFile("kernel/net/netfilter/nf_conntrack.ko") + ": exec format error", "built for another kernel"},
		},
		{
			name:       "finit_module succeeds but the module does not appear",
			host:       nativeHost().live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack"),
			kernel:     fakeKernel{initstate: "-"},
			modules:    []string{"ip_vs"},
			wantFinits: debianIPVS[4:],
			wantMsg:    []string{"load kernel module ip_vs for kernel " + debianRelease + ": confirm /sys/module/ip_vs: the module did not appear after loading", "dmesg"},
		},
		{
			name:     "modprobe succeeds but the module does not appear",
			host:     debianHost(),
			kernel:   fakeKernel{initstate: "-"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantMsg:  []string{"confirm /sys/module/ip_vs: the module did not appear after loading", `"install ip_vs" line in /etc/modprobe.d`},
		},
		{
			name:     "module stays coming",
			host:     debianHost(),
			kernel:   fakeKernel{initstate: "coming"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantMsg:  []string{"confirm /sys/module/ip_vs: the module is still initialising", `"coming"`},
		},
		{
			name:    "a module someone else is loading is waited for, not loaded again",
			host:    debianHost().with("/sys/module/ip_vs/initstate", "coming\n"),
			modules: []string{"ip_vs"},
			wantMsg: []string{"still initialising"},
		},
		{
			name:     "modprobe fails: exit status and standard error",
			host:     debianHost(),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs': Unknown symbol in module, or unknown parameter (see dmesg)\n"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantMsg:  []string{"load kernel module ip_vs for kernel " + debianRelease + ": run /sbin/modprobe: exit status 1: modprobe: ERROR: could not insert 'ip_vs': Unknown symbol in module, or unknown parameter (see dmesg)"},
		},
		{
			name:     "modprobe fails: not shipped",
			host:     debianHost(),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: FATAL: Module ip_vs_twos not found in directory /lib/modules/" + debianRelease + "\n"},
			modules:  []string{"ip_vs_twos"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs_twos"}},
			wantIs:   ErrNotShipped,
			wantMsg:  []string{"exit status 1: modprobe: FATAL: Module ip_vs_twos not found", "module not shipped with this kernel", "CONFIG_IP_VS_TWOS"},
		},
		{
			name:     "modprobe fails: modules.dep lists a file that is gone",
			host:     debianHost().with(debianFile("kernel/net/netfilter/ipvs/ip_vs_wrr.ko"), "<none>").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs_wrr': Unknown symbol in module, or unknown parameter (see dmesg)\n"},
			modules:  []string{"ip_vs_wrr"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs_wrr"}},
			wantIs:   ErrNotShipped,
			wantMsg:  []string{"load kernel module ip_vs_wrr for kernel " + debianRelease + ": run /sbin/modprobe: exit status 1: modprobe: ERROR: could not insert 'ip_vs_wrr': Unknown symbol in module, or unknown parameter (see dmesg): modules.dep lists " + debianFile("kernel/net/netfilter/ipvs/ip_vs_wrr.ko") + " but there is no such file", "reinstall this kernel's modules", "run depmod " + debianRelease + " if the file was removed on purpose"},
			wantNot:  []string{"dmesg) may say why"},
		},
		{
			name:     "modprobe fails: a dependency's file is gone",
			host:     debianHost().with(debianFile("kernel/net/netfilter/nf_conntrack.ko"), "<none>").live("libcrc32c"),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'nf_conntrack': Unknown symbol in module, or unknown parameter (see dmesg)\n"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantIs:   ErrNotShipped,
			wantMsg:  []string{"load kernel module nf_conntrack (needed by ip_vs) for kernel " + debianRelease, "modules.dep lists " + debianFile("kernel/net/netfilter/nf_conntrack.ko") + " but there is no such file"},
		},
		{
			name:     "modprobe fails: a loaded module's file being gone is not the cause",
			host:     debianHost().with(debianFile("kernel/net/netfilter/ipvs/ip_vs.ko"), "<none>").live("libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs_rr': Key was rejected by service\n"},
			modules:  []string{"ip_vs_rr"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs_rr"}},
			wantIs:   ErrSignatureRejected,
			wantNot:  []string{"no such file"},
		},
		{
			name:     "modprobe fails: no permission",
			host:     debianHost().with("/proc/self/status", "CapEff:\t"+capNone+"\n"),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs': Operation not permitted\n"},
			modules:  []string{"ip_vs", "ip_vs_rr"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantIs:   ErrNoPermission,
			wantMsg:  []string{"Operation not permitted", "CAP_SYS_MODULE"},
		},
		{
			name:     "modprobe fails: modules_disabled = 1",
			host:     debianHost().with("/proc/sys/kernel/modules_disabled", "1\n"),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs': Operation not permitted\n"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantIs:   ErrDisabled,
			wantMsg:  []string{"module loading is disabled", BootConfig},
		},
		{
			name:     "modprobe fails: signature",
			host:     debianHost(),
			kernel:   fakeKernel{runErr: errors.New("exit status 1"), runStderr: "modprobe: ERROR: could not insert 'ip_vs': Key was rejected by service\n"},
			modules:  []string{"ip_vs"},
			wantRuns: [][]string{{"/sbin/modprobe", "ip_vs"}},
			wantIs:   ErrSignatureRejected,
		},
		{
			name:    "not a module name",
			host:    debianHost(),
			modules: []string{"../../tmp/x"},
			wantMsg: []string{`kernel module "../../tmp/x": not a module name`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.kernel
			k.t = t
			k.root = tc.host.write(t)
			m := Loader{Root: k.root, Release: tc.release, Run: k.run, FinitModule: k.finit, Settle: time.Millisecond,
				KernelConfig: configSymbol}
			err := m.Ensure(context.Background(), tc.modules...)

			if !slices.EqualFunc(k.runs, tc.wantRuns, slices.Equal) {
				t.Errorf("ran %q, want %q", k.runs, tc.wantRuns)
			}
			if !slices.Equal(k.finits, tc.wantFinits) {
				t.Errorf("finit_module calls:\n%v\nwant:\n%v", k.finits, tc.wantFinits)
			}
			if len(tc.wantMsg) == 0 && tc.wantIs == nil {
				if err != nil {
					t.Fatalf("Ensure: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Ensure succeeded, want an error")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantIs)
			}
			for _, part := range tc.wantMsg {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, part)
				}
			}
			for _, part := range tc.wantNot {
				if strings.Contains(err.Error(), part) {
					t.Errorf("error:\n%v\nwant it not to contain %q", err, part)
				}
			}
			if strings.HasPrefix(tc.modules[0], "../") {
				return
			}
			var me *Error
			if !errors.As(err, &me) {
				t.Errorf("error is not a *Error: %T", err)
			}
		})
	}
}

// configSymbol names the kernel option of a module as IPVS's do.
func configSymbol(module string) string { return "CONFIG_" + strings.ToUpper(module) }

// Without KernelConfig the fix for a module this kernel does not ship names
// no build option: the loader does not guess one.
func TestNotShippedFixWithoutKernelConfig(t *testing.T) {
	root := debianHost().with("/sbin/modprobe*", "<none>", "/proc/sys/kernel/modprobe", "\n").write(t)
	err := Loader{Root: root, Settle: time.Millisecond}.Ensure(context.Background(), "ip_vs_twos")
	if !errors.Is(err, ErrNotShipped) || strings.Contains(err.Error(), "CONFIG_") || !strings.Contains(err.Error(), "linux-image-"+debianRelease) {
		t.Errorf("Ensure(ip_vs_twos) = %v, want not shipped, the package named and no kernel option", err)
	}
}

func TestEnsureCancelled(t *testing.T) {
	root := debianHost().write(t)
	k := &fakeKernel{t: t, root: root, initstate: "coming"}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Loader{Root: root, Run: k.run, Settle: time.Hour}.Ensure(ctx, "ip_vs")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Ensure with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestCompressedFlagIsTheKernels(t *testing.T) {
	if moduleInitCompressedFile != unix.MODULE_INIT_COMPRESSED_FILE {
		t.Errorf("moduleInitCompressedFile = %#x, unix says %#x", moduleInitCompressedFile, unix.MODULE_INIT_COMPRESSED_FILE)
	}
}
