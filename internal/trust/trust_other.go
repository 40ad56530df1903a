//go:build !linux

package trust

import (
	"errors"
	"os"
)

// ForExec and ForRead are Open's flags; see trust_linux.go.
const (
	ForExec = 1
	ForRead = 0
)

// Open needs Linux's O_PATH and *at calls to walk a path without
// following it by name again.
func Open(name string, flags int) (*os.File, error) {
	return nil, &os.PathError{Op: "open", Path: name, Err: errors.ErrUnsupported}
}

// CheckArg needs what Open needs.
func CheckArg(name string) error {
	return &os.PathError{Op: "check", Path: name, Err: errors.ErrUnsupported}
}
