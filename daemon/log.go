package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// NewLogger builds the daemon's logger. The level lives in a LevelVar so a
// reload can change it without rebuilding handlers that others hold.
//
// When w is the journal's stream (halb under systemd), each line starts
// with its syslog priority, <4> for a warning, which journald takes off
// and keeps as the entry's priority: `journalctl -p warning -u halb` then
// shows the warnings and errors alone.
func NewLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var pw *priorityWriter
	if f, ok := w.(*os.File); ok && isJournalStream(f) {
		pw = &priorityWriter{w: w}
		w = pw
	}
	var h slog.Handler
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	if pw != nil {
		h = &priorityHandler{inner: h, pw: pw}
	}
	return slog.New(h)
}

// isJournalStream reports whether f is the stream systemd connected to the
// journal: systemd names that stream's device and inode in JOURNAL_STREAM
// ("dev:ino", see systemd.exec(5)), and a process whose stderr was
// redirected elsewhere since inherits the variable but not the stream.
func isJournalStream(f *os.File) bool {
	env := os.Getenv("JOURNAL_STREAM")
	if env == "" {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return env == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// syslogPriority is the journal's priority of a slog level: debug 7,
// info 6, warning 4, error 3 (RFC 5424 §6.2.1 severities).
func syslogPriority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}

// priorityWriter puts the priority of the record being written before
// each line. slog's handlers write a record in one Write, which
// priorityHandler makes with the writer's lock held.
type priorityWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (pw *priorityWriter) Write(p []byte) (int, error) {
	line := make([]byte, 0, len(pw.prefix)+len(p))
	line = append(append(line, pw.prefix...), p...)
	if _, err := pw.w.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}

// priorityHandler tells its priorityWriter each record's level; the
// handlers WithAttrs and WithGroup derive share the writer.
type priorityHandler struct {
	inner slog.Handler
	pw    *priorityWriter
}

func (h *priorityHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.pw.mu.Lock()
	defer h.pw.mu.Unlock()
	h.pw.prefix = syslogPriority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *priorityHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &priorityHandler{inner: h.inner.WithAttrs(attrs), pw: h.pw}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{inner: h.inner.WithGroup(name), pw: h.pw}
}

// ParseLevel maps the config's level names onto slog's.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", s)
}
