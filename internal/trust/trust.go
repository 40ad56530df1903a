// Package trust opens the files halb takes orders from while it runs as
// root (its configuration file, the programs the configuration names) only
// when no one but root could have chosen their contents.
//
// The policy: every component of the path, as written and as symlinks
// resolve it, is owned by root (or by the user halb runs as) and is not
// writable by its group or by others. A symlink is judged as itself (its
// owner, and the directory that holds it), not only by what it points to,
// since whoever owns a link can repoint it. The one exception is a
// directory with the sticky bit owned by root, like /tmp: others can add
// entries there but cannot rename or remove root's, so a root-owned file
// or link in it stays root's.
//
// The walk opens each component relative to the directory before it and
// checks the open file, never a path looked up again, so that what is
// checked is what is returned: a swap after the check changes nothing the
// caller holds. This package must never follow a path by name once it has
// started walking it, and never open a file that is not regular for
// reading (a FIFO would block, a device could do anything).
package trust

import (
	"errors"
	"fmt"
	"io/fs"
)

// ErrUntrusted: a path fails the policy. The *Error beside it says which
// component, why, and how to fix it.
var ErrUntrusted = errors.New("not trusted")

// Error is one component of a path that fails the policy.
type Error struct {
	Path string // the component, as far as the walk had resolved it
	Msg  string // what is wrong and the fix
}

func (e *Error) Error() string { return e.Path + " " + e.Msg }

// Is makes errors.Is(err, ErrUntrusted) true.
func (e *Error) Is(target error) bool { return target == ErrUntrusted }

// NotRegularError: the path names something other than a regular file.
type NotRegularError struct {
	Path string
	Kind string // "a directory", "a FIFO", ...
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is %s, not a regular file", e.Path, e.Kind)
}

// KindOf names a file type for a person ("a FIFO", "a directory").
func KindOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "a file of mode " + m.String()
}
