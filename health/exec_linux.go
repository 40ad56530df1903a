package health

import (
	"context"
	"fmt"
	"strconv"

	"github.com/halb-lb/halb/internal/script"
)

// Check runs the command through internal/script: checked against the
// script policy at this run (a program that fails it is a failed check,
// and does not run), argv without a shell, in a process group that dies
// whole with the check.
func (e execChecker) Check(ctx context.Context, k Key) error {
	out, err := script.Run(ctx, e.argv, execEnv(k))
	if err == nil {
		return nil
	}
	if s := script.OneLine(out); s != "" {
		return fmt.Errorf("%w: %s", err, s)
	}
	return err
}

// execEnv is what an exec check learns about its backend, beside the
// daemon's own environment.
func execEnv(k Key) []string {
	return append([]string{},
		"HALB_SERVICE="+k.Service,
		"HALB_BACKEND_ADDRESS="+k.Backend.Addr().String(),
		"HALB_BACKEND_PORT="+strconv.Itoa(int(k.Backend.Port())),
	)
}
