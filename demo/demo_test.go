package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/netnstest"
)

// TestDemo runs `make demo`'s program as a newcomer would, built afresh
// with a fresh halb, and reads its output for the evidence of each phase;
// then it interrupts one run with Ctrl-C and kills another outright, and
// after each looks for anything left behind.
func TestDemo(t *testing.T) {
	netnstest.Require(t)
	bin := t.TempDir()
	halb, demo := filepath.Join(bin, "halb"), filepath.Join(bin, "demo")
	goBuild(t, halb, "../cmd/halb")
	goBuild(t, demo, ".")
	before := rootLinks(t)

	t.Run("runs to the end", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, demo, "-halb", halb, "-phase", "2s").CombinedOutput()
		t.Logf("demo output:\n%s", out)
		if err != nil {
			t.Fatalf("demo: %v", err)
		}
		checkPhases(t, string(out))
		checkNothingLeft(t, before, halb, demo)
	})

	t.Run("Ctrl-C", func(t *testing.T) {
		cmd, lines := startDemo(t, demo, halb)
		waitLine(t, lines, "phase 1:")
		_ = cmd.Process.Signal(os.Interrupt)
		waitLine(t, lines, "stopping and cleaning up")
		// A second Ctrl-C while it cleans up does not cut it short.
		_ = cmd.Process.Signal(os.Interrupt)
		if !waitLine(t, lines, "cleaned up:") {
			t.Errorf("no clean-up line after Ctrl-C")
		}
		if code := exitCode(t, cmd); code != 130 {
			t.Errorf("exit status after Ctrl-C %d, want 130", code)
		}
		checkNothingLeft(t, before, halb, demo)
	})

	t.Run("killed, then -clean", func(t *testing.T) {
		cmd, lines := startDemo(t, demo, halb)
		waitLine(t, lines, "phase 1:")
		_ = cmd.Process.Kill()
		exitCode(t, cmd)
		// What a killed demo leaves: its namespaces and pins. Its halb
		// processes die with it (Pdeathsig).
		if names, _ := namespaces(); len(names) != 7 {
			t.Errorf("namespaces after the demo was killed: %v, want its 7", names)
		}
		waitNoProcess(t, halb)
		out, err := exec.Command(demo, "-clean").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "removing what an earlier demo left") {
			t.Fatalf("demo -clean: %v\n%s", err, out)
		}
		checkNothingLeft(t, before, halb, demo)
	})
}

// The summary lines: "    steady     VIP at lb1  answers be1 9, be2 8, be3 8  failed 0".
var summaryRE = regexp.MustCompile(`(?m)^ +(steady|failover|drained) +VIP at ([a-z0-9 ]+?)  answers be1 (\d+), be2 (\d+), be3 (\d+)  failed (\d+)$`)

type phaseTally struct {
	vipAt            string
	be1, be2, be3, f int
}

func checkPhases(t *testing.T, out string) {
	t.Helper()
	phases := map[string]phaseTally{}
	for _, m := range summaryRE.FindAllStringSubmatch(out, -1) {
		n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
		phases[m[1]] = phaseTally{vipAt: m[2], be1: n(3), be2: n(4), be3: n(5), f: n(6)}
	}
	if len(phases) != 3 {
		t.Fatalf("the summary has %d of its 3 phases: %v", len(phases), phases)
	}
	if p := phases["steady"]; p.vipAt != "lb1" || p.be1 == 0 || p.be2 == 0 || p.be3 == 0 || p.f != 0 {
		t.Errorf("steady: %+v, want the VIP at lb1 and answers from all three backends", p)
	}
	if p := phases["failover"]; p.vipAt != "lb2" || p.be1+p.be2+p.be3 == 0 || p.f != 0 {
		t.Errorf("failover: %+v, want the VIP at lb2 and answers going on", p)
	}
	if p := phases["drained"]; p.vipAt != "lb2" || p.be2 != 0 || p.be1 == 0 || p.be3 == 0 || p.f != 0 {
		t.Errorf("drained: %+v, want no answer from be2 and every request answered by be1 or be3", p)
	}
	// halb's own word for each event, from its log and halb status.
	for _, want := range []string{
		"lb1 halb: level=INFO msg=transition instance=VI_DEMO vrid=51 from=BACKUP to=MASTER",
		"lb2 halb: level=INFO msg=transition instance=VI_DEMO vrid=51 from=BACKUP to=MASTER",
		"lb2 halb: level=INFO msg=\"backend health\" service=web backend=192.0.2.12:80 check=http from=healthy to=unhealthy",
		"VI_DEMO   eth0       51    MASTER",
		"192.0.2.12:80  0 (drained)",
		"cleaned up: no namespace, link, pin or process of the demo is left",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
}

// checkNothingLeft looks for anything of the demo's: namespaces, links in
// the test's own namespace, its state directory and bpf filesystem, its
// processes.
func checkNothingLeft(t *testing.T, before map[string]bool, binaries ...string) {
	t.Helper()
	if names, err := namespaces(); err != nil || len(names) > 0 {
		t.Errorf("namespaces left: %v (%v)", names, err)
	}
	for name := range rootLinks(t) {
		if !before[name] {
			t.Errorf("link %s left in the host's namespace", name)
		}
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left (%v)", stateDir, err)
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err != nil || strings.Contains(string(mounts), prefix) || strings.Contains(string(mounts), stateDir) {
		t.Errorf("mounts of the demo left (%v):\n%s", err, mounts)
	}
	for _, b := range binaries {
		if pids := processesOf(b); len(pids) > 0 {
			t.Errorf("processes of %s left: %v", b, pids)
		}
	}
}

func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

func rootLinks(t *testing.T) map[string]bool {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, i := range ifs {
		names[i.Name] = true
	}
	return names
}

// startDemo starts the demo and hands on its output line by line.
func startDemo(t *testing.T, demo, halb string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(demo, "-halb", halb, "-phase", "2s")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	lines := make(chan string, 1000)
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			t.Log(sc.Text())
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		<-read // no t.Log after the test
	})
	return cmd, lines
}

// waitLine reads lines until one contains want; it fails the test when
// the demo ends or a minute passes first.
func waitLine(t *testing.T, lines <-chan string, want string) bool {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended before printing %q", want)
			}
			if strings.Contains(line, want) {
				return true
			}
		case <-deadline:
			t.Fatalf("the demo did not print %q", want)
		}
	}
}

func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(time.Minute):
		t.Fatalf("the demo has not ended a minute after it was told to")
		return -1
	}
}

// processesOf lists the processes running the binary at path.
func processesOf(path string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitNoProcess(t *testing.T, path string) {
	t.Helper()
	for start := time.Now(); len(processesOf(path)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("processes of %s outlive the demo: %v", path, processesOf(path))
		}
	}
}
