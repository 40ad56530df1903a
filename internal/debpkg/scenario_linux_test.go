package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
)

// scenario is a shell script that runs as root in a mount and network
// namespace of its own (unshare: both die with it), with halb built for the
// test in $HALB, its config in $CONFIG and its log to go to $LOG; the
// config's control socket is in a directory of the test's own.
type scenario struct {
	dir    string
	config string
}

// newScenario writes config, whose @SOCKET@ becomes the control socket's
// path.
func newScenario(t *testing.T, config string) *scenario {
	t.Helper()
	s := &scenario{dir: t.TempDir()}
	run := filepath.Join(s.dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	s.config = filepath.Join(s.dir, "halb.yaml")
	config = strings.ReplaceAll(config, "@SOCKET@", filepath.Join(run, "halb.sock"))
	if err := os.WriteFile(s.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// run runs script, with env besides, within two minutes, and returns what
// it printed; a script that fails fails the test, with halb's log.
func (s *scenario) run(t *testing.T, script string, env ...string) string {
	t.Helper()
	bin := halbtest.Build(t)
	log := filepath.Join(s.dir, "halb.log")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--net", "sh", "-c", script)
	cmd.Env = append(append(os.Environ(), "HALB="+bin, "CONFIG="+s.config, "LOG="+log), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		halbLog, _ := os.ReadFile(log)
		t.Fatalf("scenario: %v\n%s\nhalb's log:\n%s", err, out, halbLog)
	}
	return string(out)
}
