package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// On a host with no IPv4 address and no network the BGP peer is on,
// `halb check` warns, naming each field, that halb run would refuse the
// bgp section there (no router ID to take, BFD to a peer on no connected
// network), and exits 0: the file is valid, and may be meant for another
// host.
func TestCheckWarnsBGPHostFacts(t *testing.T) {
	ns := netnstest.New(t) // loopback only
	file := filepath.Join(t.TempDir(), "bgp.yaml")
	if err := os.WriteFile(file, []byte(`
bgp:
  asn: 65001
  peers:
    - address: 192.0.2.254
      asn: 65000
      bfd: {}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	for _, w := range []struct{ line, text string }{
		{"2", `bgp.router_id: warning: halb run refuses this on this host: this host has no IPv4 address`},
		{"7", `bgp.peers[0].bfd: warning: halb run refuses this on this host: 192.0.2.254 is on no network directly connected`},
	} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + `:` + w.line + `: ` + regexp.QuoteMeta(w.text))
		if !re.MatchString(out) {
			t.Errorf("no warning FILE:%s: %s ...:\n%s", w.line, w.text, out)
		}
	}
}
