package ipvs

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNeeded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		scheds []string
		want   []string
	}{
		{"no services", nil, []string{"ip_vs"}},
		{"one scheduler", []string{"rr"}, []string{"ip_vs", "ip_vs_rr"}},
		{"first-use order, each once", []string{"wrr", "mh", "wrr", "lc", "mh"}, []string{"ip_vs", "ip_vs_wrr", "ip_vs_mh", "ip_vs_lc"}},
		{"every scheduler", schedulers, append([]string{"ip_vs"}, prefixed(schedulers)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Needed(tc.scheds)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Needed(%q) = %q, want %q", tc.scheds, got, tc.want)
			}
		})
	}
}

func prefixed(s []string) []string {
	var out []string
	for _, x := range s {
		out = append(out, "ip_vs_"+x)
	}
	return out
}

func TestNeededUnknownScheduler(t *testing.T) {
	_, err := Needed([]string{"rr", "roundrobin"})
	if err == nil || !strings.Contains(err.Error(), `"roundrobin"`) || !strings.Contains(err.Error(), "wrr") {
		t.Errorf("Needed(roundrobin) error = %v, want it to name the scheduler and the choices", err)
	}
}

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

func TestModnameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/net/netfilter/ipvs/ip_vs.ko":       "ip_vs",
		"kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz": "ip_vs_rr",
		"kernel/drivers/net/dummy.ko.zst":          "dummy",
		"kernel/drivers/hid/hid-generic.ko.gz":     "hid_generic",
		"/opt/extra/my-mod.ko":                     "my_mod",
	} {
		if got := modnameFromPath(in); got != want {
			t.Errorf("modnameFromPath(%q) = %q, want %q", in, got, want)
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
	d, err := parseModulesDep(strings.NewReader(debianDep))
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
	d, err := parseModulesDep(strings.NewReader(`a.ko: b.ko
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

func TestParseModulesDepMalformed(t *testing.T) {
	_, err := parseModulesDep(strings.NewReader("kernel/a.ko:\nkernel/b.ko kernel/a.ko\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error = %v, want one naming line 2", err)
	}
}

func TestModuleErrorMessage(t *testing.T) {
	err := error(&ModuleError{
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
	var me *ModuleError
	if !errors.As(err, &me) || me.Module != "nf_conntrack" {
		t.Errorf("errors.As: %+v", me)
	}
}
