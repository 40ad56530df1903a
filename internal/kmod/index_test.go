package kmod

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"ip_vs":                 "ip_vs",
		"ip-vs":                 "ip_vs",
		"ip_vs-rr":              "ip_vs_rr",
		"nf_conntrack":          "nf_conntrack",
		"":                      "",
		"../ip_vs":              "",
		"ip_vs.ko":              "",
		"ip vs":                 "",
		strings.Repeat("a", 56): "",
	} {
		got, err := moduleName(in)
		if want == "" {
			if err == nil {
				t.Errorf("moduleName(%q) = %q, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("moduleName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestNameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/netfilter/ipvs/ip_vs.ko":        "ip_vs",
		"kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz":  "ip_vs_rr",
		"kernel/net/netfilter/ipvs/ip_vs_mh.ko.zst": "ip_vs_mh",
		"kernel/net/netfilter/ipvs/ip_vs_sh.ko.gz":  "ip_vs_sh",
		"kernel/drivers/net/dummy.ko.zst":           "dummy",
		"kernel/drivers/hid/hid-generic.ko.gz":      "hid_generic",
		"kernel/drivers/net/some-driver.ko":         "some_driver",
		"/opt/extra/my-mod.ko":                      "my_mod",
		"  kernel/x/y.ko  ":                         "y",
		"kernel/x/notamodule.txt":                   "",
		"kernel/x/y.ko.bz2":                         "",
		"":                                          "",
		".ko":                                       "",
	} {
		if got := NameFromPath(in); got != want {
			t.Errorf("NameFromPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// debianDep is modules.dep as Debian 12's 6.1 kernel writes it for IPVS:
// plain .ko files, each line listing all dependencies, the one to load
// first last.
const debianDep = `kernel/lib/libcrc32c.ko:
kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko:
kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko:
kernel/net/netfilter/nf_conntrack.ko: kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs_wrr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/ipvs/ip_vs_mh.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/lib/libcrc32c.ko
kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko
kernel/net/ipv4/tunnel4.ko:
kernel/net/ipv4/ip_tunnel.ko:
`

func TestLoadOrder(t *testing.T) {
	d, err := ParseDep(strings.NewReader(debianDep))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		module string
		want   []string
	}{
		{"libcrc32c", []string{"libcrc32c"}},
		{"ip_vs", []string{"libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs"}},
		{"ip_vs_rr", []string{"libcrc32c", "nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "ip_vs", "ip_vs_rr"}},
		{"ipip", []string{"ip_tunnel", "tunnel4", "ipip"}},
	} {
		steps, ok := d.loadOrder(tc.module)
		if !ok {
			t.Errorf("loadOrder(%s): not found", tc.module)
			continue
		}
		var got []string
		for _, s := range steps {
			got = append(got, s.name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("loadOrder(%s) = %q, want %q", tc.module, got, tc.want)
		}
	}
	if _, ok := d.loadOrder("ip_vs_twos"); ok {
		t.Error("loadOrder(ip_vs_twos) found a module modules.dep does not list")
	}
}

// A modules.dep that lists only direct dependencies still loads in order.
func TestLoadOrderDirectDependenciesOnly(t *testing.T) {
	d, err := ParseDep(strings.NewReader(`a.ko: b.ko
b.ko: c.ko d.ko
c.ko: d.ko
d.ko:
`))
	if err != nil {
		t.Fatal(err)
	}
	steps, _ := d.loadOrder("a")
	var got []string
	for _, s := range steps {
		got = append(got, s.file)
	}
	if want := []string{"d.ko", "c.ko", "b.ko", "a.ko"}; !slices.Equal(got, want) {
		t.Errorf("loadOrder(a) = %q, want %q", got, want)
	}
}

func TestParseDepMalformed(t *testing.T) {
	for _, in := range []string{
		"kernel/a.ko:\nkernel/b.ko kernel/a.ko\n",
		"kernel/a.ko:\n: kernel/a.ko\n",
	} {
		_, err := ParseDep(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("ParseDep(%q) error = %v, want one naming line 2", in, err)
		}
	}
}

// A line whose file is no module halb could load is skipped, as both
// readers before ParseDep did (the probe's and the IPVS loader's): one
// vendor's odd file must not make modules.dep unreadable.
func TestParseDepSkipsNonModules(t *testing.T) {
	for _, odd := range []string{
		"extra/vendor_blob.ko.bz2:",
		"kernel/notamodule.txt: kernel/a.ko",
		"extra/vendor_blob.ko.bz2: kernel/a.ko",
		"firmware/:",
	} {
		in := "kernel/a.ko:\n" + odd + "\nkernel/b-c.ko.xz: kernel/a.ko\n"
		d, err := ParseDep(strings.NewReader(in))
		if err != nil {
			t.Errorf("ParseDep with %q: %v, want the line skipped", odd, err)
			continue
		}
		want := Dep{"a": {Path: "kernel/a.ko"}, "b_c": {Path: "kernel/b-c.ko.xz", Deps: []string{"kernel/a.ko"}}}
		if !maps.EqualFunc(d, want, func(x, y DepEntry) bool { return x.Path == y.Path && slices.Equal(x.Deps, y.Deps) }) {
			t.Errorf("ParseDep with %q = %v, want %v", odd, d, want)
		}
	}
}

func TestParseBuiltin(t *testing.T) {
	b, err := ParseBuiltin(strings.NewReader("kernel/net/netfilter/ipvs/ip_vs.ko\n\n  kernel/drivers/hid/hid-generic.ko\nnot a module\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"ip_vs": true, "hid_generic": true}; !maps.Equal(b, want) {
		t.Errorf("ParseBuiltin = %v, want %v", b, want)
	}
}

func TestErrorMessage(t *testing.T) {
	err := error(&Error{
		Module: "nf_conntrack", NeededBy: "ip_vs", Release: "6.1.0-18-amd64",
		Step: "finit_module", Path: "/lib/modules/6.1.0-18-amd64/kernel/net/netfilter/nf_conntrack.ko",
		Err: errors.Join(errors.New("operation not permitted"), ErrNoPermission), Fix: "run halb as root",
	})
	want := "load kernel module nf_conntrack (needed by ip_vs) for kernel 6.1.0-18-amd64: finit_module /lib/modules/6.1.0-18-amd64/kernel/net/netfilter/nf_conntrack.ko: operation not permitted\nnot permitted to load kernel modules; run halb as root"
	if err.Error() != want {
		t.Errorf("message:\n%s\nwant:\n%s", err, want)
	}
	if !errors.Is(err, ErrNoPermission) {
		t.Error("errors.Is(err, ErrNoPermission) = false")
	}
	var me *Error
	if !errors.As(err, &me) || me.Module != "nf_conntrack" {
		t.Errorf("errors.As: %+v", me)
	}
}

// debianSoftdep is an excerpt of Debian 12's modules.softdep (6.1.0-56),
// with its odd lines: words before any pre: (cifs), one line per soft
// dependency (ksmbd), post:, a name with a colon.
const debianSoftdep = `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep cifs gcm
softdep cifs ccm
softdep ksmbd pre: crc32
softdep ksmbd pre: gcm
softdep libcrc32c pre: crc32c
softdep ipmi_msghandler post: ipmi_devintf
softdep intel_lpss pre: platform:idma64
`

func TestParseModulesSoftdep(t *testing.T) {
	d, err := parseSoftdep(strings.NewReader(debianSoftdep + `softdep a-b post: c pre: d e post: f
softdep g pre: h pre: h
not a softdep line
softdep i
`))
	if err != nil {
		t.Fatal(err)
	}
	want := modulesSoftdep{
		"ext4":            {pre: []string{"crypto-crc32c"}},
		"ksmbd":           {pre: []string{"crc32", "gcm"}},
		"libcrc32c":       {pre: []string{"crc32c"}},
		"ipmi_msghandler": {post: []string{"ipmi_devintf"}},
		"intel_lpss":      {pre: []string{"platform:idma64"}},
		"a_b":             {pre: []string{"d", "e"}, post: []string{"c", "f"}},
		"g":               {pre: []string{"h"}},
	}
	if len(d) != len(want) {
		t.Errorf("parsed %d modules, want %d: %v", len(d), len(want), d)
	}
	for name, w := range want {
		if got := d[name]; !slices.Equal(got.pre, w.pre) || !slices.Equal(got.post, w.post) {
			t.Errorf("%s: pre %q post %q, want pre %q post %q", name, got.pre, got.post, w.pre, w.post)
		}
	}
}

// debianAlias is the crc32c part of Debian 12's modules.alias, and a PCI
// alias whose pattern has a bracket and whose module's name has dashes.
const debianAlias = `# Aliases extracted from modules themselves.
alias crypto-crc32c-intel crc32c_intel
alias crc32c-intel crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias crypto-crc32c-generic crc32c_generic
alias crc32c-generic crc32c_generic
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias pci:v00008086d*sv*sd*bc0[Cc]sc80i00* intel-lpss-pci
`

func TestResolveSoft(t *testing.T) {
	aliases, err := parseAlias(strings.NewReader(debianAlias))
	if err != nil {
		t.Fatal(err)
	}
	dep, err := ParseDep(strings.NewReader(debianDep + `kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
`))
	if err != nil {
		t.Fatal(err)
	}
	builtin := map[string]bool{"ipv6": true}
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"crc32c", []string{"crc32c_intel", "crc32c_generic"}}, // every module with the alias, as modprobe
		{"crypto-crc32c", []string{"crc32c_intel", "crc32c_generic"}},
		{"crypto_crc32c", []string{"crc32c_intel", "crc32c_generic"}},
		{"crc32c_generic", []string{"crc32c_generic"}}, // a module name: that module alone
		{"crc32c-intel", []string{"crc32c_intel"}},
		{"ipv6", []string{"ipv6"}}, // built in: nothing to load, and nothing missing
		{"cpu:type:x86,ven0000fam0006mod003F:feature:,0094,", []string{"crc32c_intel"}},
		{"pci:v00008086d00001234sv0sd0bc0Csc80i00", []string{"intel_lpss_pci"}},
		{"crc32", nil},
	} {
		if got := resolveSoft(tc.name, dep, builtin, aliases); !slices.Equal(got, tc.want) {
			t.Errorf("resolveSoft(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestAliasNormalise(t *testing.T) {
	for in, want := range map[string]string{
		"crc32c-intel":        "crc32c_intel",
		"crypto-crc32c":       "crypto_crc32c",
		"pci:v[0-9]*-x":       "pci:v[0-9]*_x",
		"a[b-c]d-e[-]":        "a[b-c]d_e[-]",
		"usb:v1D6Bp0001d*dc*": "usb:v1D6Bp0001d*dc*",
	} {
		if got := aliasNormalise(in); got != want {
			t.Errorf("aliasNormalise(%q) = %q, want %q", in, got, want)
		}
	}
}
