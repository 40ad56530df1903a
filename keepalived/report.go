package keepalived

import (
	"fmt"
	"io"
)

// Kind says what became of a keyword that was not carried across exactly.
type Kind int

const (
	// Approximated: halb does something close, which the note says.
	Approximated Kind = iota
	// Dropped: halb has no equivalent; the keyword is left out.
	Dropped
	// Warning: carried across, but halb will refuse it on this host as it
	// stands (a script its policy does not trust). The file is still
	// converted exactly.
	Warning
)

// Note is one line of the report: where the keyword was written, the
// keyword, and what halb does instead.
type Note struct {
	File    string
	Line    int
	Keyword string
	Msg     string
	Kind    Kind
	seq     int
}

func (n Note) String() string {
	prefix := ""
	if n.Kind == Warning {
		prefix = "warning: "
	}
	return fmt.Sprintf("%s:%d: %s: %s%s", n.File, n.Line, n.Keyword, prefix, n.Msg)
}

// Result is a converted configuration and its report.
type Result struct {
	YAML  []byte
	Notes []Note
}

// Exact reports whether every keyword was carried across as keepalived
// meant it (warnings about this host aside): `halb import` exits 0, else
// 3.
func (r *Result) Exact() bool {
	for _, n := range r.Notes {
		if n.Kind != Warning {
			return false
		}
	}
	return true
}

// WriteReport writes one line per note, in the order of the file
// (includes where they are included).
func (r *Result) WriteReport(w io.Writer) error {
	for _, n := range r.Notes {
		if _, err := fmt.Fprintln(w, n); err != nil {
			return err
		}
	}
	return nil
}

// ConvertError is a keepalived file that parses but cannot become a valid
// halb configuration: an instance with no interface, a service with no
// real server. It is reported like a syntax error (exit 2).
type ConvertError struct {
	Problems []Note
}

func (e *ConvertError) Error() string {
	s := ""
	for i, n := range e.Problems {
		if i > 0 {
			s += "\n"
		}
		s += n.String()
	}
	return s
}

// RefusedError is a conversion halb's own validation refuses (exit 2):
// keepalived accepted something halb does not, and the converter has no
// equivalent to write. Err lists the problems by halb field path and the
// line of YAML, which holds the converted text.
type RefusedError struct {
	Err  error
	YAML []byte
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("halb would refuse the converted configuration:\n%v", e.Err)
}
func (e *RefusedError) Unwrap() error { return e.Err }
