package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
)

// TestCheckSaysDatapath: `halb check` names the data path each service
// takes: with mode auto a NAT service runs on eBPF like the others, and
// only an IPVS-only scheduler runs on IPVS beside it. (Its interface is
// on no host, so that whatever this host routes the backend through is
// a warning, not TestCheckRefusesNATBackendOffInterfaces' problem.)
func TestCheckSaysDatapath(t *testing.T) {
	file := filepath.Join(t.TempDir(), "halb.yaml")
	cfg := `
datapath:
  interfaces: [halbnowhere0]
services:
  - {name: web, vip: 192.0.2.100, port: 80, protocol: tcp, scheduler: mh, forward: nat,
     backends: [{address: 198.51.100.11, port: 8080, weight: 1}], health_check: {type: none}}
  - {name: api, vip: 192.0.2.100, port: 81, protocol: tcp, scheduler: wlc, forward: nat,
     backends: [{address: 198.51.100.11, port: 8081, weight: 1}], health_check: {type: none}}
`
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("halb check = %d, want 0\n%s", code, errs)
	}
	for _, want := range []string{`(?m)^web +192\.0\.2\.100:80/tcp +mh +nat +ebpf `, `(?m)^api +192\.0\.2\.100:81/tcp +wlc +nat +ipvs `} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("summary does not match %s:\n%s", want, out)
		}
	}
}

// TestProbeServicePaths: `halb probe` puts a NAT service on the eBPF
// data path the probe chose, an IPVS-only scheduler with mode auto on
// IPVS, and every service on IPVS where the probe chose it.
func TestProbeServicePaths(t *testing.T) {
	cfg := &config.Config{Datapath: config.Datapath{Mode: config.ModeAuto}, Services: []config.Service{
		{Name: "web", Forward: "nat", Scheduler: "mh"},
		{Name: "api", Forward: "nat", Scheduler: "wlc"},
	}}
	for mode, want := range map[string][]servicePath{
		config.ModeTC:   {{"web", "nat", "tc"}, {"api", "nat", "ipvs"}},
		config.ModeIPVS: {{"web", "nat", "ipvs"}, {"api", "nat", "ipvs"}},
	} {
		if got := servicePaths(cfg, loader.Decision{Mode: mode}); !slices.Equal(got, want) {
			t.Errorf("chosen %s: %v, want %v", mode, got, want)
		}
	}
}

// On a host with every one of datapath.interfaces, a forward: nat or
// fullnat backend that the host routes through another interface is a
// problem: `halb check` exits 2 naming the backend's field, its line, the
// interface and the fix. Where one of datapath.interfaces is missing (the
// file may be another host's) it is a warning; a backend routed through
// one of them, and a NAT service IPVS takes, are neither.
func TestCheckRefusesNATBackendOffInterfaces(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	for name, addr := range map[string]string{"eth0": "192.0.2.1/24", "eth1": "198.51.100.1/24"} {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(addr)
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "halb.yaml")
	write := func(interfaces string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(`datapath:
  interfaces: `+interfaces+`
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    forward: nat
    backends: [{address: 198.51.100.11, port: 8080}]
  - name: full
    vip: 192.0.2.100
    port: 81
    forward: fullnat
    backends: [{address: 198.51.100.12, port: 8080}]
  - name: viaipvs
    vip: 192.0.2.100
    port: 82
    forward: nat
    scheduler: wlc
    backends: [{address: 198.51.100.13, port: 8080}]
  - name: near
    vip: 192.0.2.100
    port: 83
    forward: nat
    backends: [{address: 192.0.2.11, port: 8080}]
`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	lines := map[int]string{8: "services[0].backends[0].address", 13: "services[1].backends[0].address"}
	want := func(out, prefix string) {
		t.Helper()
		for line, path := range lines {
			re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + fmt.Sprintf(":%d: ", line) + regexp.QuoteMeta(path) + `: ` + prefix +
				`this host routes 198\.51\.100\.1[12] through eth1, which is not in datapath\.interfaces: .*; add eth1 to datapath\.interfaces, or route 198\.51\.100\.1[12] through one of them`)
			if !re.MatchString(out) {
				t.Errorf("no %q line for %s at line %d:\n%s", prefix, path, line, out)
			}
		}
		for _, other := range []string{"services[2]", "services[3]"} {
			if strings.Contains(out, other) {
				t.Errorf("a line about %s (an IPVS service, a backend on eth0):\n%s", other, out)
			}
		}
	}

	write("[eth0]")
	code, out, errs := checkIn(t, ns, file)
	if code != exitBadConfig {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitBadConfig, out, errs)
	}
	want(errs, "")
	if !strings.Contains(errs, "2 problem(s)") {
		t.Errorf("stderr does not count 2 problems:\n%s", errs)
	}

	write("[eth0, eth9]") // eth9 is not here
	code, out, errs = checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("with eth9 missing: exit %d, want 0\n%s%s", code, out, errs)
	}
	want(out, `warning: `)

	write("[eth0, eth1]")
	code, out, errs = checkIn(t, ns, file)
	if code != exitOK || strings.Contains(out, "datapath.interfaces") {
		t.Errorf("with eth1 in datapath.interfaces: exit %d, want 0 and no line about it\n%s%s", code, out, errs)
	}
}
