package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as a file, the path `halb check`
// takes, and to Parse beside it. For every input:
//   - Load and Parse return a config or an *Error listing at least one
//     problem, never both and never neither, and never panic;
//   - Parse decides the same way twice (no map order leaks into the result
//     or the order of the problems);
//   - Load differs from Parse only by CheckScripts' problems, which concern
//     notify and track scripts only;
//   - every problem says something, and its line is in the file;
//   - a config Parse accepts validates again without a problem.
func FuzzLoad(f *testing.F) {
	for _, glob := range []string{"../configs/*.yaml", "testdata/broken/*.yaml"} {
		files, err := filepath.Glob(glob)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	// One file per fuzzing process, rewritten for each input: the
	// inputs of one process run one after the other.
	path := filepath.Join(f.TempDir(), "halb.yaml")

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, path)
		problems := checkResult(t, "Parse", data, cfg, err)

		cfg2, err2 := Parse(data, path)
		if !reflect.DeepEqual(cfg, cfg2) || !reflect.DeepEqual(err, err2) {
			t.Fatalf("Parse is not deterministic:\n%v, %v\nthen\n%v, %v", cfg, err, cfg2, err2)
		}
		if cfg != nil {
			if again := Validate(cfg); len(again) > 0 {
				t.Fatalf("Parse accepted a config that Validate then refuses: %v", again)
			}
		}

		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		lcfg, lerr := Load(path)
		lproblems := checkResult(t, "Load", data, lcfg, lerr)
		switch {
		case cfg == nil:
			if !reflect.DeepEqual(lproblems, problems) {
				t.Fatalf("Load and Parse disagree:\nLoad:  %v\nParse: %v", lerr, err)
			}
		case lcfg != nil:
			if !reflect.DeepEqual(lcfg, cfg) {
				t.Fatalf("Load and Parse accepted different configs:\n%+v\n%+v", lcfg, cfg)
			}
		default:
			// Only the scripts can fail a config Parse accepts.
			for _, p := range lproblems {
				if !strings.HasSuffix(p.Path, ".notify") && !strings.Contains(p.Path, ".track_scripts[") {
					t.Fatalf("Load refused what Parse accepted, not for a script: %v", p)
				}
			}
		}
	})
}

// checkResult checks what Parse or Load (named by op) returned for data,
// and returns the problems.
func checkResult(t *testing.T, op string, data []byte, cfg *Config, err error) []Problem {
	t.Helper()
	if (cfg == nil) == (err == nil) {
		t.Fatalf("%s must return a config or an error, got %v, %v", op, cfg, err)
	}
	if err == nil {
		return nil
	}
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) == 0 {
		t.Fatalf("%s: error without problems: %v", op, err)
	}
	// An upper bound: YAML breaks lines at \r as well as \n, and YAML
	// 1.1 at NEL, LS and PS.
	lines := 1
	for _, sep := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
		lines += bytes.Count(data, []byte(sep))
	}
	for _, p := range cerr.Problems {
		if p.Msg == "" {
			t.Fatalf("%s: a problem without a message: %+v", op, p)
		}
		if p.Line < 0 || p.Line > lines {
			t.Fatalf("%s: problem on line %d of a %d-line file: %v", op, p.Line, lines, p)
		}
	}
	return cerr.Problems
}
