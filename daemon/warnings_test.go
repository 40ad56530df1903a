package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/loader"
)

// TestConfigWarningsLogged: a password in a file others can read is
// logged as a warning at start and again at every reload that still
// finds it.
func TestConfigWarningsLogged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "halb.yaml")
	body := strings.Replace(goodConfig, "virtual_ips: [192.0.2.7/24]}", "virtual_ips: [192.0.2.7/24], version: 2, auth_pass: halbpass}", 1)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d, err := New(path, &logs, loader.Host{Root: t.TempDir(), Kernel: halbtest.NoKernel{}})
	if err != nil {
		t.Fatal(err)
	}
	const want = "holds a password: chmod go-r "
	if n := strings.Count(logs.String(), want); n != 1 || !strings.Contains(logs.String(), "level=WARN msg=\"config file\"") {
		t.Fatalf("%d warnings at start, want 1:\n%s", n, logs.String())
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), want); n != 2 {
		t.Fatalf("%d warnings after a reload, want 2:\n%s", n, logs.String())
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), want); n != 2 {
		t.Errorf("%d warnings after the fix and a reload, want still 2:\n%s", n, logs.String())
	}
}
