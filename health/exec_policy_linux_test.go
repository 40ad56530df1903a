package health

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/script"
	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// TestExecRefusedAtRun: an exec check whose program became writable by
// others after the config was read, and that a local user then edited, is
// a failed check at its next run, and the user's code does not run.
func TestExecRefusedAtRun(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, _ := trusttest.OpenDir(t, 0o755)
	prog := writeScript(t, base, "check", "exit 0\n")
	marker := filepath.Join(base, "owned")
	cfg := &config.Config{Services: []config.Service{{HealthCheck: config.HealthCheck{Type: TypeExec, Command: []string{prog}}}}}
	if problems := config.CheckScripts(cfg); len(problems) != 0 {
		t.Fatalf("the check before the mistake: %v", problems)
	}
	if err := runExec(t, []string{prog}, 30*time.Second); err != nil {
		t.Fatalf("the check before the mistake: %v", err)
	}

	if err := os.Chmod(prog, 0o777); err != nil {
		t.Fatal(err)
	}
	u.MustSh(t, "printf '#!/bin/sh\\ntouch "+marker+"\\n' > "+prog)
	if problems := config.CheckScripts(cfg); len(problems) != 1 || !strings.Contains(problems[0].String(), "services[0].health_check.command[0]") {
		t.Errorf("halb check after the mistake: %v", problems)
	}
	err := runExec(t, []string{prog}, 30*time.Second)
	if !errors.Is(err, script.ErrRefused) || !strings.Contains(err.Error(), "mode 0777") {
		t.Errorf("the check after the mistake: %v, want a failure that is script.ErrRefused", err)
	}
	if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s exists (%v): the stranger's code ran as root", marker, err)
	}
}
