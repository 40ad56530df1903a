package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

const passwordConfig = `vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      version: 2
      virtual_ips: [192.0.2.100/24]
      auth_pass: halbpass
    - name: VI_2
      interface: eth0
      vrid: 52
      version: 2
      virtual_ips: [192.0.2.101/24]
      auth_pass: other
`

// loadIn writes body to a file of the given mode in a fresh directory and
// loads it.
func loadIn(t *testing.T, body string, perm os.FileMode) (string, []Problem, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	_, warnings, err := LoadWithWarnings(p)
	return p, warnings, err
}

// wantFileProblem: err is an *Error for the file as a whole saying want.
func wantFileProblem(t *testing.T, err error, want string) {
	t.Helper()
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Path != "" {
		t.Fatalf("got %v, want one *Error problem about the file", err)
	}
	if !strings.Contains(cerr.Error(), want) {
		t.Fatalf("%q does not say %q", cerr.Error(), want)
	}
}

// TestConfigFileWritableByOthers: whoever can write the config can add a
// track script that halb runs as root, so such a file is refused, with
// the fix.
func TestConfigFileWritableByOthers(t *testing.T) {
	for _, perm := range []os.FileMode{0o666, 0o620, 0o602} {
		p, _, err := loadIn(t, "log: {level: info}\n", perm)
		wantFileProblem(t, err, "chmod go-w "+p)
	}
	if _, _, err := loadIn(t, "log: {level: info}\n", 0o644); err != nil {
		t.Errorf("mode 0644: %v", err)
	}

	// A directory above it that others can write lets them swap the file.
	dir := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(p, []byte("log: {level: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	wantFileProblem(t, err, "chmod go-w "+dir)
}

// TestConfigFileOwnedByStranger: a file another user owns is theirs to
// change, whatever its mode; so is a symlink to a good file.
func TestConfigFileOwnedByStranger(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777)
	good := filepath.Join(base, "halb.yaml")
	if err := os.WriteFile(good, []byte("log: {level: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(shared, "theirs.yaml")
	link := filepath.Join(shared, "link.yaml")
	u.MustSh(t, "printf 'log: {level: info}\\n' > "+theirs+" && chmod 0600 "+theirs+" && ln -s "+good+" "+link)

	_, err := Load(theirs)
	wantFileProblem(t, err, "chown root "+theirs)
	_, err = Load(link)
	wantFileProblem(t, err, "is a symlink owned by uid")
	if _, err := Load(good); err != nil {
		t.Errorf("root's file: %v", err)
	}
}

// TestPasswordReadableByOthers: a password in a file others can read is
// a warning, at the first password's line, naming the fix.
func TestPasswordReadableByOthers(t *testing.T) {
	p, warnings, err := loadIn(t, passwordConfig, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 {
		t.Fatalf("warnings %v, want one", warnings)
	}
	w := warnings[0]
	if w.Path != "vrrp.instances[0].auth_pass" || w.Line != 8 ||
		!strings.Contains(w.Msg, "mode 0644") || !strings.Contains(w.Msg, "2 passwords (also vrrp.instances[1].auth_pass)") ||
		!strings.Contains(w.Msg, "chmod go-r "+p) {
		t.Errorf("warning %+v", w)
	}

	for _, perm := range []os.FileMode{0o600, 0o640, 0o400} { // group root: root's
		if _, warnings, err := loadIn(t, passwordConfig, perm); err != nil || len(warnings) != 0 {
			t.Errorf("mode %04o: %v, %v; want no warning", perm, warnings, err)
		}
	}
	// Group-readable by a group other than root's.
	p, _, _ = loadIn(t, passwordConfig, 0o640)
	if err := os.Chown(p, 0, 64123); err != nil {
		t.Fatal(err)
	}
	if _, warnings, err := LoadWithWarnings(p); err != nil || len(warnings) != 1 {
		t.Errorf("mode 0640 group 64123: %v, %v; want a warning", warnings, err)
	}
	// No password, nothing to warn about.
	noPass := strings.ReplaceAll(passwordConfig, "auth_pass", "# auth_pass")
	if _, warnings, err := loadIn(t, noPass, 0o644); err != nil || len(warnings) != 0 {
		t.Errorf("no password: %v, %v", warnings, err)
	}
}

// TestConfigFileNotRegular: a FIFO, a device or a directory is refused at
// once, without waiting for a writer or reading for ever.
func TestConfigFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		fifo:        "is a FIFO, not a regular file",
		"/dev/zero": "is a character device, not a regular file",
		dir:         "is a directory, not a regular file",
	} {
		done := make(chan error, 1)
		go func() {
			_, err := Load(path)
			done <- err
		}()
		select {
		case err := <-done:
			wantFileProblem(t, err, want)
		case <-time.After(time.Minute):
			t.Fatalf("Load(%s) still running after a minute", path)
		}
	}
	// The notes and Locate read the file through the same reader.
	problems := []Problem{{Path: "log.level", Msg: "x"}}
	Locate(fifo, problems)
	if problems[0].Line != 0 {
		t.Errorf("a line from a FIFO: %v", problems)
	}
	if notes := Notes(fifo, &Config{VRRP: VRRP{Instances: []Instance{{Version: 3, VirtualIPs: PlainVIPs(netip.MustParsePrefix("192.0.2.1/24"))}}}}); len(notes) != 1 || notes[0].Line != 0 {
		t.Errorf("notes for a FIFO: %v", notes)
	}
}

// TestConfigFileSizeLimit: a file over MaxFileSize is refused before it
// is decoded, with its size and the limit.
func TestConfigFileSizeLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, MaxFileSize+1); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	_, err := Load(p)
	wantFileProblem(t, err, "is 16777217 bytes, over the 16 MiB (16777216 bytes) a config file may be")

	// The limit holds for what is read, whatever fstat said.
	data, err := ReadFile("/proc/self/status")
	if err != nil || len(data) == 0 {
		t.Errorf("a file whose size fstat gives as 0: %d bytes, %v", len(data), err)
	}
}

// TestConfigFileMissing keeps its plain error: not a bad config, a file
// that is not there.
func TestConfigFileMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	var cerr *Error
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &cerr) {
		t.Fatalf("got %v, want ErrNotExist and no *Error", err)
	}
}
