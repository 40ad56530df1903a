package health

import (
	"fmt"
	"net/netip"
)

// Key names one checked backend of one service.
type Key struct {
	Service string
	Backend netip.AddrPort
}

func (k Key) String() string { return k.Service + "/" + k.Backend.String() }

// State is a backend's health as the data path sees it.
type State uint8

const (
	// Healthy backends take new flows at their configured weight.
	Healthy State = iota + 1
	// Unhealthy backends are drained: weight 0, no new flows, and the
	// flows they have keep going.
	Unhealthy
)

func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// tracker is the rise/fall state machine of one backend. It knows nothing
// of time or sockets: it takes check results in order and says when the
// state changes, and why.
type tracker struct {
	state State
	// confirmed is false until a check result has decided state: the
	// presumed Healthy at startup, or the state carried over from a
	// replaced check.
	confirmed bool
	successes int // consecutive
	failures  int // consecutive
}

func newTracker() tracker { return tracker{state: Healthy} }

// observe feeds one check result (nil = success) to the tracker, with the
// thresholds of the check. It returns the reason when the state changed,
// and "" when it did not.
func (t *tracker) observe(err error, rise, fall int) string {
	if err == nil {
		t.successes++
		t.failures = 0
	} else {
		t.failures++
		t.successes = 0
	}
	if !t.confirmed {
		// The first result decides: a presumption is not evidence that
		// rise or fall should have to outweigh.
		t.confirmed = true
		switch {
		case err != nil && t.state == Healthy:
			t.state = Unhealthy
			return "first check failed: " + err.Error()
		case err == nil && t.state == Unhealthy:
			t.state = Healthy
			return "first check succeeded"
		}
		return ""
	}
	switch {
	case err != nil && t.state == Healthy && t.failures >= fall:
		t.state = Unhealthy
		return fmt.Sprintf("%d consecutive %s: %v", t.failures, plural(t.failures, "failure", "failures"), err)
	case err == nil && t.state == Unhealthy && t.successes >= rise:
		t.state = Healthy
		return fmt.Sprintf("%d consecutive %s", t.successes, plural(t.successes, "success", "successes"))
	}
	return ""
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
