package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
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
