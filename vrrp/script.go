package vrrp

import (
	"context"
	"hash/fnv"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// scriptResult is one run of track_scripts[index].
type scriptResult struct {
	index  int
	err    error
	output string
}

// scriptState follows one track script through rise and fall.
type scriptState struct {
	ok                  bool // as far as the instance is concerned
	successes, failures int
}

// update counts one result; it reports whether the script changed state:
// failing after fall failures in a row, good again after rise successes.
func (s *scriptState) update(ts config.TrackScript, err error) bool {
	if err == nil {
		s.successes, s.failures = s.successes+1, 0
		if !s.ok && s.successes >= ts.Rise {
			s.ok = true
			return true
		}
		return false
	}
	s.failures, s.successes = s.failures+1, 0
	if s.ok && s.failures >= ts.Fall {
		s.ok = false
		return true
	}
	return false
}

// startScripts runs each track script every interval until Run ends, on
// goroutines Run waits for, and sends the results to the Run loop.
func (in *Instance) startScripts() {
	for i, ts := range in.cfg.TrackScripts {
		in.loops.Go(func() { runScript(in.ctx, in.cfg.Name, i, ts, in.runScript, in.scriptResults) })
	}
}

// runProgramFunc runs one program: runProgram, or a test's fake.
type runProgramFunc func(ctx context.Context, timeout time.Duration, argv, env []string) (string, error)

// runScript runs track script index (ts) every interval until ctx ends
// and sends the results. Scripts start good, as keepalived's do: a script
// that fails from the first run takes fall runs to count.
func runScript(ctx context.Context, name string, index int, ts config.TrackScript, run runProgramFunc, out chan<- scriptResult) {
	// Spread the first runs over the interval so that instances with the
	// same script do not all run it at once.
	h := fnv.New32a()
	h.Write([]byte(name + strings.Join(ts.Command, " ")))
	offset := time.Duration(h.Sum32()%1000) * ts.Interval / 1000
	t := time.NewTimer(offset)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		output, err := run(ctx, ts.Timeout, ts.Command, []string{"HALB_INSTANCE=" + name})
		select {
		case out <- scriptResult{index: index, err: err, output: output}:
		case <-ctx.Done():
			return
		}
		t.Reset(ts.Interval)
	}
}
