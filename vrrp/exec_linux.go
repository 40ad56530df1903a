package vrrp

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/halb-lb/halb/internal/script"
)

// errTimeout: the program did not finish in time and its process group
// was killed.
var errTimeout = script.ErrTimeout

// errRefused: the program failed halb's script policy when it was about
// to run (internal/script), and did not run. For a track script that is a
// failed run; a notify call is logged and skipped.
var errRefused = script.ErrRefused

// runProgram runs argv (no shell) with extra environment, its whole
// process group killed at the timeout (internal/script). It returns the
// output on one line, for the log.
func runProgram(ctx context.Context, timeout time.Duration, argv []string, env []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := script.Run(ctx, argv, env)
	if errors.Is(err, script.ErrTimeout) {
		err = fmt.Errorf("%s: %w (%v)", argv[0], err, timeout)
	}
	return script.OneLine(out), err
}
