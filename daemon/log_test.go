package daemon

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Under systemd halb's stderr is the journal's stream, named in
// JOURNAL_STREAM; each line then carries its syslog priority so that
// `journalctl -p warning` picks out warnings. A pipe stands in for the
// journal: JOURNAL_STREAM names its device and inode.
func TestLoggerJournalPriorities(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			r, w := pipe(t)
			t.Setenv("JOURNAL_STREAM", devIno(t, w))
			var level slog.LevelVar
			level.Set(slog.LevelDebug)
			log := NewLogger(w, format, &level).With("instance", "VI_1")
			log.Debug("debug line")
			log.Info("info line")
			log.Warn("warn line")
			log.WithGroup("g").Error("error line", "k", 1)
			w.Close()
			want := []string{"<7>", "<6>", "<4>", "<3>"}
			lines := readLines(t, r)
			if len(lines) != len(want) {
				t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
			}
			for i, line := range lines {
				if !strings.HasPrefix(line, want[i]) || strings.HasPrefix(line[len(want[i]):], "<") {
					t.Errorf("line %d: %q, want it to start with %s once", i, line, want[i])
				}
			}
		})
	}
}

// Anywhere else the lines are unchanged: a terminal, a file, or a stderr
// redirected after systemd set JOURNAL_STREAM (the variable is inherited,
// the stream is not).
func TestLoggerNotJournal(t *testing.T) {
	r, w := pipe(t)
	_, other := pipe(t)
	t.Setenv("JOURNAL_STREAM", devIno(t, other))
	var level slog.LevelVar
	NewLogger(w, "text", &level).Warn("warn line")
	w.Close()
	lines := readLines(t, r)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "time=") {
		t.Fatalf("got %q, want one line starting time=", lines)
	}
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func devIno(t *testing.T, f *os.File) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func readLines(t *testing.T, r *os.File) []string {
	t.Helper()
	var lines []string
	s := bufio.NewScanner(r)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}
