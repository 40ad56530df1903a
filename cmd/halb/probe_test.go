package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/golden"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
)

type probeJSON struct {
	KernelRelease string `json:"kernel_release"`
	BTF           struct {
		Present bool `json:"present"`
	} `json:"btf"`
	XDP struct {
		Supported bool `json:"supported"`
	} `json:"xdp"`
	IPVS struct {
		Family struct {
			Supported bool `json:"supported"`
		} `json:"family"`
		Builtin  bool `json:"builtin"`
		Loadable bool `json:"loadable"`
	} `json:"ipvs"`
	IPVSNeeded []struct {
		Module string `json:"module"`
		State  string `json:"state"`
	} `json:"ipvs_needed"`
	Decision struct {
		Mode   string `json:"mode"`
		Reason string `json:"reason"`
	} `json:"decision"`
}

func probe(t *testing.T, args ...string) probeJSON {
	t.Helper()
	return probeWith(t, filepath.Join(t.TempDir(), "none.yaml"), args...)
}

func probeWith(t *testing.T, config string, args ...string) probeJSON {
	t.Helper()
	code, out, errs := run(t, append([]string{"probe", "--json", "-c", config}, args...)...)
	if code != exitOK {
		t.Fatalf("halb probe exit %d: %s", code, errs)
	}
	var p probeJSON
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("probe --json is not JSON: %v\n%s", err, out)
	}
	return p
}

// On this machine (and CI's): a kernel with BTF and XDP, without IPVS. The
// expectations are derived from the host's files so that a different
// kernel fails loudly only where the probe is wrong.
func TestProbeThisHost(t *testing.T) {
	netnstest.Require(t) // loading programs needs root
	p := probe(t)
	_, btfErr := os.Stat("/sys/kernel/btf/vmlinux")
	if p.BTF.Present != (btfErr == nil) {
		t.Errorf("btf.present = %v, but stat says %v", p.BTF.Present, btfErr)
	}
	_, ipvsErr := os.Stat("/proc/net/ip_vs")
	if ipvsErr != nil && p.IPVS.Family.Supported {
		t.Errorf("IPVS family reported present without /proc/net/ip_vs")
	}
	if btfErr == nil && p.XDP.Supported && (p.Decision.Mode != "xdp" || p.Decision.Reason != "xdp: BTF present, XDP loads") {
		t.Errorf("decision = %+v, want xdp because BTF is present and XDP loads", p.Decision)
	}
	t.Logf("kernel %s: %s", p.KernelRelease, p.Decision.Reason)
}

// A Raspberry Pi kernel, as a tree: no BTF, IPVS shipped as modules.
func TestProbeRootWithoutBTF(t *testing.T) {
	root := piTree(t)
	p := probe(t, "--root", root)
	if p.KernelRelease != "6.6.31+rpt-rpi-v8" || p.BTF.Present {
		t.Errorf("probe read the wrong tree: %+v", p)
	}
	if p.Decision.Mode != "ipvs" || p.Decision.Reason != "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux" {
		t.Errorf("decision = %+v, want ipvs for want of BTF", p.Decision)
	}
	if !p.IPVS.Loadable {
		t.Errorf("ip_vs.ko.xz in modules.dep not seen as loadable: %+v", p.IPVS)
	}

	// configs/pi-ipvs.yaml uses lc and wrr: this kernel ships wrr only.
	p = probeWith(t, "../../configs/pi-ipvs.yaml", "--root", root)
	var got []string
	for _, n := range p.IPVSNeeded {
		got = append(got, n.Module+"="+n.State)
	}
	if want := "ip_vs=loadable ip_vs_lc=missing ip_vs_wrr=loadable"; strings.Join(got, " ") != want {
		t.Errorf("ipvs_needed = %v, want %s", got, want)
	}
}

func piTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"proc/sys/kernel/osrelease": "6.6.31+rpt-rpi-v8\n",
		"proc/mounts":               "/dev/mmcblk0p2 / ext4 rw 0 0\n",
		"proc/self/status":          "Name:\thalb\nCapEff:\t000001ffffffffff\n",
		"lib/modules/6.6.31+rpt-rpi-v8/modules.dep": "kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n" +
			"kernel/net/netfilter/ipvs/ip_vs_wrr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n",
		"lib/modules/6.6.31+rpt-rpi-v8/modules.builtin": "",
	}
	for name, body := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// probeOutputs are fixed probe results, one per kind of host, for the
// golden tests of what `halb probe` prints.
func probeOutputs() map[string]probeOutput {
	allCaps := map[string]bool{"CAP_BPF": true, "CAP_PERFMON": true, "CAP_NET_ADMIN": true,
		"CAP_NET_RAW": true, "CAP_SYS_MODULE": true, "CAP_SYS_ADMIN": true}
	devHost := loader.Report{
		KernelRelease:  "6.18.44-fc-v1272",
		BTF:            loader.BTF{Path: "/sys/kernel/btf/vmlinux", Present: true},
		BPFFS:          loader.BPFFS{Mounted: true, Mounts: []string{"/sys/fs/bpf"}},
		XDP:            loader.Feature{Supported: true},
		SchedCLS:       loader.Feature{Supported: true},
		XDPLink:        loader.Feature{Supported: true},
		TCX:            loader.Feature{Supported: true},
		MmapableArrays: loader.Feature{Supported: true},
		Capabilities:   loader.Capabilities{CapEff: "000001fffeffffff", Effective: allCaps},
		IPVS: loader.IPVS{
			Family:           loader.Feature{Error: "resolve generic netlink family IPVS: not registered, ip_vs is not loaded (no such file or directory)"},
			Schedulers:       []string{},
			LoadedSchedulers: []string{},
			Problems:         []string{"no /lib/modules/6.18.44-fc-v1272: modules not installed"},
		},
	}
	withIPVS := devHost
	withIPVS.IPVS = loader.IPVS{
		Family:           devHost.IPVS.Family,
		Loadable:         true,
		ModulesDir:       "/lib/modules/6.18.44-fc-v1272",
		Schedulers:       []string{"lc", "mh", "rr", "wrr"},
		LoadedSchedulers: []string{},
	}
	return map[string]probeOutput{
		// A Raspberry Pi: no BTF, IPVS as modules, a config whose services
		// need a scheduler the kernel does not ship.
		"pi": {
			Report: loader.Report{
				KernelRelease: "6.6.31+rpt-rpi-v8",
				BTF:           loader.BTF{Path: "/sys/kernel/btf/vmlinux"},
				BPFFS:         loader.BPFFS{Mounts: []string{}},
				XDP:           loader.Feature{Error: "load XDP program: not supported"},
				SchedCLS:      loader.Feature{Supported: true},
				XDPLink:       loader.Feature{Error: "attach XDP link to lo: not supported"},
				TCX:           loader.Feature{Error: "attach tcx link to lo: not supported"},
				Capabilities:  loader.Capabilities{CapEff: "000001ffffffffff", Effective: allCaps},
				IPVS: loader.IPVS{
					Family:           loader.Feature{Error: "resolve generic netlink family IPVS: not registered, ip_vs is not loaded (no such file or directory)"},
					Loadable:         true,
					ModulesDir:       "/lib/modules/6.6.31+rpt-rpi-v8",
					Schedulers:       []string{"rr", "wrr"},
					LoadedSchedulers: []string{},
				},
			},
			ConfiguredMode: "auto",
			IPVSNeeded: []moduleNeed{
				{Module: "ip_vs", State: "loadable"},
				{Module: "ip_vs_lc", State: "missing"},
				{Module: "ip_vs_wrr", State: "loadable"},
			},
			Decision: loader.Decision{Mode: "ipvs", Reason: "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"},
			Services: []servicePath{{Service: "k8s-api", Forward: "nat", Datapath: "ipvs"}, {Service: "ingress", Forward: "nat", Datapath: "ipvs"}},
		},
		// A server: BTF, two bpffs mounts, ip_vs built in and loaded, a
		// container's capabilities.
		"server": {
			Report: loader.Report{
				KernelRelease: "6.12.0-1-amd64",
				BTF:           loader.BTF{Path: "/sys/kernel/btf/vmlinux", Present: true},
				BPFFS:         loader.BPFFS{Mounted: true, Mounts: []string{"/sys/fs/bpf", "/run/halb bpf"}},
				XDP:           loader.Feature{Supported: true},
				SchedCLS:      loader.Feature{Supported: true},
				XDPLink:       loader.Feature{Error: "unshare network namespace for the probe (needs CAP_SYS_ADMIN): operation not permitted"},
				TCX:           loader.Feature{Supported: true},
				Capabilities: loader.Capabilities{CapEff: "00000000a80425fb", Effective: map[string]bool{
					"CAP_BPF": false, "CAP_PERFMON": false, "CAP_NET_ADMIN": false,
					"CAP_NET_RAW": true, "CAP_SYS_MODULE": false, "CAP_SYS_ADMIN": false}},
				IPVS: loader.IPVS{
					Family:           loader.Feature{Supported: true},
					Loaded:           true,
					Builtin:          true,
					ModulesDir:       "/lib/modules/6.12.0-1-amd64",
					Schedulers:       []string{"mh", "rr", "wrr"},
					LoadedSchedulers: []string{"rr"},
				},
			},
			ConfiguredMode: "xdp",
			IPVSNeeded:     []moduleNeed{},
			Services:       []servicePath{{Service: "web", Forward: "nat", Datapath: "xdp"}},
			Decision: loader.Decision{Mode: "xdp", Reason: "configured: datapath.mode: xdp", Warnings: []string{
				"XDP programs load but the XDP bpf_link check failed: unshare network namespace for the probe (needs CAP_SYS_ADMIN): operation not permitted"}},
		},
		// A host like the development machine with configs/halb.yaml: BTF
		// and XDP, no IPVS modules at all. Every service runs on XDP, so
		// the IPVS modules are what that path would need, under its
		// heading, not a blocker under the choice.
		"xdp": {
			Report:         devHost,
			ConfiguredMode: "auto",
			IPVSNeeded:     []moduleNeed{{"ip_vs", "missing"}, {"ip_vs_mh", "missing"}, {"ip_vs_sh", "missing"}},
			Decision:       loader.Decision{Mode: "xdp", Reason: "xdp: BTF present, XDP loads"},
			Services:       []servicePath{{"web", "dr", "xdp"}, {"web6", "tun", "xdp"}, {"dns", "dr", "xdp"}},
		},
		// Mode auto on the same host with IPVS modules shipped, and an
		// IPVS-only scheduler: web on XDP, db (lc) on IPVS beside it, so
		// the IPVS path is in use and lists what db needs.
		"mixed": {
			Report:         withIPVS,
			ConfiguredMode: "auto",
			IPVSNeeded:     []moduleNeed{{Module: "ip_vs", State: "loadable"}, {Module: "ip_vs_lc", State: "loadable"}},
			Decision:       loader.Decision{Mode: "xdp", Reason: "xdp: BTF present, XDP loads"},
			Services:       []servicePath{{Service: "web", Forward: "dr", Datapath: "xdp"}, {Service: "db", Forward: "nat", Datapath: "ipvs"}},
		},
		// Nothing readable: every section says why.
		"unknown": {
			Report: loader.Report{
				KernelReleaseError: "read kernel release: open /proc/sys/kernel/osrelease: no such file or directory",
				BTF:                loader.BTF{Path: "/sys/kernel/btf/vmlinux", Error: "check kernel BTF: permission denied"},
				BPFFS:              loader.BPFFS{Mounts: []string{}, Error: "read mounts: open /proc/mounts: no such file or directory"},
				XDP:                loader.Feature{Error: "load XDP program: operation not permitted"},
				SchedCLS:           loader.Feature{Error: "load SchedCLS program: operation not permitted"},
				XDPLink:            loader.Feature{Error: "load XDP program: operation not permitted"},
				TCX:                loader.Feature{Error: "load SchedCLS program: operation not permitted"},
				Capabilities: loader.Capabilities{Effective: map[string]bool{},
					Error: "read capabilities: open /proc/self/status: no such file or directory"},
				IPVS: loader.IPVS{
					Family:           loader.Feature{Error: "resolve generic netlink family IPVS: not registered"},
					Schedulers:       []string{},
					LoadedSchedulers: []string{},
					Problems:         []string{"kernel release unknown: cannot look in /lib/modules"},
				},
			},
			ConfiguredMode: "auto",
			IPVSNeeded:     []moduleNeed{{Module: `scheduler "roundrobin": IPVS has no such scheduler (use one of mh, rr)`, State: "unknown"}},
			Decision: loader.Decision{Mode: "ipvs",
				Reason:   "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux (check kernel BTF: permission denied)",
				Warnings: []string{"IPVS is not usable: first", "second"}},
		},
	}
}

// The table and the JSON `halb probe` prints for fixed probe results (made
// by hand, above) stay byte for byte what the golden files in testdata/
// say: which data path each service takes goes with what runs now, and the
// IPVS modules under the IPVS heading, as what it needs when some service
// runs on it and what it would need when none does.
func TestProbeOutputGolden(t *testing.T) {
	for name, out := range probeOutputs() {
		t.Run(name, func(t *testing.T) {
			var table, js bytes.Buffer
			note := ""
			if name == "pi" {
				note = "datapath.mode auto from /etc/halb/halb.yaml"
			}
			if err := out.writeTable(&table, note); err != nil {
				t.Fatal(err)
			}
			if err := out.writeJSON(&js); err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, filepath.Join("testdata", "probe-"+name+".txt"), table.Bytes())
			golden.Compare(t, filepath.Join("testdata", "probe-"+name+".json"), js.Bytes())
		})
	}
}

func TestWriteFacts(t *testing.T) {
	r := loader.Report{
		KernelRelease: "6.18.1",
		BTF:           loader.BTF{Path: "/sys/kernel/btf/vmlinux", Present: true},
		BPFFS:         loader.BPFFS{Mounted: true, Mounts: []string{"/sys/fs/bpf"}},
		XDP:           loader.Feature{Error: "load XDP program: not supported"},
		SchedCLS:      loader.Feature{Supported: true},
		XDPLink:       loader.Feature{Error: "load XDP program: not supported"},
		TCX:           loader.Feature{Supported: true},
		Capabilities: loader.Capabilities{CapEff: "000001ffffffffff",
			Effective: map[string]bool{"CAP_BPF": true, "CAP_NET_ADMIN": true}},
		IPVS: loader.IPVS{
			Family:           loader.Feature{Error: "resolve generic netlink family IPVS: not registered"},
			Loadable:         true,
			ModulesDir:       "/lib/modules/6.18.1",
			Schedulers:       []string{"mh", "rr", "wrr"},
			LoadedSchedulers: []string{},
		},
	}
	d := loader.Decision{Mode: config.ModeTC, Reason: "tc: because", Warnings: []string{"first", "second"}}
	var buf bytes.Buffer
	if err := writeFacts(&buf, probeOutput{Report: r, Decision: d}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, line := range []string{
		"kernel                6.18.1\n",
		"BTF                   yes  /sys/kernel/btf/vmlinux\n",
		"bpffs                 yes  /sys/fs/bpf\n",
		"XDP program           no: load XDP program: not supported\n",
		"sched_cls program     yes\n",
		"XDP link              no: load XDP program: not supported\n",
		"tcx link              yes\n",
		"capabilities          CAP_BPF CAP_NET_ADMIN  (CapEff 000001ffffffffff)\n",
		"missing capabilities  CAP_PERFMON CAP_NET_RAW CAP_SYS_MODULE CAP_SYS_ADMIN\n",
		"datapath              tc\n",
		"reason                tc: because\n",
		"warning               first\nwarning               second\n",
		// What the IPVS path would need comes after what runs now,
		// under its own heading and in its own columns.
		"\nIPVS data path (not in use here): what it would need\n" +
			"IPVS family      no: resolve generic netlink family IPVS: not registered\n" +
			"ip_vs            not loaded, not built in, module available\n" +
			"IPVS schedulers  mh rr wrr  (loaded: none)\n" +
			"IPVS usable      yes\n",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("table lacks %q:\n%s", line, out)
		}
	}
}

// The IPVS modules the probe lists are those of the services that run on
// IPVS here, or all services' when none does.
func TestIPVSServices(t *testing.T) {
	cfg := &config.Config{Services: []config.Service{{Name: "web", Scheduler: "mh"}, {Name: "db", Scheduler: "lc"}, {Name: "dns", Scheduler: "sh"}}}
	names := func(ss []config.Service) string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		mode, chosen, want string
	}{
		{config.ModeAuto, config.ModeXDP, "db"},
		{config.ModeXDP, config.ModeXDP, "web db dns"},
		{config.ModeAuto, config.ModeIPVS, "web db dns"},
	} {
		cfg.Datapath.Mode = c.mode
		if got := names(ipvsServices(cfg, servicePaths(cfg, loader.Decision{Mode: c.chosen}))); got != c.want {
			t.Errorf("mode %s, chosen %s: modules of %q, want those of %q", c.mode, c.chosen, got, c.want)
		}
	}
	if got := ipvsServices(nil, nil); got != nil {
		t.Errorf("no config: %v, want none", got)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteFactsError(t *testing.T) {
	r := loader.Report{BTF: loader.BTF{Present: true}, BPFFS: loader.BPFFS{Mounted: true}}
	err := writeFacts(failingWriter{}, probeOutput{Report: r})
	if err == nil || err.Error() != "write probe table: disk full" {
		t.Fatalf("writeFacts to a failing writer = %v, want the write error", err)
	}
}

// A probe that could read nothing says in the table that the release is
// unknown.
func TestWriteFactsEmptyRoot(t *testing.T) {
	r := loader.Host{Root: t.TempDir(), Kernel: halbtest.NoKernel{}}.Probe()
	var buf bytes.Buffer
	if err := writeFacts(&buf, probeOutput{Report: r, Decision: loader.Choose(config.ModeAuto, r)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "unknown: read kernel release: ") {
		t.Errorf("table does not say the release is unknown:\n%s", buf.String())
	}
}
