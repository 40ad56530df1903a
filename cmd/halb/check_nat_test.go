package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/loader"
)

// TestCheckSaysDatapath: `halb check` names the data path each service
// takes: with mode auto a NAT service runs on eBPF like the others, and
// only an IPVS-only scheduler runs on IPVS beside it.
func TestCheckSaysDatapath(t *testing.T) {
	file := filepath.Join(t.TempDir(), "halb.yaml")
	cfg := `
datapath:
  interfaces: [eth0]
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
