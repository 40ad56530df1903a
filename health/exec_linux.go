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
	out, err := script.Run(ctx, e.argv, execEnv(k, e.port))
	if err == nil {
		return nil
	}
	if s := script.OneLine(out); s != "" {
		return fmt.Errorf("%w: %s", err, s)
	}
	return err
}

// execEnv is what an exec check learns about its backend, beside the
// daemon's own environment: HALB_CHECK_PORT is the port to check,
// health_check.port or else the backend's.
func execEnv(k Key, port uint16) []string {
	if port == 0 {
		port = k.Backend.Port()
	}
	return append([]string{},
		"HALB_SERVICE="+k.Service,
		"HALB_BACKEND_ADDRESS="+k.Backend.Addr().String(),
		"HALB_BACKEND_PORT="+strconv.Itoa(int(k.Backend.Port())),
		"HALB_CHECK_PORT="+strconv.Itoa(int(port)),
	)
}
