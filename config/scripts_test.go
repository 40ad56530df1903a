package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckScripts(t *testing.T) {
	dir := t.TempDir() // 0700, ours: a safe place
	write := func(name string, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	openDir := filepath.Join(dir, "open")
	if err := os.Mkdir(openDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(openDir, 0o777); err != nil {
		t.Fatal(err)
	}
	inOpenDir := filepath.Join(openDir, "script")
	if err := os.WriteFile(inOpenDir, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, program, want string
	}{
		{"good", write("good", 0o755), ""},
		{"missing", filepath.Join(dir, "missing"), "no such file or directory"},
		{"not executable", write("plain", 0o644), "not executable"},
		{"a directory", dir, "not a regular file"},
		{"group-writable", write("gw", 0o775), "writable by a user other than root"},
		{"world-writable directory", inOpenDir, "open is writable by a user other than root"},
		{"system program", "/usr/bin/logger", ""},
	}
	if os.Geteuid() == 0 {
		other := write("other", 0o755)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ name, program, want string }{"owned by another user", other, "writable by a user other than root"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{VRRP: VRRP{Instances: []Instance{{Notify: tc.program,
				TrackScripts: []TrackScript{{Command: []string{tc.program, "arg"}}}}}}}
			problems := CheckScripts(cfg)
			if tc.want == "" {
				if len(problems) != 0 {
					t.Fatalf("problems for a safe script: %v", problems)
				}
				return
			}
			if len(problems) != 2 {
				t.Fatalf("got %v, want a problem for notify and for the track script", problems)
			}
			for _, p := range problems {
				if !strings.Contains(p.Msg, tc.want) {
					t.Errorf("%s: %q does not say %q", p.Path, p.Msg, tc.want)
				}
			}
			if problems[0].Path != "vrrp.instances[0].notify" || problems[1].Path != "vrrp.instances[0].track_scripts[0].command[0]" {
				t.Errorf("paths: %v", problems)
			}
		})
	}
}
