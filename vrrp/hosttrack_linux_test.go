package vrrp

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// What readTrackFile makes of files that are not a plain number: none
// blocks it (a FIFO with no writer, one with a writer that writes
// nothing), none is read past maxTrackFileSize+1 bytes.
func TestReadTrackFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoW := filepath.Join(dir, "fifo-with-writer")
	if err := syscall.Mkfifo(fifoW, 0o600); err != nil {
		t.Fatal(err)
	}
	// A writer that holds the FIFO open and writes nothing.
	w, err := os.OpenFile(fifoW, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	for _, c := range []struct {
		name string
		path string
		want string // the content; "" with err
		err  string // in the error; "" none
	}{
		{"a number", write("n", "42\n"), "42\n", ""},
		{"a big file: only what a number can be is read", write("big", strings.Repeat("1", 1<<20)), strings.Repeat("1", maxTrackFileSize+1), ""},
		{"missing", filepath.Join(dir, "none"), "", "no such file"},
		{"a directory", dir, "", "is not a regular file"},
		{"a FIFO with no writer", fifo, "", "is not a regular file"},
		{"a FIFO with a silent writer", fifoW, "", "is not a regular file"},
		{"a device", "/dev/zero", "", "is not a regular file"},
		{"a /proc file", "/proc/sys/kernel/pid_max", "", ""},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			type result struct {
				b   []byte
				err error
			}
			done := make(chan result, 1)
			go func() {
				b, err := procHost{proc: "/proc"}.readTrackFile(c.path)
				done <- result{b, err}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("readTrackFile(%s) blocked for 10 s", c.path)
			}
			switch {
			case c.err != "" && (r.err == nil || !strings.Contains(r.err.Error(), c.err)):
				t.Errorf("err %v, want one saying %q", r.err, c.err)
			case c.err == "" && r.err != nil:
				t.Errorf("err %v", r.err)
			case c.want != "" && string(r.b) != c.want:
				t.Errorf("read %d bytes %.20q, want %d bytes %.20q", len(r.b), r.b, len(c.want), c.want)
			case c.path == "/proc/sys/kernel/pid_max":
				if n, err := parseTrackNumber(r.b); err != nil || n <= 0 {
					t.Errorf("pid_max read as %q: %d, %v", r.b, n, err)
				}
			}
			if c.name == "missing" && !errors.Is(r.err, fs.ErrNotExist) {
				t.Errorf("a missing file's error %v is not fs.ErrNotExist", r.err)
			}
		})
	}
}

// sleeper is a copy of /bin/sleep under a name no other process has, so
// that the test counts only the processes it starts (and kills by PID).
type sleeper struct {
	t    *testing.T
	path string
}

func newSleeper(t *testing.T, name string) *sleeper {
	t.Helper()
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Skipf("no sleep to copy: %v", err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return &sleeper{t: t, path: p}
}

// start runs the copy with args; it is killed, by its PID, when the test
// ends unless stopped before.
func (s *sleeper) start(args ...string) *exec.Cmd {
	s.t.Helper()
	cmd := exec.Command(s.path, args...)
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { stopProcess(cmd) })
	return cmd
}

func stopProcess(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// uniqueName is a process name of n bytes that no other process has.
func uniqueName(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return ("ht" + hex.EncodeToString(b))[:n]
}

// countProcesses counts the processes the test started, by comm, by a
// long name's argv[0], and by exact arguments; a killed one leaves the
// count.
func TestCountProcesses(t *testing.T) {
	short, long := uniqueName(t, 12), uniqueName(t, 24)
	s, l := newSleeper(t, short), newSleeper(t, long)
	a := s.start("300")
	s.start("300")
	s.start("301")
	l.start("300")
	ps := []config.TrackProcess{
		{Name: short},
		{Name: short, Args: []string{"300"}},
		{Name: short, Args: []string{}},
		{Name: short, Args: []string{"300", "x"}},
		{Name: long},
		{Name: long[:20]}, // comm matches, argv[0] does not
		{Name: short[:11]},
	}
	host := procHost{proc: "/proc"}
	count := func() []int {
		t.Helper()
		start := time.Now()
		n, err := host.countProcesses(ps)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("one scan of /proc took %v", time.Since(start))
		return n
	}
	if got, want := count(), []int{3, 2, 0, 0, 1, 0, 0}; !slices.Equal(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	stopProcess(a)
	if got, want := count(), []int{2, 1, 0, 0, 1, 0, 0}; !slices.Equal(got, want) {
		t.Errorf("after a kill: counts %v, want %v", got, want)
	}
}

// At run time, with the host's own files and processes: a track file and
// a tracked process move the priority, a weight-0 file faults the
// instance, each within a few polls. Over the fake link: the host's
// network is not touched.
func TestHostTrackersAtRunTime(t *testing.T) {
	dir := t.TempDir()
	weightFile, maint := filepath.Join(dir, "weight"), filepath.Join(dir, "maint")
	name := uniqueName(t, 14)
	s := newSleeper(t, name)
	cfg := baseConfig()
	cfg.TrackFiles = []config.TrackFile{{Path: weightFile, Weight: 2}, {Path: maint, Weight: 0}}
	cfg.TrackProcesses = []config.TrackProcess{{Name: name, MinCount: 1, Weight: -20}}
	log := &syncBuffer{}
	in := startTuned(t, cfg, upLAN(cfg), nil, func(in *Instance) {
		in.host = procHost{proc: "/proc"}
		in.log = slog.New(slog.NewTextHandler(log, nil))
	})
	defer func() {
		if t.Failed() {
			t.Logf("instance log:\n%s", log)
		}
	}()
	want := func(what string, prio uint8, state State) {
		t.Helper()
		start := time.Now()
		waitFor(t, what, func() *Status {
			if st := in.Status(); st.Priority == prio && st.State == state {
				return &st
			}
			return nil
		})
		t.Logf("%s: priority %d, %s after %v", what, prio, state, time.Since(start).Round(time.Millisecond))
	}

	want("no process, no files", 80, Master)
	proc := s.start("300")
	want("the process started", 100, Master)
	putFile(t, weightFile, "7\n")
	want("the file holds 7 (× 2)", 114, Master)
	stopProcess(proc)
	want("the process killed", 94, Master)
	putFile(t, maint, "1\n")
	want("the weight-0 file holds 1", 94, Fault)
	if f := in.Status().Faults; !slices.Equal(f, []string{"track file " + maint + " not 0"}) {
		t.Errorf("faults %q", f)
	}
	if err := os.Remove(maint); err != nil {
		t.Fatal(err)
	}
	want("the weight-0 file removed", 94, Master)
	if err := os.Remove(weightFile); err != nil {
		t.Fatal(err)
	}
	want("the file removed", 80, Master)
}

// The per-state notify scripts, real ones, run in the order of the
// transitions, each before notify: a script appends its argument and
// HALB_STATE to a file, MASTER → BACKUP → FAULT → STOP, over the fake
// link.
func TestStateNotifyScriptsRun(t *testing.T) {
	netnstest.Require(t) // halb's script policy: the scripts must be root's
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "append.sh")
	body := fmt.Sprintf("#!/bin/sh\necho \"$* $HALB_STATE\" >> %s\n", calls)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg.AdvertInterval = 100 * time.Millisecond
	cfg.Preempt = false
	cfg.Notify = script
	cfg.NotifyMaster = []string{script, "master"}
	cfg.NotifyBackup = []string{script, "backup"}
	cfg.NotifyFault = []string{script, "fault"}
	cfg.NotifyStop = []string{script, "stop"}
	lines := func() []string {
		b, err := os.ReadFile(calls)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	throughStates(t, cfg, runProgram, func(state string) bool {
		l := lines()
		return l[len(l)-1] == "INSTANCE VI_T "+state+" 100 "+state
	})
	want := []string{
		"backup BACKUP", "INSTANCE VI_T BACKUP 100 BACKUP", // at start; may be superseded
		"master MASTER", "INSTANCE VI_T MASTER 100 MASTER",
		"backup BACKUP", "INSTANCE VI_T BACKUP 100 BACKUP",
		"fault FAULT", "INSTANCE VI_T FAULT 100 FAULT",
		"stop STOP", "INSTANCE VI_T STOP 100 STOP",
	}
	if got := lines(); !slices.Equal(got, want) && !slices.Equal(got, want[2:]) {
		t.Errorf("calls:\n%s\nwant:\n%s\n(the first two may be missing)", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// BenchmarkCountProcesses is one scan of this host's /proc for two
// trackers, one by name alone (comm only) and one with args (cmdline too
// for the processes whose comm matches); us/process is what the period's
// stretch (trackPollShare) is set against.
func BenchmarkCountProcesses(b *testing.B) {
	ps := []config.TrackProcess{{Name: "sleep", MinCount: 1}, {Name: "sh", Args: []string{"-c", "x"}, MinCount: 1}}
	host := procHost{proc: "/proc"}
	procs := 0
	for b.Loop() {
		if _, err := host.countProcesses(ps); err != nil {
			b.Fatal(err)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			procs++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(max(procs, 1)), "us/process")
	b.ReportMetric(float64(procs), "processes")
}

// putFile writes a track file whole and renames it in, as a writer
// should: a poll never reads it half written.
func putFile(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
