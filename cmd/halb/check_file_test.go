package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfigFile: halb check on files it must not trust or cannot
// read as a config, and the warning about a password others can read.
func TestCheckConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const withPass = `vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, version: 2, virtual_ips: [192.0.2.100/24], auth_pass: halbpass}
`
	readable := write("readable.yaml", withPass, 0o644)
	code, out, errs := run(t, "check", "-c", readable)
	if code != exitOK || !strings.Contains(out, "valid") {
		t.Fatalf("password in a 0644 file: exit %d\n%s%s", code, out, errs)
	}
	if want := readable + ":3: vrrp.instances[0].auth_pass: warning: the file is readable by users other than root (mode 0644) and holds a password: chmod go-r " + readable; !strings.Contains(out, want) {
		t.Errorf("stdout %q\nwant %q", out, want)
	}
	if code, out, _ := run(t, "check", "-c", write("private.yaml", withPass, 0o600)); code != exitOK || strings.Contains(out, "password") {
		t.Errorf("password in a 0600 file: exit %d, stdout %q; want 0 and no warning", code, out)
	}

	writable := write("writable.yaml", "log: {level: info}\n", 0o666)
	for _, tc := range []struct{ path, want string }{
		{writable, writable + ": the file cannot be trusted: " + writable + " is writable by a user other than root (mode 0666)"},
		{"/dev/zero", "/dev/zero: the file is a character device, not a regular file"},
	} {
		code, _, errs := run(t, "check", "-c", tc.path)
		if code != exitBadConfig || !strings.Contains(errs, tc.want) {
			t.Errorf("check -c %s: exit %d, stderr %q; want %d and %q", tc.path, code, errs, exitBadConfig, tc.want)
		}
	}
}
