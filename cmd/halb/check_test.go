package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckExamples(t *testing.T) {
	for file, names := range map[string][]string{
		"../../configs/halb.yaml":    {"VI_WEB4", "VI_WEB6", "web", "dns", "[2001:db8::100]:443/tcp"},
		"../../configs/pi-ipvs.yaml": {"VI_PI", "k8s-api", "ingress", "mode ipvs"},
	} {
		code, out, errs := run(t, "check", "-c", file)
		if code != exitOK {
			t.Fatalf("halb check -c %s = %d, want 0\n%s", file, code, errs)
		}
		for _, n := range names {
			if !strings.Contains(out, n) {
				t.Errorf("summary of %s does not mention %q:\n%s", file, n, out)
			}
		}
	}
}

// Every broken config in config/testdata/broken makes `halb check` exit 2
// and name the field path its first line promises.
func TestCheckBrokenConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../config/testdata/broken/*.yaml")
	if len(files) < 30 {
		t.Fatalf("found %d broken configs, want at least 30", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(f)
			sc.Scan()
			f.Close()
			fields := strings.Fields(strings.TrimPrefix(sc.Text(), "# want: "))
			path, line := fields[0], fields[1]
			want := file + line + ": "
			if path != "-" {
				want += path + ": "
			}

			code, out, errs := run(t, "check", "-c", file)
			if code != exitBadConfig {
				t.Fatalf("exit status %d, want %d\nstdout: %s\nstderr: %s", code, exitBadConfig, out, errs)
			}
			if !strings.Contains(errs, want) {
				t.Errorf("stderr does not contain %q:\n%s", want, errs)
			}
		})
	}
}

func TestCheckMissingFile(t *testing.T) {
	code, _, errs := run(t, "check", "-c", filepath.Join(t.TempDir(), "none.yaml"))
	if code != exitFailure || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	t.Setenv("HALB_CONFIG", "../../configs/pi-ipvs.yaml")
	if code, out, errs := run(t, "check"); code != exitOK || !strings.Contains(out, "VI_PI") {
		t.Errorf("HALB_CONFIG not used: exit %d\n%s%s", code, out, errs)
	}
	t.Setenv("HALB_DATAPATH_MODE", "xdp")
	code, _, errs := run(t, "check")
	if code != exitBadConfig || !strings.Contains(errs, "services[0].scheduler") {
		t.Errorf("HALB_DATAPATH_MODE=xdp must make the IPVS-only scheduler invalid: exit %d\n%s", code, errs)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version")
	for _, w := range []string{"halb ", "commit", "go1.", "linux/"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("version output lacks %q: %s", w, out)
		}
	}
}
