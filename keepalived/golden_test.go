package keepalived

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/golden"
)

// fakeLookPath stands in for this host's PATH: the golden outputs must
// not depend on what the test machine has installed.
func fakeLookPath(name string) (string, bool) { return "/usr/bin/" + name, true }

// TestGolden converts each configuration under testdata/golden (written
// for these tests: a Kubernetes API pair, an HAProxy pair, LVS-NAT and
// LVS-DR farms, a sync group with notify scripts, an IPv6 pair) and
// compares the YAML and the report with the files beside it; the YAML
// must pass halb's own validation (config.Parse: `halb check` less the
// look at this host's scripts, which these files name but this host has
// not).
func TestGolden(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join("testdata", "golden", "*"))
	if err != nil || len(dirs) < 6 {
		t.Fatalf("golden cases: %v, %v", dirs, err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			res, err := Import(filepath.Join(dir, "keepalived.conf"), ImportOptions{
				Options:  Options{ConfigID: "lb-a"},
				LookPath: fakeLookPath,
			})
			if err != nil {
				t.Fatal(err)
			}
			var report strings.Builder
			if err := res.WriteReport(&report); err != nil {
				t.Fatal(err)
			}
			if res.Exact() {
				report.WriteString("exact\n")
			} else {
				report.WriteString("approximated\n")
			}
			golden.Compare(t, filepath.Join(dir, "halb.yaml"), res.YAML)
			golden.Compare(t, filepath.Join(dir, "report.txt"), []byte(report.String()))
			if _, err := config.Parse(res.YAML, filepath.Join(dir, "halb.yaml")); err != nil {
				t.Errorf("the converted configuration does not pass halb's validation:\n%v", err)
			}
		})
	}
}

// TestGoldenReportsNameTheirLines: every report line points at a line of
// the file it names that holds its keyword.
func TestGoldenReportsNameTheirLines(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join("testdata", "golden", "*"))
	n := 0
	for _, dir := range dirs {
		res, err := Import(filepath.Join(dir, "keepalived.conf"), ImportOptions{Options: Options{ConfigID: "lb-a"}, LookPath: fakeLookPath})
		if err != nil {
			t.Fatal(err)
		}
		for _, note := range res.Notes {
			data, err := os.ReadFile(note.File)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(data), "\n")
			if note.Line < 1 || note.Line > len(lines) || !strings.Contains(lines[note.Line-1], note.Keyword) {
				t.Errorf("%s: line %d does not hold %q", note, note.Line, note.Keyword)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no report lines at all: the golden cases must exercise the report")
	}
}
