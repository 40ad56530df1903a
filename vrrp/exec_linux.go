package vrrp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// errTimeout: the program did not finish in time and its process group
// was killed.
var errTimeout = errors.New("killed at its timeout")

// runProgram runs argv (no shell) with extra environment, in a process
// group of its own that is killed whole at the timeout, so that a script
// that forks cannot leave children behind. It returns the combined output,
// cut to a size a log line can hold.
func runProgram(ctx context.Context, timeout time.Duration, argv []string, env []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Children holding the output pipe open must not keep Wait waiting.
	cmd.WaitDelay = time.Second
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	output := strings.TrimSpace(out.String())
	if len(output) > 2048 {
		output = output[:2048] + "..."
	}
	if ctx.Err() == context.DeadlineExceeded {
		// The group leader may have exited already; its children go too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return output, fmt.Errorf("%s: %w after %v", argv[0], errTimeout, timeout)
	}
	return output, err
}
