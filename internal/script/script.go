// Package script runs the programs a halb configuration names (notify and
// track scripts, exec health checks) the way a daemon running as root
// must: argv without a shell, in a process group of its own that is killed
// whole when the run ends, so a script that forks leaves nothing behind.
package script

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrTimeout: ctx ended before the program exited; its process group was
// killed.
var ErrTimeout = errors.New("no exit within the timeout: process group killed")

// maxOutput bounds what is kept of a program's output, so a chatty script
// cannot grow the daemon's memory.
const maxOutput = 4096

// Run runs argv, with env added to the daemon's environment, until it
// exits or ctx ends. It returns the start of the combined output, trimmed.
// The group is killed after a normal exit too: a script's processes live
// no longer than the script.
func Run(ctx context.Context, argv []string, env []string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out := &headWriter{max: maxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A process that left the group (setsid) and kept the output pipe
	// open cannot hold Wait for longer than this.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExited(pid)
	}()
	timedOut := false
	select {
	case <-exited:
	case <-ctx.Done():
		timedOut = true
	}
	// Only cmd.Wait reaps the leader, and until then its pid, which is the
	// group's id, cannot be reused: this signal cannot reach a stranger's
	// group that took the number over. (exec.CommandContext's Cancel could
	// run after the reap, so it is not used.)
	_ = unix.Kill(-pid, unix.SIGKILL)
	<-exited
	err := cmd.Wait()
	output := strings.TrimSpace(string(out.buf))
	switch {
	case cmd.ProcessState != nil && cmd.ProcessState.Success():
		return output, nil
	case timedOut:
		return output, ErrTimeout
	}
	return output, err
}

// waitExited returns when process pid has exited, without reaping it
// (WNOWAIT): the zombie keeps its pid, and so its group id, reserved.
func waitExited(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return
		}
	}
}

// headWriter keeps the first max bytes written to it and discards the
// rest.
type headWriter struct {
	max int
	buf []byte
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.max - len(w.buf); room > 0 {
		w.buf = append(w.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// OneLine is output on one line and cut short, for a log attribute or a
// reason.
func OneLine(output string) string {
	s := strings.Join(strings.Fields(output), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
