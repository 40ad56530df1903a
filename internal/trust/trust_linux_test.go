package trust_test

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/halb-lb/halb/internal/trust"
	"github.com/halb-lb/halb/internal/trust/trusttest"
)

func write(t *testing.T, p, body string, perm os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenPolicy: what the walk accepts and refuses, as root and with a
// stranger's files beside root's.
func TestOpenPolicy(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, sticky := trusttest.OpenDir(t, os.ModeSticky|0o777)
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	good := write(t, filepath.Join(base, "good"), "root's\n", 0o755)
	write(t, filepath.Join(base, "gw"), "x", 0o775)
	write(t, filepath.Join(open, "f"), "x", 0o755)
	write(t, filepath.Join(sticky, "rootfile"), "root's\n", 0o755)
	if err := os.Symlink(good, filepath.Join(sticky, "rootlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(base, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../good", filepath.Join(base, "sub", "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(open, "f"), filepath.Join(base, "to-open")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", filepath.Join(base, "loop")); err != nil {
		t.Fatal(err)
	}
	u.MustSh(t, "ln -s "+good+" "+sticky+"/userlink && echo x > "+sticky+"/userfile && chmod 755 "+sticky+"/userfile")
	fifo := filepath.Join(base, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name, path string
		want       string // "" = accepted
	}{
		{"root's file", good, ""},
		{"root's file in a sticky directory", filepath.Join(sticky, "rootfile"), ""},
		{"root's link in a sticky directory", filepath.Join(sticky, "rootlink"), ""},
		{"relative link", filepath.Join(base, "sub", "rel"), ""},
		{"relative link and ..", base + "/sub/../sub/./rel", ""},
		{"system program through /bin", "/bin/sh", ""},
		{"group-writable file", filepath.Join(base, "gw"), "writable by a user other than root (mode 0775)"},
		{"file in a world-writable directory", filepath.Join(open, "f"), "open is writable by a user other than root (mode 0777)"},
		{"root's link to a file in a world-writable directory", filepath.Join(base, "to-open"), "open is writable by a user other than root"},
		{"a stranger's link", filepath.Join(sticky, "userlink"), "is a symlink owned by uid"},
		{"a stranger's file", filepath.Join(sticky, "userfile"), "owned by uid"},
		{"missing", filepath.Join(base, "missing"), "no such file or directory"},
		{"a directory", base, "is a directory, not a regular file"},
		{"a FIFO", fifo, "is a FIFO, not a regular file"},
		{"a device", "/dev/zero", "is a character device, not a regular file"},
		{"a loop", filepath.Join(base, "loop"), "too many levels of symbolic links"},
		{"relative", "good", "not an absolute path"},
		{"a file used as a directory", filepath.Join(good, "x"), "not a directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := trust.Open(tc.path, trust.ForRead)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("accepted, want an error saying %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v: does not say %q", err, tc.want)
			}
		})
	}

	// The policy errors are ErrUntrusted; the others are not.
	_, err := trust.Open(filepath.Join(sticky, "userlink"), trust.ForExec)
	if !errors.Is(err, trust.ErrUntrusted) {
		t.Errorf("a stranger's link: %v is not ErrUntrusted", err)
	}
	_, err = trust.Open(filepath.Join(base, "missing"), trust.ForExec)
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, trust.ErrUntrusted) {
		t.Errorf("missing: %v, want ErrNotExist only", err)
	}
}

// TestOpenHoldsTheCheckedFile: once open, a rename over the path does not
// change what the caller reads.
func TestOpenHoldsTheCheckedFile(t *testing.T) {
	dir := t.TempDir()
	p := write(t, filepath.Join(dir, "cfg"), "checked\n", 0o644)
	f, err := trust.Open(p, trust.ForRead)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write(t, filepath.Join(dir, "other"), "swapped\n", 0o644)
	if err := os.Rename(filepath.Join(dir, "other"), p); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil || string(b) != "checked\n" {
		t.Fatalf("read %q, %v; want the file that was checked", b, err)
	}
}

// TestOpenStrangersDirectory: a directory another user owns is theirs to
// fill, whatever its mode, and the fix names a directory root owns.
func TestOpenStrangersDirectory(t *testing.T) {
	u := trusttest.NewStranger(t)
	_, shared := trusttest.OpenDir(t, os.ModeSticky|0o777)
	home := filepath.Join(shared, "home")
	u.MustSh(t, "mkdir -m 0755 "+home)
	f := write(t, filepath.Join(home, "halb.yaml"), "x", 0o600)
	_, err := trust.Open(f, trust.ForRead)
	if !errors.Is(err, trust.ErrUntrusted) || !strings.Contains(err.Error(), home+" is owned by uid") ||
		!strings.Contains(err.Error(), "keep the file in a directory that root owns") {
		t.Fatalf("a root-owned file in a stranger's directory: %v", err)
	}
}
