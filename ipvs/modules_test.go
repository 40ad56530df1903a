package ipvs

import (
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

func TestKernelConfig(t *testing.T) {
	for in, want := range map[string]string{
		"ip_vs":        "CONFIG_IP_VS",
		"ip_vs_twos":   "CONFIG_IP_VS_TWOS",
		"ip_vs_wlc":    "CONFIG_IP_VS_WLC",
		"libcrc32c":    "",
		"nf_conntrack": "",
	} {
		if got := kernelConfig(in); got != want {
			t.Errorf("kernelConfig(%q) = %q, want %q", in, got, want)
		}
	}
	if l := hostModules(nil); l.KernelConfig == nil || l.KernelConfig("ip_vs_rr") != "CONFIG_IP_VS_RR" {
		t.Error("hostModules does not name IPVS's kernel options")
	}
}
