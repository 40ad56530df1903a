package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `make cross` builds the three static binaries a release ships, the two
// ARM ones for Raspberry Pis (64-bit and 32-bit OS), the 32-bit one for
// ARMv6 so that a Pi Zero or Pi 1 runs it too. file(1) is the judge, as a
// person would use it, and `go version -m` for the ARM variant.
func TestMakeCross(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds three binaries; skipped with -short")
	}
	dir := t.TempDir()
	if out, err := exec.Command("make", "-C", "../..", "cross", "BINDIR="+dir).CombinedOutput(); err != nil {
		t.Fatalf("make cross: %v\n%s", err, out)
	}
	for bin, want := range map[string]string{
		"halb-linux-amd64": "x86-64",
		"halb-linux-arm64": "ARM aarch64",
		"halb-linux-arm":   "ARM, EABI5",
	} {
		out, err := exec.Command("file", filepath.Join(dir, bin)).Output()
		if err != nil {
			t.Fatalf("file %s: %v", bin, err)
		}
		desc := string(out)
		if !strings.Contains(desc, want) || !strings.Contains(desc, "statically linked") {
			t.Errorf("%s: %s\nwant %q and statically linked", bin, desc, want)
		}
	}
	out, err := exec.Command("go", "version", "-m", filepath.Join(dir, "halb-linux-arm")).Output()
	if err != nil {
		t.Fatalf("go version -m halb-linux-arm: %v", err)
	}
	if !strings.Contains(string(out), "\tGOARM=6\n") {
		t.Errorf("halb-linux-arm is not built for ARMv6 (GOARM=6):\n%s", out)
	}
}
