package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// scriptsConfig is a valid config whose notify, track script and exec
// health check are the given programs.
func scriptsConfig(notify, track, check string) string {
	return fmt.Sprintf(`datapath:
  interfaces: [eth0]
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      virtual_ips: [192.0.2.100/24]
      notify: %s
      track_scripts:
        - command: [%s]
services:
  - name: dns
    vip: 192.0.2.100
    port: 53
    protocol: udp
    backends:
      - address: 198.51.100.21
    health_check:
      type: exec
      command: [%s, example.org]
`, notify, track, check)
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadProblems loads the config and returns its problems as one string.
func loadProblems(t *testing.T, path string) string {
	t.Helper()
	_, err := Load(path)
	if err == nil {
		return ""
	}
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("Load: %v, want an *Error", err)
	}
	return cerr.Error()
}

// TestLoadRefusesStrangersScripts: a local user who is not root must not
// be able to choose a program halb runs. Every kind of program the config
// names (notify, track script, exec health check) goes through the one
// policy.
func TestLoadRefusesStrangersScripts(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	good := filepath.Join(base, "good")
	if err := os.WriteFile(good, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(shared, "x")
	// (a) the stranger's symlink to a root-owned program: the target is
	// fine, the link is not, since its owner can repoint it.
	u.MustSh(t, "ln -s "+good+" "+link)
	// (b) a script anyone can edit.
	open := filepath.Join(base, "open")
	if err := os.WriteFile(open, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	// (c) a program that does not exist.
	missing := filepath.Join(base, "missing")

	if got := loadProblems(t, writeConfig(t, scriptsConfig(good, good, good))); got != "" {
		t.Fatalf("root's own scripts refused:\n%s", got)
	}
	for _, tc := range []struct {
		name, program, want string
	}{
		{"a stranger's symlink", link, "is a symlink owned by uid"},
		{"a script mode 0777", open, "writable by a user other than root (mode 0777)"},
		{"a missing script", missing, "no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, where := range []struct {
				field string
				cfg   string
			}{
				{"vrrp.instances[0].notify", scriptsConfig(tc.program, good, good)},
				{"vrrp.instances[0].track_scripts[0].command[0]", scriptsConfig(good, tc.program, good)},
				{"services[0].health_check.command[0]", scriptsConfig(good, good, tc.program)},
			} {
				got := loadProblems(t, writeConfig(t, where.cfg))
				if !strings.Contains(got, where.field+": "+tc.program) || !strings.Contains(got, tc.want) {
					t.Errorf("%s = %s: got\n%s\nwant a problem at %s saying %q", where.field, tc.program, got, where.field, tc.want)
				}
			}
		})
	}
}

// TestLoadRefusesStrangersArguments: a track script or exec health check
// that runs root's own interpreter on a local user's script ([/bin/sh,
// /tmp/u/evil.sh]) is refused when the config is loaded, at the field of
// that argument, saying what to fix.
func TestLoadRefusesStrangersArguments(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	good := filepath.Join(base, "good")
	if err := os.WriteFile(good, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rootsScript := filepath.Join(base, "check.sh")
	if err := os.WriteFile(rootsScript, []byte("exit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(shared, "evil.sh")
	u.MustSh(t, "printf 'id\\n' > "+evil)

	if got := loadProblems(t, writeConfig(t, scriptsConfig(good, "/bin/sh, "+rootsScript, "/bin/bash, "+rootsScript))); got != "" {
		t.Fatalf("root's script through /bin/sh refused:\n%s", got)
	}
	for _, where := range []struct {
		field string
		cfg   string
	}{
		{"vrrp.instances[0].track_scripts[0].command[1]", scriptsConfig(good, "/bin/sh, "+evil, good)},
		{"vrrp.instances[0].track_scripts[0].command[2]", scriptsConfig(good, "/usr/bin/env, /usr/bin/python3, "+evil, good)},
		{"services[0].health_check.command[1]", scriptsConfig(good, good, "/bin/bash, "+evil)},
		{"services[0].health_check.command[1]", scriptsConfig(good, good, "/bin/sh, --file="+evil)},
	} {
		got := loadProblems(t, writeConfig(t, where.cfg))
		if !strings.Contains(got, where.field+": ") || !strings.Contains(got, evil+" is owned by uid") ||
			!strings.Contains(got, "where only root can change them") {
			t.Errorf("got\n%s\nwant a problem at %s naming %s and the fix", got, where.field, evil)
		}
	}
}
