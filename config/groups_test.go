package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// A service group (listen) and what it refuses (issue 19: keepalived's
// virtual_server_group).
func TestListen(t *testing.T) {
	const vipPort = "vip: 192.0.2.100\n    port: 80\n"
	listen := func(s string) []string { return []string{vipPort, "listen: " + s + "\n"} }
	// the base service's sorry backend and backend take port 80
	runProblemCases(t, []problemCase{
		{"two pairs", listen(`["192.0.2.100:80", "192.0.2.101:80"]`), "", ""},
		{"one pair", listen(`["192.0.2.100:80"]`), "", ""},
		{"with vip", []string{"port: 80\n", "listen: [\"192.0.2.101:80\"]\n"}, "services[0].vip", "is given with listen"},
		{"with port", []string{"vip: 192.0.2.100\n", "listen: [\"192.0.2.101:80\"]\n"}, "services[0].port", "is given with listen"},
		{"no port", listen(`["192.0.2.100"]`), "services[0].listen[0]", `"192.0.2.100" is not ADDRESS:PORT`},
		{"port 0", listen(`["192.0.2.100:0"]`), "services[0].listen[0]", "needs a port from 1 to 65535"},
		{"twice", listen(`["192.0.2.100:80", "192.0.2.100:80"]`), "services[0].listen[1]", "192.0.2.100:80 is listed twice"},
		{"families", listen(`["192.0.2.100:80", "[2001:db8::1]:80"]`), "services[0].listen[1]", "a service group serves one family"},
		{"backend family", listen(`["[2001:db8::1]:80"]`), "services[0].backends[0].address", "198.51.100.11 is IPv4 but the vip is IPv6"},
		{"loopback", listen(`["127.0.0.1:80"]`), "services[0].listen[0]", "loopback"},
		{"dr other port", listen(`["192.0.2.100:80", "192.0.2.101:8080"]`), "services[0].backends[0].port", "differs from the port of listen[1] 192.0.2.101:8080"},
		{"pair served twice", append(listen(`["192.0.2.101:80"]`), "", `  - name: web2
    listen: ["192.0.2.101:80"]
    backends: [{address: 198.51.100.12}]
`), "services[1]", "192.0.2.101 port 80/tcp is already services[0]"},
		{"backend is a pair's vip", append(listen(`["192.0.2.100:80", "192.0.2.101:80"]`), "address: 198.51.100.11", "address: 192.0.2.101"), "services[0].backends[0].address", "is the service's own vip"},
		{"nat group on ebpf", append(listen(`["192.0.2.100:80", "192.0.2.101:80"]`), "persistence: 0s", "persistence: 0s\n    forward: nat"), "services[0].listen", "could not tell which VIP:port they go back as"},
		{"fullnat group on ebpf", append(listen(`["192.0.2.100:80", "192.0.2.101:80"]`), "persistence: 0s", "persistence: 0s\n    forward: fullnat"), "services[0].listen", "forward: fullnat on the eBPF data path"},
		{"nat group of one pair", append(listen(`["192.0.2.100:80"]`), "persistence: 0s", "persistence: 0s\n    forward: nat", "198.51.100.11, port: 80", "203.0.113.11, port: 80", `"198.51.100.99:80"`, `"203.0.113.99:80"`), "", ""},
		{"nat group on ipvs", append(listen(`["192.0.2.100:80", "192.0.2.101:8080"]`), "persistence: 0s", "persistence: 0s\n    forward: nat", "interfaces: [eth0]", "mode: ipvs", "198.51.100.11, port: 80", "203.0.113.11, port: 80", `"198.51.100.99:80"`, `"203.0.113.99:80"`), "", ""},
		{"announce master, a pair no instance holds", append(listen(`["192.0.2.100:80", "192.0.2.101:80"]`), "persistence: 0s", "persistence: 0s\n    announce: master",
			"", "bgp:\n  asn: 64512\n  peers: [{address: 192.0.2.254, asn: 64513}]\n"), "services[0].announce", "no instance has 192.0.2.101 in its virtual_ips"},
	})
}

// A backend that names no port takes the one port of the listen pairs;
// with several ports it must name one.
func TestListenBackendPort(t *testing.T) {
	group := `datapath: {interfaces: [eth0], mode: ipvs}
services:
  - name: web
    listen: ["192.0.2.100:80", "192.0.2.101:LATER"]
    forward: nat
    backends: [{address: 198.51.100.11}]
`
	cfg, err := Parse([]byte(strings.ReplaceAll(group, "LATER", "80")), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if s.Backends[0].Port != 80 {
		t.Errorf("backend port %d, want the pairs' 80", s.Backends[0].Port)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("192.0.2.101:80")}
	if !slices.Equal(s.Pairs(), want) || !s.HasVIP(want[1].Addr()) || s.HasVIP(netip.MustParseAddr("192.0.2.102")) {
		t.Errorf("pairs = %v", s.Pairs())
	}
	single := Service{VIP: want[0].Addr(), Port: 80}
	if !slices.Equal(single.Pairs(), want[:1]) {
		t.Errorf("a plain service's pairs = %v", single.Pairs())
	}

	_, err = Parse([]byte(strings.ReplaceAll(group, "LATER", "8080")), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "services[0].backends[0].port: a port is required: the service's listen pairs have several ports") {
		t.Errorf("a portless backend of a two-port group: %v", err)
	}
}

// Each pair of a group takes its own records in the eBPF maps.
func TestListenCountsBackendsPerPair(t *testing.T) {
	_, err := Parse([]byte(`datapath: {interfaces: [eth0], max_backends: 4}
services:
  - name: web
    listen: ["192.0.2.100:80", "192.0.2.101:80"]
    backends: [{address: 198.51.100.11}, {address: 198.51.100.12}]
`), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "the services have 4 backends") {
		t.Errorf("2 backends × 2 pairs in maps of 3: %v", err)
	}
}
