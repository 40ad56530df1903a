package script

import (
	"errors"
	"fmt"
	"strings"

	"github.com/halb-lb/halb/internal/trust"
)

// The program is not the only file a command makes root run: in
// [/bin/sh, /home/u/check.sh] or [/usr/bin/python3, /opt/x/check.py] the
// program is root's and safe, and its argument is the code. halb cannot
// know which arguments a program treats as files, so every argument that
// names a path is held to the policy (CheckArg), whether the program
// reads it, runs it or ignores it: a path that only root can change costs
// nothing to accept, and a false refusal says what to fix.
//
// What counts as naming a path (argPaths):
//   - an argument that is an absolute path;
//   - a relative argument with a / in it (scripts/check.sh, ./check.sh):
//     it is resolved against the working directory, which Run sets to /
//     (as under systemd) so that `halb check` judges what the daemon
//     runs. A bare word (eth0, MASTER, -q) is left alone: it would name an
//     entry of /, which only root can create, and many arguments that are
//     not paths are bare words;
//   - within an argument, each word that starts with / after a space,
//     '=', ':', ',', a quote or a shell operator: --file=/x, PATH-like
//     lists, and the files an inline `sh -c ". /x"` names;
//   - the rest of an option glued to a path, -I/x.
//
// What halb cannot see is a path an inline program builds or names
// relatively (sh -c 'cd /srv && ./x'): keep such code in a root-owned
// script file and name that file.

// ArgError is an argument of a command that fails the policy: Index is
// its place in argv, Path the path in it that was judged. It is
// ErrRefused.
type ArgError struct {
	Index int
	Arg   string
	Path  string
	Err   error
}

func (e *ArgError) Error() string {
	if e.Path == e.Arg {
		return fmt.Sprintf("argument %d, %s, is a file the program is given as root: %v", e.Index, e.Arg, e.Err)
	}
	return fmt.Sprintf("argument %d, %q, names %s, which the program may open as root: %v", e.Index, e.Arg, e.Path, e.Err)
}
func (e *ArgError) Unwrap() error        { return e.Err }
func (e *ArgError) Is(target error) bool { return target == ErrRefused }

// CheckArg holds the paths that one argument names (see above) to the
// policy of internal/trust (trust.CheckArg): every component owned by
// root and not writable by others, symlinks as themselves and resolved; a
// path that does not exist yet only where no one but root can create it.
// The error is an *ArgError with Index 0; callers that know the index set
// it.
func CheckArg(arg string) error {
	for _, p := range argPaths(arg) {
		if err := trust.CheckArg(p); err != nil {
			return &ArgError{Arg: arg, Path: p, Err: err}
		}
	}
	return nil
}

// CheckArgs is CheckArg for argv[1:], each error with its index.
func CheckArgs(argv []string) error {
	for i := 1; i < len(argv); i++ {
		if err := CheckArg(argv[i]); err != nil {
			var ae *ArgError
			if errors.As(err, &ae) {
				ae.Index = i
			}
			return err
		}
	}
	return nil
}

// argPaths is the paths an argument names, as absolute paths.
func argPaths(arg string) []string {
	var out []string
	add := func(p string) {
		for _, q := range out {
			if q == p {
				return
			}
		}
		out = append(out, p)
	}
	switch {
	case strings.HasPrefix(arg, "/"):
		add(arg)
	case strings.Contains(arg, "/"):
		add("/" + arg) // relative to Run's working directory, /
	}
	for _, w := range strings.FieldsFunc(arg, isSeparator) {
		switch {
		case strings.HasPrefix(w, "/"):
			add(w)
		case strings.HasPrefix(w, "-"):
			if i := strings.IndexByte(w, '/'); i > 0 {
				add(w[i:])
			}
		}
	}
	return out
}

// isSeparator: what ends a path within an argument.
func isSeparator(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '=', ':', ',', ';', '|', '&', '<', '>', '(', ')', '\'', '"', '`':
		return true
	}
	return false
}
