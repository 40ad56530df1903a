package main

import (
	"regexp"
	"strings"
	"testing"
)

// A v3 instance with accept: false is valid, and `halb check` says what it
// does to traffic for the VIPs, on the instance's line, before the summary.
func TestCheckNotesAcceptMode(t *testing.T) {
	const file = "../../configs/halb.yaml"
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s", code, errs)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 3 || lines[0] != file+": valid" {
		t.Fatalf("first line %q, want %q:\n%s", lines[0], file+": valid", out)
	}
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(file) + `:\d+: vrrp\.instances\[0\]\.accept: note: accept is false .*set accept: true`).MatchString(lines[1]) {
		t.Errorf("second line %q, want FILE:LINE: vrrp.instances[0].accept: note: ... naming the fix", lines[1])
	}
	// The IPv4-only Raspberry Pi example is VRRPv2: no Accept_Mode, no note.
	_, out, _ = run(t, "check", "-c", "../../configs/pi-ipvs.yaml")
	if strings.Contains(out, "note:") {
		t.Errorf("a v2 configuration got a note:\n%s", out)
	}
}
