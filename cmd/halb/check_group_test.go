package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// halb check lists a service group on each of its VIP:port pairs, with
// the port its check goes to.
func TestCheckSummaryOfAGroup(t *testing.T) {
	file := filepath.Join(t.TempDir(), "group.yaml")
	err := os.WriteFile(file, []byte(`datapath: {interfaces: [eth9]}
services:
  - name: web
    listen: ["192.0.2.100:80", "192.0.2.101:80"]
    backends: [{address: 198.51.100.11}]
    health_check: {type: tcp, port: 8080}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("halb check = %d\n%s%s", code, out, errs)
	}
	for _, pair := range []string{"192.0.2.100:80/tcp", "192.0.2.101:80/tcp"} {
		if !strings.Contains(out, pair) {
			t.Errorf("the summary does not list %s:\n%s", pair, out)
		}
	}
	if !strings.Contains(out, "tcp every 2s on port 8080") {
		t.Errorf("the summary does not say where the check goes:\n%s", out)
	}
}
