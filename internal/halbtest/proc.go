package halbtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// Build builds cmd/halb for t and returns the binary's path.
func Build(t testing.TB) string {
	t.Helper()
	bin, err := BuildIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// BuildIn builds cmd/halb into dir and returns the binary's path: static,
// as the release builds it. It is Build for a TestMain, which has no t.
func BuildIn(dir string) (string, error) {
	bin := filepath.Join(dir, "halb")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/halb-lb/halb/cmd/halb")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build halb: %w\n%s", err, out)
	}
	return bin, nil
}

// Proc is one halb a test started in a network namespace: its standard
// output and error go to Log (and, if asked, line by line to Lines).
type Proc struct {
	Log *Log
	cmd *exec.Cmd
	// lines carries each line halb writes, for a test that reads them
	// in order; nil unless Options.Lines.
	lines chan string
	split *lineSplitter
	done  chan struct{} // closed once halb has exited and its output is in
	err   error         // cmd.Wait's, once done is closed
}

// Options are what a test may ask of Start.
type Options struct {
	// Log is where the output goes, such as one log for every start of
	// a node; with none, Start makes one and shows it if the test fails.
	Log *Log
	// Lines also hands each line on to Lines, which the test must then
	// read: halb blocks once 100 lines wait.
	Lines bool
}

// Start starts cmd (a halb command line) inside ns. When t ends, a halb
// still running is killed.
func Start(t testing.TB, ns *netnstest.NS, cmd *exec.Cmd, opts Options) *Proc {
	t.Helper()
	p := &Proc{Log: opts.Log, cmd: cmd, done: make(chan struct{})}
	if p.Log == nil {
		p.Log = &Log{}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("log of %s:\n%s", strings.Join(cmd.Args, " "), p.Log)
			}
		})
	}
	var out io.Writer = p.Log
	if opts.Lines {
		p.lines = make(chan string, 100)
		p.split = &lineSplitter{lines: p.lines, dropped: make(chan struct{})}
		out = io.MultiWriter(p.Log, p.split)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	go func() {
		p.err = cmd.Wait()
		if p.split != nil {
			p.split.flush()
			close(p.lines)
		}
		close(p.done)
	}()
	t.Cleanup(p.Kill)
	return p
}

// Pid is halb's process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to halb.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Lines is every line halb writes, in order, closed when it has exited.
func (p *Proc) Lines() <-chan string { return p.lines }

// Done is closed once halb has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether halb has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how halb exited (cmd.Wait's error), once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// ExitCode is halb's exit status once it has exited; -1 if a signal
// ended it.
func (p *Proc) ExitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

// ErrStillRunning is Stop's error for a halb that outlived its bound.
var ErrStillRunning = errors.New("halb did not exit in time and was killed")

// Stop sends sig and waits for halb to exit, for at most bound, which
// only catches a hang: after it, halb is killed and Stop says so.
// Otherwise it returns how halb exited.
func (p *Proc) Stop(sig os.Signal, bound time.Duration) error {
	_ = p.Signal(sig)
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%w: %s after %s", ErrStillRunning, sig, bound)
	}
}

// Kill kills halb, if it still runs, and waits for it. Lines no one
// will read now are dropped (the log keeps them), so that halb's output
// cannot block its end.
func (p *Proc) Kill() {
	if !p.Exited() {
		_ = p.Signal(syscall.SIGKILL)
	}
	if p.split != nil {
		p.split.drop()
	}
	<-p.done
}

// lineSplitter hands what is written on, one line at a time, until drop.
type lineSplitter struct {
	mu       sync.Mutex
	partial  []byte
	lines    chan<- string
	dropped  chan struct{}
	dropOnce sync.Once
}

func (s *lineSplitter) drop() { s.dropOnce.Do(func() { close(s.dropped) }) }

func (s *lineSplitter) send(line string) {
	select {
	case s.lines <- line:
	case <-s.dropped:
	}
}

func (s *lineSplitter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, b...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			return len(b), nil
		}
		s.send(string(s.partial[:i]))
		s.partial = s.partial[i+1:]
	}
}

// flush hands on a last line that has no newline.
func (s *lineSplitter) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.send(string(s.partial))
		s.partial = nil
	}
}
