package script

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// TestRunRefusesStrangersArgument: root's own interpreter given a local
// user's script ([/bin/sh, /tmp/u/evil.sh], as keepalived users write
// `/bin/bash /path/check.sh`) runs the user's code as root just as naming
// the script would: every argument that names a path is held to the
// policy, at every run, and nothing of the user's runs.
func TestRunRefusesStrangersArgument(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	marker := filepath.Join(base, "owned")
	evil := filepath.Join(shared, "evil.sh")
	u.MustSh(t, "printf 'touch "+marker+"\\necho ran\\n' > "+evil+" && chmod 755 "+evil)
	good := writeScript(t, filepath.Join(base, "good.sh"), "echo root \"$@\"\n", 0o644)

	for _, tc := range []struct {
		argv  []string
		index int
		path  string
	}{
		{[]string{"/bin/sh", evil}, 1, evil},
		{[]string{"/bin/sh", "-e", evil, "x"}, 2, evil},
		{[]string{"/usr/bin/env", "/bin/sh", evil}, 2, evil},
		{[]string{"/bin/sh", strings.TrimPrefix(evil, "/")}, 1, evil}, // relative: Run works in /
		{[]string{"/bin/sh", "-c", ". " + evil}, 2, evil},             // a file an inline program names
		{[]string{"/usr/bin/env", "ENV=" + evil, "/bin/sh", "-i"}, 1, evil},
		{[]string{"/bin/sh", shared + "/../shared/evil.sh"}, 1, evil},
	} {
		err := CheckArgs(tc.argv)
		var ae *ArgError
		if !errors.Is(err, ErrRefused) || !errors.As(err, &ae) || ae.Index != tc.index || !strings.Contains(err.Error(), "is owned by uid") {
			t.Errorf("CheckArgs(%q) = %v; want ErrRefused at argument %d naming the stranger's file", tc.argv, err, tc.index)
		}
		out, err := run(t, tc.argv...)
		if !errors.Is(err, ErrRefused) || out != "" {
			t.Errorf("Run(%q) = %q, %v; want ErrRefused and nothing run", tc.argv, out, err)
		}
	}
	absent(t, marker)

	// Root's script through root's interpreter runs, relative or not.
	if out, err := run(t, "/bin/sh", good, "a"); err != nil || out != "root a" {
		t.Fatalf("root's script through /bin/sh: %q, %v", out, err)
	}
	if out, err := run(t, "/bin/sh", strings.TrimPrefix(good, "/")); err != nil || out != "root" {
		t.Fatalf("root's script by a path relative to /: %q, %v", out, err)
	}
}

// TestCheckArgPaths: what an argument may name. A path that does not
// exist is allowed only where no one but root can create it; a directory
// given to a program must be root's alone, sticky or not; devices are the
// kernel's; a root-owned symlink in a root directory is judged by where
// it leads too.
func TestCheckArgPaths(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777)
	mine := filepath.Join(shared, "mine")
	u.MustSh(t, "touch "+mine)
	link := filepath.Join(base, "link")
	if err := os.Symlink(mine, link); err != nil {
		t.Fatal(err)
	}
	rootsInShared := filepath.Join(shared, "roots")
	if err := os.WriteFile(rootsInShared, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		arg  string
		want string // "" for allowed
	}{
		{filepath.Join(base, "notyet"), ""},
		{filepath.Join(base, "a", "b", "notyet"), ""},
		{"--out=" + filepath.Join(base, "notyet"), ""},
		{filepath.Join(shared, "notyet"), "does not exist there yet"},
		{"--out=" + filepath.Join(shared, "notyet"), "does not exist there yet"},
		{base, ""},
		{shared, "is a directory writable by users other than root"},
		{rootsInShared, ""}, // root's file in a sticky directory stays root's
		{link, "is owned by uid"},
		{"-I" + mine, "is owned by uid"},
		{"/dev/null", ""},
		{"eth0", ""},
		{"http://example.org/health", ""},
		{"", ""},
	} {
		err := CheckArg(tc.arg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckArg(%q) = %v, want allowed", tc.arg, err)
		case tc.want != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckArg(%q) = %v, want refused saying %q", tc.arg, err, tc.want)
		}
	}
}

// TestShebangArgument: the kernel hands the rest of a #! line to the
// interpreter as an argument; a path there is judged like one in argv.
func TestShebangArgument(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777)
	marker := filepath.Join(base, "owned")
	evil := filepath.Join(shared, "evil.sh")
	u.MustSh(t, "printf 'touch "+marker+"\\n' > "+evil)
	prog := writeScript(t, filepath.Join(base, "prog"), "#!/bin/sh "+evil+"\n", 0o755)
	if err := Check(prog); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "the #! line of "+prog) {
		t.Fatalf("Check: %v, want ErrRefused naming the #! line", err)
	}
	if _, err := run(t, prog); !errors.Is(err, ErrRefused) {
		t.Fatalf("Run: %v, want ErrRefused", err)
	}
	absent(t, marker)
}
