// Package vm tests halb on a real Debian kernel whose IPVS is made of
// loadable modules, booted in QEMU (TCG, so no KVM is needed): the IPVS data
// path's module loading and programming, which the host's kernel cannot show.
//
// build.sh makes the kernel and an initramfs holding halb, ipvsadm, kmod and
// the ip_vs modules; run.sh boots it for one scenario; each
// scenarios/NAME.sh (lib.sh aside) is one scenario and one subtest here,
// TestVM/ARCH/NAME, for each architecture its "# arch:" line names (amd64
// alone without one). The arm64 guest runs Debian's arm64 kernel and an
// arm64 halb in qemu-system-aarch64, as on a Raspberry Pi with a 64-bit OS;
// the armhf guest Debian's armmp kernel and a GOARM=6 halb in
// qemu-system-arm, as on 32-bit Raspberry Pi OS, which most Pi 2, 3 and
// Zero 2 owners run.
// TestSystemd (systemd_test.go) installs halb's Debian package in a minimal
// Debian root booted with systemd as its init (systemd-nspawn --boot) and
// runs halb under its unit there.
//
// Everything the scenarios change happens inside the guest: this package must
// never load modules on, or change the network of, the host it runs on (the
// systemd guest's only mark on the host is the bpffs it mounts for the
// guest under test/vm/.cache, and unmounts).
//
// The test needs root, for build.sh may install QEMU and the tools it uses.
// Like the other privileged tests it skips without root and fails when
// CI=true, and also when CI=true and a prerequisite (a package, the kernel
// download) cannot be had.
//
// HALB_VM_BINARY, HALB_VM_BINARY_ARM64 and HALB_VM_BINARY_ARMHF name the
// amd64, arm64 and armhf (GOARM=6) halb binaries to test instead of building ./cmd/halb from this checkout;
// HALB_VM_CACHE moves build.sh's cache (test/vm/.cache).
package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// exitUnavailable is build.sh's exit status for a prerequisite it could not
// have: a tool that would not install, a package that would not download.
const exitUnavailable = 3

const (
	buildTimeout = 15 * time.Minute // the first build installs QEMU and downloads the kernel: 8 min for armhf on a loaded 2-core machine
	bootTimeout  = 5 * time.Minute  // run.sh's own limit is 120 s, 240 s on armhf
)

// guestArch is a guest's Debian architecture, with the variable that may
// name a halb binary for it.
type guestArch struct{ name, binaryEnv string }

var arches = []guestArch{
	{"amd64", "HALB_VM_BINARY"},
	{"arm64", "HALB_VM_BINARY_ARM64"},
	{"armhf", "HALB_VM_BINARY_ARMHF"},
}

func TestVM(t *testing.T) {
	netnstest.Require(t)
	t.Parallel() // beside TestSystemd
	scenarios := listScenarios(t)
	for _, arch := range arches {
		t.Run(arch.name, func(t *testing.T) {
			// All builds at once: build.sh takes a lock on its cache, and
			// the scenarios of the arch built first start meanwhile.
			t.Parallel()
			build(t, arch.name, os.Getenv(arch.binaryEnv))
			for _, sc := range scenarios {
				if !slices.Contains(sc.arches, arch.name) {
					continue
				}
				t.Run(sc.name, func(t *testing.T) {
					// One vCPU each: two guests use the two cores of a CI machine.
					t.Parallel()
					ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
					defer cancel()
					start := time.Now()
					cmd := exec.CommandContext(ctx, "./run.sh", sc.name)
					cmd.Env = append(os.Environ(), "HALB_VM_ARCH="+arch.name)
					out, err := cmd.CombinedOutput()
					if err != nil {
						t.Fatalf("run.sh %s on %s: %v after %s\n%s", sc.name, arch.name, err,
							time.Since(start).Round(100*time.Millisecond), out)
					}
					t.Log(lastLine(out))
				})
			}
		})
	}
}

type scenario struct {
	name   string
	arches []string // from its "# arch: amd64 arm64 armhf" line; amd64 without one
}

// listScenarios returns the scenarios in scenarios/*.sh.
func listScenarios(t *testing.T) []scenario {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("scenarios", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var list []scenario
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".sh")
		if name == "lib" {
			continue
		}
		list = append(list, scenario{name: name, arches: scenarioArches(t, f)})
	}
	if len(list) == 0 {
		t.Fatal("no scenarios in scenarios/*.sh")
	}
	return list
}

// scenarioArches reads the architectures a scenario's "# arch:" line names.
func scenarioArches(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "# arch:")
		if !ok {
			continue
		}
		names := strings.Fields(rest)
		for _, n := range names {
			if !slices.ContainsFunc(arches, func(a guestArch) bool { return a.name == n }) {
				t.Fatalf("%s: '# arch:' names %q; want amd64, arm64 or armhf", file, n)
			}
		}
		return names
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return []string{"amd64"}
}

// build runs build.sh for arch, which installs what is missing and leaves
// the kernel and initramfs in its cache; binary, if not empty, is the halb
// to carry.
func build(t *testing.T, arch, binary string) {
	t.Helper()
	var args []string
	if binary != "" {
		args = append(args, binary)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "./build.sh", args...)
	cmd.Env = append(os.Environ(), "HALB_VM_ARCH="+arch)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		t.Logf("build.sh took %s:\n%s", time.Since(start).Round(100*time.Millisecond), bytes.TrimSpace(out))
	case errors.As(err, &exit) && exit.ExitCode() == exitUnavailable:
		netnstest.SkipOrFail(t, "test/vm/build.sh could not get QEMU, a tool or Debian's "+arch+" packages "+
			"(is Debian's archive reachable, and apt-get install allowed?):\n%s", out)
	default:
		t.Fatalf("HALB_VM_ARCH=%s test/vm/build.sh: %v\n%s", arch, err, out)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
