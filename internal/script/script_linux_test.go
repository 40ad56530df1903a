package script

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

func run(t *testing.T, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Run(ctx, argv, nil)
}

func writeScript(t *testing.T, p, body string, perm os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// absent fails the test if the marker a stranger's code would write
// exists: their code ran as root.
func absent(t *testing.T, marker string) {
	t.Helper()
	if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s exists (%v): the stranger's code ran as root", marker, err)
	}
}

// TestRunChecksEveryRun: a script that was safe when the config was read
// and became writable by others afterwards (a chmod 0777 by mistake), and
// that a local user then edited, is refused at its next run: nothing of
// the user's runs.
func TestRunChecksEveryRun(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, _ := trusttest.OpenDir(t, 0o755)
	marker := filepath.Join(base, "owned")
	prog := writeScript(t, filepath.Join(base, "check"), "#!/bin/sh\necho root\n", 0o755)
	if err := Check(prog); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, prog); err != nil || out != "root" {
		t.Fatalf("safe script: %q, %v", out, err)
	}

	if err := os.Chmod(prog, 0o777); err != nil {
		t.Fatal(err)
	}
	u.MustSh(t, "printf '#!/bin/sh\\ntouch "+marker+"\\n' > "+prog)
	_, err := run(t, prog)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "mode 0777") || !strings.HasPrefix(err.Error(), "start "+prog) {
		t.Fatalf("a script others can write: %v, want a start error that is ErrRefused naming mode 0777", err)
	}
	absent(t, marker)
}

// TestRunStrangersSymlink: a local user's symlink to a root-owned program
// is refused at every run, and repointing it to their own script changes
// nothing.
func TestRunStrangersSymlink(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	marker := filepath.Join(base, "owned")
	good := writeScript(t, filepath.Join(base, "good"), "#!/bin/sh\necho root\n", 0o755)
	link := filepath.Join(shared, "x")
	u.MustSh(t, "ln -s "+good+" "+link)
	if err := Check(link); !errors.Is(err, ErrRefused) {
		t.Fatalf("Check of the stranger's link: %v, want ErrRefused", err)
	}
	if _, err := run(t, link); !errors.Is(err, ErrRefused) {
		t.Fatalf("run of the stranger's link: %v, want ErrRefused", err)
	}
	mine := filepath.Join(shared, "mine")
	u.MustSh(t, "printf '#!/bin/sh\\ntouch "+marker+"\\n' > "+mine+" && chmod 755 "+mine+" && ln -sfn "+mine+" "+link)
	if _, err := run(t, link); !errors.Is(err, ErrRefused) {
		t.Fatalf("run of the repointed link: %v, want ErrRefused", err)
	}
	absent(t, marker)
}

// TestRunExecsTheCheckedFile: a swap of the path between the check and
// the exec (here by rename, the one step an attacker with a way to write
// the directory would take) does not change what runs: the child executes
// the descriptor that was checked. Both a #! script and a binary.
func TestRunExecsTheCheckedFile(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "owned")
	prog := writeScript(t, filepath.Join(dir, "prog"), "#!/bin/sh\necho checked \"$@\"\n", 0o755)
	evil := writeScript(t, filepath.Join(dir, "evil"), "#!/bin/sh\ntouch "+marker+"\necho swapped\n", 0o755)
	swapped := false
	beforeExec = func() {
		if err := os.Rename(evil, prog); err != nil {
			t.Error(err)
		}
		swapped = true
	}
	defer func() { beforeExec = nil }()
	out, err := run(t, prog, "a b")
	if !swapped || err != nil || out != "checked a b" {
		t.Fatalf("swapped %v: %q, %v; want the checked script's output", swapped, out, err)
	}
	absent(t, marker)

	// A binary, by copy: the same holds without an interpreter.
	bin := filepath.Join(dir, "echo")
	data, err := os.ReadFile("/bin/echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	evil = writeScript(t, filepath.Join(dir, "evil"), "#!/bin/sh\ntouch "+marker+"\n", 0o755)
	beforeExec = func() {
		if err := os.Rename(evil, bin); err != nil {
			t.Error(err)
		}
	}
	if out, err := run(t, bin, "binary"); err != nil || out != "binary" {
		t.Fatalf("binary: %q, %v", out, err)
	}
	absent(t, marker)
}

// TestCheckRefuses: the policy's other refusals, each before anything
// runs.
func TestCheckRefuses(t *testing.T) {
	dir := t.TempDir()
	plain := writeScript(t, filepath.Join(dir, "plain"), "#!/bin/sh\n", 0o644)
	for _, tc := range []struct {
		program string
		refused bool
		want    string
	}{
		{"sh", true, "not an absolute path"}, // never looked up on PATH
		{plain, true, "not executable: chmod +x"},
		{dir, true, "is a directory, not a regular file"},
		{filepath.Join(dir, "missing"), false, "no such file or directory"},
	} {
		err := Check(tc.program)
		if err == nil || errors.Is(err, ErrRefused) != tc.refused || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%s) = %v, want refused %v saying %q", tc.program, err, tc.refused, tc.want)
		}
		if _, err := run(t, tc.program); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%s) = %v, want an error saying %q", tc.program, err, tc.want)
		}
	}
}

// TestCheckInterpreter: the kernel runs a #! script's interpreter by its
// path, so an interpreter others could replace is refused like the script
// would be, and a missing one is an error before anything runs.
func TestCheckInterpreter(t *testing.T) {
	base := t.TempDir()
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	interp := filepath.Join(open, "sh")
	if err := os.WriteFile(interp, sh, 0o755); err != nil {
		t.Fatal(err)
	}
	viaOpen := writeScript(t, filepath.Join(base, "via-open"), "#!"+interp+" -e\necho ran\n", 0o755)
	viaMissing := writeScript(t, filepath.Join(base, "via-missing"), "#! "+filepath.Join(base, "nosuch")+"\necho ran\n", 0o755)
	viaRelative := writeScript(t, filepath.Join(base, "via-relative"), "#!sh\necho ran\n", 0o755)
	nested := writeScript(t, filepath.Join(base, "nested"), "#!"+viaOpen+"\n", 0o755)
	good := writeScript(t, filepath.Join(base, "good"), "#!/bin/sh -e\necho ran\n", 0o755)

	for _, tc := range []struct {
		program string
		refused bool
		want    string
	}{
		{viaOpen, true, "the #! interpreter of " + viaOpen + ": " + open + " is writable by a user other than root"},
		{nested, true, "the #! interpreter of " + viaOpen + ": " + open + " is writable"},
		{viaRelative, true, "the #! interpreter of " + viaRelative + ": sh is not an absolute path"},
		{viaMissing, false, "the #! interpreter of " + viaMissing + ": open " + filepath.Join(base, "nosuch") + ": no such file"},
	} {
		err := Check(tc.program)
		if err == nil || errors.Is(err, ErrRefused) != tc.refused || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%s) = %v, want refused %v saying %q", tc.program, err, tc.refused, tc.want)
		}
		if out, err := run(t, tc.program); err == nil || out != "" {
			t.Errorf("Run(%s) = %q, %v; want an error and nothing run", tc.program, out, err)
		}
	}
	if out, err := run(t, good); err != nil || out != "ran" {
		t.Errorf("a script through /bin/sh: %q, %v", out, err)
	}
}
