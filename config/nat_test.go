package config

import (
	"net/netip"
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

// TestFullNATConfig: forward: fullnat with and without snat_address is
// valid on the eBPF data path, a backend port may differ from the
// service's, the backends may share the VIP's network (they answer the
// balancer), and datapath.snat_ports defaults to 1024-32767, below
// Linux's ip_local_port_range.
func TestFullNATConfig(t *testing.T) {
	cfg, err := Parse([]byte(`
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      priority: 150
      virtual_ips: [192.0.2.100/24]
datapath:
  mode: auto
  interfaces: [eth0]
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    protocol: tcp
    scheduler: mh
    forward: fullnat
    snat_address: 192.0.2.100
    backends: [{address: 192.0.2.11, port: 8080, weight: 1}]
  - name: dns
    vip: 192.0.2.100
    port: 53
    protocol: udp
    scheduler: mh
    forward: fullnat
    backends: [{address: 198.51.100.11, port: 5353, weight: 1}]
`), "fullnat.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Services[0].SNATAddress; got != netip.MustParseAddr("192.0.2.100") {
		t.Errorf("snat_address %s, want 192.0.2.100", got)
	}
	if got := cfg.Services[1].SNATAddress; got.IsValid() {
		t.Errorf("snat_address %s, want none (the outgoing interface's)", got)
	}
	for _, s := range cfg.Services {
		if got := ServiceDatapath(cfg.Datapath.Mode, "", s); got != "ebpf" {
			t.Errorf("service %s on %s, want ebpf", s.Name, got)
		}
	}
	if first, last, ok := cfg.Datapath.SNATPortRange(); !ok || first != 1024 || last != 32767 {
		t.Errorf("snat_ports %d-%d (%v), want 1024-32767", first, last, ok)
	}
	for _, c := range []struct {
		in          string
		first, last int
		ok          bool
	}{
		{"61000-65535", 61000, 65535, true}, {"5-5", 5, 5, true}, {" 1 - 2 ", 1, 2, true},
		{"0-10", 0, 0, false}, {"10-65536", 0, 0, false}, {"10", 0, 0, false}, {"a-b", 0, 0, false}, {"", 0, 0, false},
	} {
		first, last, ok := Datapath{SNATPorts: c.in}.SNATPortRange()
		if first != c.first || last != c.last || ok != c.ok {
			t.Errorf("%q: %d-%d %v, want %d-%d %v", c.in, first, last, ok, c.first, c.last, c.ok)
		}
	}
}
