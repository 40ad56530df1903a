package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// A track file that another user can write, or create where it is
// missing, draws a warning at its field; one only root can write (or
// create) draws none, and exit status stays 0 either way.
func TestCheckWarnsStrangersTrackFile(t *testing.T) {
	trusttest.NewStranger(t)                                  // root, and a way to be someone else
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	open := filepath.Join(base, "open")
	if err := os.WriteFile(open, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o666); err != nil {
		t.Fatal(err)
	}
	rootsOwn := filepath.Join(base, "weight")
	if err := os.WriteFile(rootsOwn, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name, path string
		warn       bool
	}{
		{"root's own file", rootsOwn, false},
		{"missing, where only root can create it", filepath.Join(base, "none"), false},
		{"writable by others", open, true},
		{"missing, in a directory anyone can write", filepath.Join(shared, "none"), true},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			file := filepath.Join(dir, "halb.yaml")
			if err := os.WriteFile(file, []byte("control: {socket: "+filepath.Join(dir, "halb.sock")+"}\n"+
				"vrrp:\n  instances:\n    - {name: VI_1, interface: lo, vrid: 51, virtual_ips: [192.0.2.100/24],\n"+
				"       track_files: [{path: "+c.path+"}]}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			code, out, errs := run(t, "check", "-c", file)
			if code != exitOK {
				t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
			}
			want := "vrrp.instances[0].track_files[0].path: warning: "
			if got := strings.Contains(out, want) && strings.Contains(out, "moves VI_1's priority"); got != c.warn {
				t.Errorf("warning %v, want %v:\n%s", got, c.warn, out)
			}
		})
	}
}
