package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// systemdTimeout covers the first run's mmdebstrap (7 min on a loaded
// 2-core machine), `make deb` and the guest's checks.
const systemdTimeout = 20 * time.Minute

// systemdChecks are the checks systemd/guest.sh must report, so that a
// guest.sh that stops early fails here rather than passing on fewer lines.
var systemdChecks = []string{
	"dpkg-install",
	"install-changes-no-link-address-or-pin",
	"install-does-not-enable",
	"install-does-not-start",
	"topology",
	"start-active",
	"type-notify",
	"vip-on-lan0",
	"vmac-holds-vip",
	"track-process-counted",
	"notify-script-writes-file",
	"connection-through-service",
	"reload",
	"reload-logged",
	"active-after-reload",
	"journal-warning-priorities",
	"journal-warning-shown",
	"journal-has-info-lines",
	"exposure-below-5",
	"stop",
	"vip-gone-after-stop",
	"enable",
	"enable-makes-link",
	"purge",
	"purge-removes-binary",
	"purge-removes-unit",
	"purge-removes-conffile",
	"purge-keeps-users-file",
	"purge-removes-enable-link",
}

// TestSystemd installs halb's amd64 package in a Debian root booted with
// systemd as its init (systemd.sh: mmdebstrap and systemd-nspawn --boot)
// and runs it under its unit: one subtest a check guest.sh reports,
// TestSystemd/NAME. HALB_VM_DEB names a package to test instead of
// `make deb`'s.
func TestSystemd(t *testing.T) {
	netnstest.Require(t)
	t.Parallel()
	var args []string
	if deb := os.Getenv("HALB_VM_DEB"); deb != "" {
		args = append(args, deb)
	}
	ctx, cancel := context.WithTimeout(t.Context(), systemdTimeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "./systemd.sh", args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == exitUnavailable {
		netnstest.SkipOrFail(t, "test/vm/systemd.sh could not get mmdebstrap, systemd-nspawn or Debian's packages:\n%s", out)
	}
	t.Logf("systemd.sh took %s", time.Since(start).Round(100*time.Millisecond))
	results := systemdResults(t, out)
	for _, name := range systemdChecks {
		t.Run(name, func(t *testing.T) {
			r, ok := results[name]
			switch {
			case !ok:
				t.Errorf("guest.sh reported no %s", name)
			case r != "":
				t.Error(r)
			}
		})
	}
	if err != nil && !t.Failed() {
		t.Fatalf("systemd.sh: %v with every check passed:\n%s", err, out)
	}
	if t.Failed() {
		t.Logf("systemd.sh's output:\n%s", out)
	}
}

// systemdResults reads guest.sh's "HALB-SYSTEMD: PASS|FAIL|INFO NAME ..."
// lines: for each check, "" when it passed, else why it failed. INFO lines
// (the exposure figure) go to the test's log.
func systemdResults(t *testing.T, out []byte) map[string]string {
	t.Helper()
	results := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "HALB-SYSTEMD: ")
		if !ok {
			continue
		}
		kind, rest, _ := strings.Cut(rest, " ")
		name, detail, _ := strings.Cut(rest, " ")
		switch kind {
		case "PASS":
			results[name] = ""
		case "FAIL":
			results[name] = "FAIL " + name + ": " + detail
		case "INFO":
			t.Logf("%s: %s", name, detail)
		}
	}
	return results
}
