package halbtest

import (
	"bytes"
	"runtime"
	"strings"
)

// Goroutines are the goroutines running at one moment, each by the first
// line of its stack ("goroutine 12 [select]:" less the state), with its
// whole stack.
type Goroutines map[string]string

// Running is a snapshot of every goroutine of the process.
func Running() Goroutines {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := Goroutines{}
	for _, stack := range bytes.Split(buf, []byte("\n\n")) {
		s := string(stack)
		id, _, _ := strings.Cut(s, " [")
		out[id] = s
	}
	return out
}

// Left lists the stacks of the goroutines running now that were not
// running at before and that run code of a package under prefix (such as
// "github.com/halb-lb/halb/"), or that such code started: the goroutines
// a component started and did not wait for. Called right after the component's Close or Run returned,
// it finds one that was only told to stop, which goleak, retrying for a
// while, would let pass.
func Left(before Goroutines, prefix string) []string {
	var out []string
	for id, stack := range Running() {
		if _, ok := before[id]; ok {
			continue
		}
		for _, line := range strings.Split(stack, "\n") {
			// A frame, or the go statement that started the goroutine.
			if strings.HasPrefix(strings.TrimPrefix(line, "created by "), prefix) {
				out = append(out, stack)
				break
			}
		}
	}
	return out
}
