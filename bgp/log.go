package bgp

import (
	"context"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"

	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
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
	capture := b.peer != "" && (r.Message == "failed to connect" || isNotification(r.Message))
	if !forward && !capture {
		return nil
	}
	var errText, reason string
	var code, subcode int64
	out := slog.NewRecord(r.Time, demote(r.Level), lowerFirst(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "Error":
			errText = a.Value.String()
		case "Code":
			code = a.Value.Int64()
		case "Subcode":
			subcode = a.Value.Int64()
		case "Communicated-Reason":
			reason = a.Value.String()
		}
		out.AddAttrs(renamed(a))
		return true
	})
	switch {
	case capture && errText != "":
		b.onError(b.peer, "connect: "+errText)
	case capture && isNotification(r.Message):
		b.onError(b.peer, notificationText(r.Message, code, subcode, reason))
	}
	if !forward {
		return nil
	}
	return b.next.Handle(ctx, out)
}

// isNotification tells GoBGP's lines about a NOTIFICATION sent or
// received: the only word of why a session was refused in its OPEN
// exchange (a router of another AS, an unacceptable hold time), which no
// peer event carries while the session never came up.
func isNotification(msg string) bool {
	return msg == "sent notification" || msg == "received notification"
}

// notificationText is a NOTIFICATION as Peers shows it: "sent
// notification: open/bad peer as", with the router's own words when it
// sent some (RFC 8203).
func notificationText(msg string, code, subcode int64, reason string) string {
	text := msg + ": " + gobgp.NotificationErrorCode(uint16(code)<<8|uint16(subcode)).String()
	if reason != "" {
		text += ": " + reason
	}
	return text
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
