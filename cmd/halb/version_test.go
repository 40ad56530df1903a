package main

import (
	"runtime"
	"strings"
	"testing"
)

// halb version and halb --version print the same version, commit, Go
// version and target, and exit 0.
func TestVersionFlag(t *testing.T) {
	code, byCmd, errs := run(t, "version")
	if code != exitOK {
		t.Fatalf("halb version: exit %d: %s", code, errs)
	}
	code, byFlag, errs := run(t, "--version")
	if code != exitOK {
		t.Fatalf("halb --version: exit %d: %s", code, errs)
	}
	if byCmd != byFlag {
		t.Errorf("halb version printed %q, halb --version %q", byCmd, byFlag)
	}
	for _, want := range []string{"halb " + version + "\n", "commit  " + commit + "\n", "go      " + runtime.Version() + "\n", "target  " + runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(byFlag, want) {
			t.Errorf("halb --version: %q lacks %q", byFlag, want)
		}
	}
}
