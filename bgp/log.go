package bgp

import (
	"context"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"
)

// logBridge hands GoBGP's log records to halb's handler in halb's style:
// messages in lower case, keys in lower case ("Key" is "key", "Error" is
// "err"), and GoBGP's Info lines at Debug, since halb logs the session
// changes and routes itself. It also passes on why a session could not
// be opened, which GoBGP only logs, so that Peers can show it.
type logBridge struct {
	next    slog.Handler
	peer    string // the peer address GoBGP bound to this logger as "Key"
	onError func(peer, msg string)
}

func newLogBridge(next slog.Handler, onError func(peer, msg string)) *logBridge {
	return &logBridge{next: next, onError: onError}
}

// Enabled is true at every level: the errors Peers shows come at Debug.
func (b *logBridge) Enabled(context.Context, slog.Level) bool { return true }

func (b *logBridge) Handle(ctx context.Context, r slog.Record) error {
	// Most of GoBGP's lines are Debug ones about each UPDATE: the cheap
	// checks first, so that a router sending a full table costs no
	// record copied for a log that drops it.
	forward := b.next.Enabled(ctx, demote(r.Level))
	capture := b.peer != "" && r.Message == "failed to connect"
	if !forward && !capture {
		return nil
	}
	var errText string
	out := slog.NewRecord(r.Time, demote(r.Level), lowerFirst(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "Error" {
			errText = a.Value.String()
		}
		out.AddAttrs(renamed(a))
		return true
	})
	if capture && errText != "" {
		b.onError(b.peer, "connect: "+errText)
	}
	if !forward {
		return nil
	}
	return b.next.Handle(ctx, out)
}

func (b *logBridge) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *b
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		if a.Key == "Key" {
			c.peer = a.Value.String()
		}
		out[i] = renamed(a)
	}
	c.next = b.next.WithAttrs(out)
	return &c
}

func (b *logBridge) WithGroup(name string) slog.Handler {
	c := *b
	c.next = b.next.WithGroup(name)
	return &c
}

func demote(l slog.Level) slog.Level {
	if l == slog.LevelInfo {
		return slog.LevelDebug
	}
	return l
}

func renamed(a slog.Attr) slog.Attr {
	if a.Key == "Error" {
		a.Key = "err"
	} else {
		a.Key = strings.ToLower(a.Key)
	}
	return a
}

func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	// "BFD server is started" stays: an acronym is not a capital.
	if n == len(s) || unicode.IsUpper(r) && unicode.IsUpper(rune(s[n])) {
		return s
	}
	return string(unicode.ToLower(r)) + s[n:]
}
