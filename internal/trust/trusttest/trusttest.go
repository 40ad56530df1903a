// Package trusttest lets a test act as a local user who is not root: the
// attacker of halb's script and config-file policy. The user is a uid and
// gid that no account on the host has, taken with setpriv for one command,
// so nothing is added to the host's user database and nothing is left to
// clean up but the files the test made in its own temporary directories.
//
// It is for tests only (only _test.go files import it) and must never add,
// change or remove an account or a group in the host's user database: the
// stranger is a number no account uses, not an account.
package trusttest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// Stranger is a uid (and a gid of the same number) that no account uses.
type Stranger struct{ UID int }

// NewStranger picks an unused uid. The test needs root to act as it: it
// is skipped otherwise, and fails when CI=true.
func NewStranger(t testing.TB) Stranger {
	t.Helper()
	netnstest.Require(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		netnstest.SkipOrFail(t, "setpriv (util-linux) is needed to act as another user: %v", err)
	}
	for uid := 64123; uid < 65000; uid++ {
		_, uerr := user.LookupId(strconv.Itoa(uid))
		_, gerr := user.LookupGroupId(strconv.Itoa(uid))
		var unknownUser user.UnknownUserIdError
		var unknownGroup user.UnknownGroupIdError
		if errors.As(uerr, &unknownUser) && errors.As(gerr, &unknownGroup) {
			return Stranger{UID: uid}
		}
	}
	t.Fatal("no unused uid between 64123 and 65000")
	return Stranger{}
}

// Sh runs a shell command as the stranger, with no supplementary groups,
// and returns its combined output.
func (s Stranger) Sh(command string) (string, error) {
	id := strconv.Itoa(s.UID)
	cmd := exec.Command("setpriv", "--reuid="+id, "--regid="+id, "--clear-groups", "--", "/bin/sh", "-c", command)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("as uid %d: %s: %w: %s", s.UID, command, err, out)
	}
	return string(out), nil
}

// MustSh is Sh that fails the test on an error.
func (s Stranger) MustSh(t testing.TB, command string) {
	t.Helper()
	if _, err := s.Sh(command); err != nil {
		t.Fatal(err)
	}
}

// OpenDir makes a directory under a fresh temporary directory that the
// stranger can reach: mode 0755 down to it, owned by root, and the
// directory itself with mode perm (os.ModeSticky|0o777 for one like /tmp).
func OpenDir(t testing.TB, perm os.FileMode) (base, dir string) {
	t.Helper()
	base = t.TempDir()
	// t.TempDir's own parent is 0700 too.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(base, "shared")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return base, dir
}
