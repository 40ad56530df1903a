package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// halb backend with no daemon exits 1 and says so; a weight that is not
// one (heavy, -1) exits 2 before asking.
func TestBackendNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, _, errs := run(t, "backend", "drain", "web", "192.0.2.11:80", "-s", sock)
	if code != exitFailure || !strings.Contains(errs, "no halb daemon answers") {
		t.Errorf("drain with no daemon: exit %d, %q; want 1", code, errs)
	}
	code, _, errs = run(t, "backend", "weight", "web", "192.0.2.11:80", "heavy", "-s", sock)
	if code != exitBadConfig || !strings.Contains(errs, "0 to 65535") {
		t.Errorf("weight heavy: exit %d, %q; want 2", code, errs)
	}
	// The flag parser reads -1 as a flag; it is still a weight, and not one.
	code, _, errs = run(t, "backend", "weight", "web", "192.0.2.11:80", "-1", "-s", sock)
	if code != exitBadConfig || !strings.Contains(errs, "weight -1: give a whole number from 0 to 65535") {
		t.Errorf("weight -1: exit %d, %q; want 2 naming the weight", code, errs)
	}
	if code, _, errs = run(t, "backend", "weight", "web", "192.0.2.11:80", "5", "-x", "-s", sock); code != exitFailure || !strings.Contains(errs, "unknown shorthand flag") {
		t.Errorf("an unknown flag: exit %d, %q; want 1 (cobra's own error)", code, errs)
	}
}
