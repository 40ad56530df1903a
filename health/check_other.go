//go:build !linux

package health

import (
	"context"
	"errors"
	"syscall"
)

// halb runs on Linux; these keep the package building elsewhere, for
// `halb check` and editors.

var errExecNeedsLinux = errors.New("exec health checks need Linux (process groups are killed with kill(-pgid))")

func (execChecker) Check(context.Context, Key) error { return errExecNeedsLinux }

// udpControl sets nothing: only port unreachable is reported.
func udpControl(string, string, syscall.RawConn) error { return nil }
