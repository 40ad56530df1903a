package config

import (
	"strings"
	"testing"
)

// TestNATOnEBPF: forward: nat is valid on every data path mode, and on
// the eBPF data path a backend address and port may serve two NAT
// services only over different protocols; ServiceDatapath says which
// data path takes each service.
func TestNATOnEBPF(t *testing.T) {
	const head = `
datapath:
  mode: %s
  interfaces: [eth0]
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: %s
    forward: nat
    backends: [{address: 198.51.100.11, port: 8080, weight: 1}]
  - name: dns
    vip: 192.0.2.100
    port: 53
    protocol: udp
    scheduler: mh
    forward: nat
    backends: [{address: 198.51.100.11, port: 8080, weight: 1}]
`
	for _, c := range []struct {
		mode, scheduler string
		want            [2]string // each service's data path
	}{
		{ModeXDP, "mh", [2]string{"ebpf", "ebpf"}},
		{ModeTC, "wrr", [2]string{"ebpf", "ebpf"}},
		{ModeAuto, "mh", [2]string{"ebpf", "ebpf"}},
		{ModeAuto, "wlc", [2]string{"ipvs", "ebpf"}},
		{ModeIPVS, "wlc", [2]string{"ipvs", "ipvs"}},
	} {
		cfg, err := Parse([]byte(strings.ReplaceAll(strings.Replace(strings.Replace(head, "%s", c.mode, 1), "%s", c.scheduler, 1), "\t", "  ")), "nat.yaml")
		if err != nil {
			t.Errorf("mode %s, scheduler %s: %v", c.mode, c.scheduler, err)
			continue
		}
		for i, s := range cfg.Services {
			if got := ServiceDatapath(cfg.Datapath.Mode, "", s); got != c.want[i] {
				t.Errorf("mode %s: service %s on %s, want %s", c.mode, s.Name, got, c.want[i])
			}
		}
	}
	if got := ServiceDatapath(ModeAuto, ModeIPVS, Service{Scheduler: "mh"}); got != "ipvs" {
		t.Errorf("auto on a host without BTF: %s, want ipvs", got)
	}
}
