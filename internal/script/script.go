// Package script runs the programs a halb configuration names (notify and
// track scripts, exec health checks) the way a daemon running as root
// must: argv without a shell, in / (as under systemd), in a cgroup v2 of
// its own and a process group of its own that are killed whole when the
// run ends, so that a script that forks leaves nothing behind, even a
// child that made itself a session of its own (cgroup.go: where no cgroup
// v2 is writable, the process group alone, and such a child escapes);
// and only a program that no one but root could have written (Check, the
// policy of internal/trust), checked again at every run and run from the
// very file descriptor that was checked, so that swapping the file or a
// symlink on its path between the check and the exec runs nothing else.
// The paths its arguments name are held to the same policy (args.go):
// root's /bin/sh given a user's script runs the user's code.
//
// A program is named by its absolute path. A bare name looked up on PATH
// is refused rather than resolved: PATH is the environment of whoever
// starts halb, so `halb check` and the daemon could find different
// programs under one name.
//
// It must never run a program through a shell it adds, a program or an
// argument path it has not checked at that run, or a file other than the
// descriptor it checked; and a run must never outlive its context: its
// process group, and its cgroup where there is one, are killed when the
// run ends.
package script

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/trust"
)

// beforeExec, when a test sets it, runs between the check and the exec:
// where an attacker would swap the file.
var beforeExec func()

// ErrTimeout: ctx ended before the program exited; its process group was
// killed.
var ErrTimeout = errors.New("no exit within the timeout: process group killed")

// maxOutput bounds what is kept of a program's output, so a chatty script
// cannot grow the daemon's memory.
const maxOutput = 4096

// ErrRefused: the program fails the policy (Check) and was not run.
var ErrRefused = errors.New("refused")

// RefusedError is a program that fails the policy; Err says which part
// of its path and the fix. It is ErrRefused.
type RefusedError struct{ Err error }

func (e *RefusedError) Error() string        { return "refused: " + e.Err.Error() }
func (e *RefusedError) Unwrap() error        { return e.Err }
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Check reports whether program may be run: an absolute path to a regular,
// executable file that, with every directory and symlink on its path, is
// owned by root (or the user halb runs as) and writable by no one else
// (internal/trust); for a #! script, its interpreter likewise. Its error
// names the component and the fix; it is ErrRefused for a policy failure
// and an *fs.PathError for a missing file.
func Check(program string) error {
	f, err := open(program)
	if err != nil {
		return err
	}
	f.Close()
	return nil
}

// open is Check that keeps the checked file open (O_PATH) to run it.
func open(program string) (*os.File, error) {
	f, err := openProgram(program)
	if err != nil {
		return nil, err
	}
	if err := checkInterpreter(f, program, 1); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// maxInterpreters is the kernel's bound on #! scripts run through #!
// scripts (BINPRM_MAX_RECURSION).
const maxInterpreters = 4

// checkInterpreter: the kernel runs a #! script's interpreter by the path
// on its first line, so the interpreter is a program halb runs too, and
// is held to the same policy. (Its path is then trusted, so it cannot be
// swapped between this check and the exec.) A first line halb cannot
// read is left to the exec, which fails the same way.
func checkInterpreter(f *os.File, program string, depth int) error {
	interp, arg, ok := shebang(f)
	if !ok {
		return nil
	}
	if depth > maxInterpreters {
		return &RefusedError{fmt.Errorf("%s: more than %d #! interpreters in a row", program, maxInterpreters)}
	}
	if arg != "" {
		if err := CheckArg(arg); err != nil {
			return fmt.Errorf("the #! line of %s: %w", program, err)
		}
	}
	i, err := openProgram(interp)
	var re *RefusedError
	switch {
	case errors.As(err, &re):
		return &RefusedError{fmt.Errorf("the #! interpreter of %s: %w", program, re.Err)}
	case err != nil:
		return fmt.Errorf("the #! interpreter of %s: %w", program, err)
	}
	defer i.Close()
	return checkInterpreter(i, interp, depth+1)
}

// shebang reads the interpreter's path from a #! first line, through the
// descriptor that was checked, and the argument the kernel gives it from
// the rest of the line (all of it, as one argument).
func shebang(f *os.File) (interp, arg string, ok bool) {
	r, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return "", "", false
	}
	defer r.Close()
	buf := make([]byte, 256) // the kernel reads no more (BINPRM_BUF_SIZE)
	n, _ := io.ReadFull(r, buf)
	line, found := bytes.CutPrefix(buf[:n], []byte("#!"))
	if !found {
		return "", "", false
	}
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	rest := strings.TrimSpace(string(line))
	if rest == "" {
		return "", "", false
	}
	interp, arg, _ = strings.Cut(strings.ReplaceAll(rest, "\t", " "), " ")
	return interp, strings.TrimSpace(arg), true
}

// openProgram opens one program under the policy: trust.Open, and
// executable.
func openProgram(program string) (*os.File, error) {
	f, err := trust.Open(program, trust.ForExec)
	var nr *trust.NotRegularError
	switch {
	case errors.Is(err, trust.ErrUntrusted):
		return nil, &RefusedError{err}
	case errors.As(err, &nr):
		return nil, &RefusedError{nr}
	case err != nil:
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if fi.Mode().Perm()&0o111 == 0 {
		f.Close()
		return nil, &RefusedError{fmt.Errorf("%s is not executable: chmod +x it", program)}
	}
	return f, nil
}

// programFD is the descriptor the child finds the checked program on: the
// first of exec.Cmd's ExtraFiles.
const programFD = 3

// Run runs argv, with env added to the daemon's environment, until it
// exits or ctx ends. It returns the start of the combined output, trimmed.
// The group is killed after a normal exit too: a script's processes live
// no longer than the script.
//
// argv[0] is checked (Check), and the paths its arguments name
// (CheckArgs), at every run; a command that fails is not started and the
// error wraps ErrRefused. It runs in /. The child executes the checked
// file through /proc/self/fd, so nothing done to the path after the check
// changes what runs. That descriptor stays open in the program, without
// close-on-exec: the interpreter of a #! script opens the script by the
// name the kernel hands it, /proc/self/fd/3, and so such a script sees
// that as its $0.
func Run(ctx context.Context, argv []string, env []string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	prog, err := open(argv[0])
	if err != nil {
		return "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	defer prog.Close()
	if err := CheckArgs(argv); err != nil {
		return "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	if beforeExec != nil {
		beforeExec()
	}
	cmd := &exec.Cmd{
		Path:       fmt.Sprintf("/proc/self/fd/%d", programFD),
		Args:       argv,
		ExtraFiles: []*os.File{prog},
		// The directory a relative argument is resolved against, and
		// judged against by CheckArgs: / as under systemd, whatever
		// directory halb was started from.
		Dir: "/",
	}
	cmd.Env = append(os.Environ(), env...)
	out := &headWriter{max: maxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Once the program has exited and its cgroup or group was killed, the
	// output it wrote is in the pipe already and is read at once; only a
	// process that escaped the kill (no cgroup, and it left the group)
	// can hold the pipe open, and it cannot hold Wait longer than this.
	cmd.WaitDelay = 100 * time.Millisecond
	sc, err := newScope()
	if err != nil {
		fellBack(err)
	} else {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = sc.fd
	}
	if err := cmd.Start(); err != nil {
		if sc != nil {
			sc.end()
		}
		return "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	prog.Close() // the child has its own copy
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
	if sc != nil {
		// Everyone the program started, whatever group or session they
		// moved to; the cgroup is gone before Run returns.
		sc.end()
	}
	<-exited
	err = cmd.Wait()
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
