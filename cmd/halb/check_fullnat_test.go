package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// `halb check` names the field of each host fact forward: fullnat needs
// and this host lacks: an snat_address that is neither this host's nor a
// VIP of the file's VRRP instances is a problem (exit 2) on the file's
// host (every one of datapath.interfaces is here), a warning where one is
// missing; snat_ports overlapping the host's ip_local_port_range
// (32768-60999 in a fresh namespace) is a warning. A VIP as the
// snat_address draws nothing.
func TestCheckWarnsFullNATHostFacts(t *testing.T) {
	ns := netnstest.New(t) // loopback only
	file := filepath.Join(t.TempDir(), "fullnat.yaml")
	write := func(interfaces string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(`
vrrp:
  instances:
    - {name: VI_BACK, interface: lo, vrid: 52, virtual_ips: [203.0.113.1/24]}
datapath:
  interfaces: `+interfaces+`
  snat_ports: 30000-40000
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    forward: fullnat
    snat_address: 198.51.100.1
    backends: [{address: 203.0.113.11, port: 8080}]
  - name: api
    vip: 192.0.2.100
    port: 443
    forward: fullnat
    snat_address: 203.0.113.1
    backends: [{address: 203.0.113.12, port: 8443}]
`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want := func(out string, lines ...fileLine) {
		t.Helper()
		for _, w := range lines {
			re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + `:` + w.line + `: ` + regexp.QuoteMeta(w.text))
			if !re.MatchString(out) {
				t.Errorf("no line FILE:%s: %s ...:\n%s", w.line, w.text, out)
			}
		}
		if regexp.MustCompile(`services\[1\]\.snat_address`).MatchString(out) {
			t.Errorf("a line about a VIP as snat_address:\n%s", out)
		}
	}

	write("[lo, eth9]") // eth9 is not here: the file may be another host's
	code, out, errs := checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	want(out, fileLine{"7", `datapath.snat_ports: warning: 30000-40000 overlaps this host's net.ipv4.ip_local_port_range (32768-60999)`},
		fileLine{"13", `services[0].snat_address: warning: 198.51.100.1 is neither an address of this host nor a virtual IP of vrrp`})

	write("[lo]")
	code, out, errs = checkIn(t, ns, file)
	if code != exitBadConfig {
		t.Fatalf("on the file's host: exit %d, want %d\n%s%s", code, exitBadConfig, out, errs)
	}
	want(errs, fileLine{"13", `services[0].snat_address: 198.51.100.1 is neither an address of this host nor a virtual IP of vrrp`})
}

// fileLine is a line `halb check` prints about the file: its number, and
// the text after FILE:LINE: .
type fileLine struct{ line, text string }
