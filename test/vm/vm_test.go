// Package vm tests halb on a real Debian kernel whose IPVS is made of
// loadable modules, booted in QEMU (TCG, so no KVM is needed): the IPVS data
// path's module loading and programming, which the host's kernel cannot show.
//
// build.sh makes the kernel and an initramfs holding halb, ipvsadm, kmod and
// the ip_vs modules; run.sh boots it for one scenario; each
// scenarios/NAME.sh (lib.sh aside) is one scenario and one subtest here.
// Everything the scenarios change happens inside the guest: this package must
// never load modules on, or change the network of, the host it runs on.
//
// The test needs root, for build.sh may install QEMU and the tools it uses.
// Like the other privileged tests it skips without root and fails when
// CI=true, and also when CI=true and a prerequisite (a package, the kernel
// download) cannot be had.
//
// HALB_VM_BINARY names a halb binary to test instead of building ./cmd/halb
// from this checkout; HALB_VM_CACHE moves build.sh's cache (test/vm/.cache).
package vm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// exitUnavailable is build.sh's exit status for a prerequisite it could not
// have: a tool that would not install, a package that would not download.
const exitUnavailable = 3

const (
	buildTimeout = 8 * time.Minute // the first build installs QEMU and downloads the kernel
	bootTimeout  = 3 * time.Minute // run.sh's own limit is 120 s
)

func TestVM(t *testing.T) {
	netnstest.Require(t)
	scenarios := listScenarios(t)
	build(t)
	for _, name := range scenarios {
		t.Run(name, func(t *testing.T) {
			// One vCPU each: two guests use the two cores of a CI machine.
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
			defer cancel()
			start := time.Now()
			out, err := exec.CommandContext(ctx, "./run.sh", name).CombinedOutput()
			if err != nil {
				t.Fatalf("run.sh %s: %v after %s\n%s", name, err, time.Since(start).Round(100*time.Millisecond), out)
			}
			t.Log(lastLine(out))
		})
	}
}

// listScenarios returns the scenario names, from scenarios/*.sh.
func listScenarios(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("scenarios", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".sh"); name != "lib" {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		t.Fatal("no scenarios in scenarios/*.sh")
	}
	return names
}

// build runs build.sh, which installs what is missing and leaves the kernel
// and initramfs in its cache.
func build(t *testing.T) {
	t.Helper()
	var args []string
	if bin := os.Getenv("HALB_VM_BINARY"); bin != "" {
		args = append(args, bin)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "./build.sh", args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		t.Logf("build.sh took %s:\n%s", time.Since(start).Round(100*time.Millisecond), bytes.TrimSpace(out))
	case errors.As(err, &exit) && exit.ExitCode() == exitUnavailable:
		netnstest.SkipOrFail(t, "test/vm/build.sh could not get QEMU, a tool or Debian's kernel package "+
			"(is Debian's archive reachable, and apt-get install allowed?):\n%s", out)
	default:
		t.Fatalf("test/vm/build.sh: %v\n%s", err, out)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
