package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The amd64 package as `make deb` builds it, read the way an operator or
// Debian's tools would: its files with their modes and owners, its
// conffiles, its maintainer scripts, the unit and config it installs, and
// lintian's verdict.
func TestMakeDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds halb and a package; skipped with -short")
	}
	need(t, "dpkg-deb", "lintian")
	dir := t.TempDir()
	if out, err := exec.Command("make", "-C", "../..", "deb", "DEB_ARCHES=amd64", "BINDIR="+dir).CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "halb_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb wrote %q, want one halb_*_amd64.deb", debs)
	}
	deb := debs[0]

	t.Run("files", func(t *testing.T) { checkFiles(t, deb) })
	t.Run("control", func(t *testing.T) { checkControl(t, deb) })
	root := filepath.Join(dir, "root")
	run(t, "dpkg-deb", "-x", deb, root)
	t.Run("config", func(t *testing.T) { checkConfig(t, root) })
	t.Run("unit", func(t *testing.T) { checkUnit(t, root) })
	t.Run("lintian", func(t *testing.T) { checkLintian(t, deb) })
}

// need skips without a tool, or fails with CI=true (.ci/run installs them).
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing (.ci/run installs it)", tool)
			}
			t.Skipf("%s is missing (apt-get install %s)", tool, tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// wantFiles are the package's files (directories aside) and their modes.
var wantFiles = map[string]string{
	"./usr/sbin/halb":                                        "-rwxr-xr-x",
	"./usr/lib/systemd/system/halb.service":                  "-rw-r--r--",
	"./etc/halb/halb.yaml":                                   "-rw-------",
	"./etc/default/halb":                                     "-rw-r--r--",
	"./usr/share/doc/halb/examples/halb.yaml":                "-rw-r--r--",
	"./usr/share/doc/halb/examples/pi-ipvs.yaml":             "-rw-r--r--",
	"./usr/share/doc/halb/examples/modules-load.d/halb.conf": "-rw-r--r--",
	"./usr/share/doc/halb/copyright":                         "-rw-r--r--",
	"./usr/share/doc/halb/changelog.gz":                      "-rw-r--r--",
	"./usr/share/doc/halb/README.md.gz":                      "-rw-r--r--",
	"./usr/share/lintian/overrides/halb":                     "-rw-r--r--",
	"./usr/share/bash-completion/completions/halb":           "-rw-r--r--",
	"./usr/share/zsh/vendor-completions/_halb":               "-rw-r--r--",
	"./usr/share/fish/vendor_completions.d/halb.fish":        "-rw-r--r--",
	"./usr/share/man/man8/halb.8.gz":                         "-rw-r--r--",
	"./usr/share/man/man8/halb-run.8.gz":                     "-rw-r--r--",
	"./usr/share/man/man8/halb-check.8.gz":                   "-rw-r--r--",
	"./usr/share/man/man8/halb-probe.8.gz":                   "-rw-r--r--",
	"./usr/share/man/man8/halb-status.8.gz":                  "-rw-r--r--",
}

// One man page per command; the rest are listed exactly.
var manPage = regexp.MustCompile(`^\./usr/share/man/man8/halb(-[a-z-]+)?\.8\.gz$`)

func checkFiles(t *testing.T, deb string) {
	got := map[string]string{}
	for line := range strings.Lines(run(t, "dpkg-deb", "-c", deb)) {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		mode, owner, path := f[0], f[1], f[5]
		if owner != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", path, owner)
		}
		if mode[0] == 'd' {
			if mode != "drwxr-xr-x" {
				t.Errorf("directory %s: %s, want drwxr-xr-x", path, mode)
			}
			continue
		}
		got[path] = mode
	}
	for path, want := range wantFiles {
		if got[path] != want {
			t.Errorf("%s: mode %q, want %q", path, got[path], want)
		}
	}
	for path, mode := range got {
		if _, ok := wantFiles[path]; !ok && !(manPage.MatchString(path) && mode == "-rw-r--r--") {
			t.Errorf("unexpected %s %s in the package", mode, path)
		}
	}
}

// checkControl: the conffiles are the two files an operator edits, and
// installing runs no script but the postinst's one deb-systemd-helper
// update-state (the record a purge removes halb's links by): nothing
// enables or starts halb, or touches a link, an address or a pin, until
// the operator does.
func checkControl(t *testing.T, deb string) {
	conffiles := strings.Fields(run(t, "dpkg-deb", "-I", deb, "conffiles"))
	if want := []string{"/etc/default/halb", "/etc/halb/halb.yaml"}; !slices.Equal(slices.Sorted(slices.Values(conffiles)), want) {
		t.Errorf("conffiles %q, want %q", conffiles, want)
	}
	info := run(t, "dpkg-deb", "-I", deb)
	if strings.Contains(info, " preinst ") {
		t.Errorf("the package has a preinst:\n%s", info)
	}
	postinst := run(t, "dpkg-deb", "-I", deb, "postinst")
	if cmds := commandLines(postinst); !slices.Equal(cmds, []string{"deb-systemd-helper update-state halb.service >/dev/null || true"}) {
		t.Errorf("the postinst runs %q, want deb-systemd-helper update-state alone:\n%s", cmds, postinst)
	}
	postrm := run(t, "dpkg-deb", "-I", deb, "postrm")
	if !strings.Contains(postrm, "deb-systemd-helper purge halb.service") {
		t.Error("the postrm does not purge halb.service's links")
	}
	if !strings.Contains(postrm, "systemctl --system daemon-reload") {
		t.Error("the postrm leaves systemd holding the removed unit (no daemon-reload)")
	}
	for _, field := range []string{"Package: halb", "Architecture: amd64", "Section: net"} {
		if !strings.Contains(info, "\n "+field+"\n") {
			t.Errorf("control has no %q:\n%s", field, info)
		}
	}
	prerm := run(t, "dpkg-deb", "-I", deb, "prerm")
	if m := startsHalb.FindString(prerm); m != "" {
		t.Errorf("the prerm runs %q:\n%s", m, prerm)
	}
}

// commandLines is a maintainer script's lines that run a command: not a
// comment, a shell keyword, a test or an exit.
func commandLines(script string) []string {
	var out []string
	for line := range strings.Lines(script) {
		line = strings.TrimSpace(line)
		first, _, _ := strings.Cut(line, " ")
		switch first {
		case "", "set", "case", "esac", ";;", "if", "fi", "exit":
			continue
		}
		if strings.HasPrefix(line, "#") || strings.HasSuffix(line, ")") {
			continue // a comment, or a case pattern
		}
		out = append(out, line)
	}
	return out
}

var startsHalb = regexp.MustCompile(`(systemctl|deb-systemd-invoke|deb-systemd-helper)\s+(start|restart|enable|reload)`)

// checkConfig: the installed config configures nothing and is valid, so
// that `halb check` passes and `halb run` would idle.
func checkConfig(t *testing.T, root string) {
	cmd := exec.Command(filepath.Join(root, "usr/sbin/halb"), "check", "-c", filepath.Join(root, "etc/halb/halb.yaml"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("halb check on the packaged config: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "(none)"); n != 2 {
		t.Errorf("halb check should list no instance and no service:\n%s", out)
	}
}

// checkUnit: the packaged unit runs the packaged binary, and its sandbox
// keeps the exposure below 5.0 (systemd-analyze's MEDIUM).
func checkUnit(t *testing.T, root string) {
	unit := filepath.Join(root, "usr/lib/systemd/system/halb.service")
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStartPre=/usr/sbin/halb check -c /etc/halb/halb.yaml\n", "ExecStart=/usr/sbin/halb run -c /etc/halb/halb.yaml\n", "EnvironmentFile=-/etc/default/halb\n", "Type=notify\n"} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("the unit has no %q", want)
		}
	}
	for line := range strings.Lines(string(data)) {
		if !strings.HasPrefix(line, "#") && strings.Contains(line, "/usr/local/bin") {
			t.Errorf("the packaged unit runs /usr/local/bin: %s", line)
		}
	}
	need(t, "systemd-analyze")
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for halb.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level >= 5.0 {
		t.Errorf("exposure %.1f, want below 5.0:\n%s", level, out)
	}
}

// checkLintian: no errors; the warnings are listed in the test's log.
func checkLintian(t *testing.T, deb string) {
	out, err := exec.Command("lintian", "--fail-on", "error", deb).CombinedOutput()
	t.Logf("lintian %s:\n%s", filepath.Base(deb), out)
	if err != nil {
		t.Errorf("lintian: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "E: ") {
			t.Errorf("lintian error: %s", strings.TrimSpace(line))
		}
	}
}

func TestDebVersion(t *testing.T) {
	date := time.Date(2026, 12, 6, 21, 55, 32, 0, time.UTC)
	for _, c := range []struct{ describe, want string }{
		{"eaf942e", "0.0~git20261206215532.eaf942e"},
		{"eaf942e-dirty", "0.0~git20261206215532.eaf942e+dirty"},
		{"1234567", "0.0~git20261206215532.eaf942e"}, // a hash of digits is no release
		{"v1.2.0", "1.2.0"},
		{"1.2", "1.2"},
		{"v1.2.0-3-geaf942e", "1.2.0+3.geaf942e"},
		{"v1.2.0-3-geaf942e-dirty", "1.2.0+3.geaf942e+dirty"},
	} {
		if got := debVersion(c.describe, "eaf942e", date); got != c.want {
			t.Errorf("debVersion(%q) = %q, want %q", c.describe, got, c.want)
		}
	}
}

// A binary for another architecture never goes into a package.
func TestCheckBinary(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64", "arm": "armhf"}[runtime.GOARCH]
	if arch == "" {
		t.Skipf("no Debian package for this test binary's architecture %s", runtime.GOARCH)
	}
	if err := checkBinary(self, arch); err != nil && arch != "armhf" {
		t.Errorf("checkBinary(itself, %s): %v", arch, err)
	}
	for _, other := range []string{"amd64", "arm64", "armhf", "i386"} {
		if other == arch {
			continue
		}
		if err := checkBinary(self, other); err == nil {
			t.Errorf("checkBinary(a %s binary, %s) accepted it", arch, other)
		}
	}
}
