package health

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestTracker is the rise/fall specification: each result string is a
// sequence of check outcomes (+ success, - failure) and the changes they
// must cause, as "index:state".
func TestTracker(t *testing.T) {
	boom := errors.New("connect: connection refused")
	tests := []struct {
		name       string
		rise, fall int
		carried    State // state carried over from a replaced check; 0 = fresh start
		results    string
		want       []string // "i:to reason-prefix"
		final      State
	}{
		{"fresh start, all good", 2, 3, 0, "++++", nil, Healthy},
		{"fresh start, first check fails: out at once", 2, 3, 0, "-", []string{"0:unhealthy first check failed: connect: connection refused"}, Unhealthy},
		{"dead from the start, then recovers after rise", 2, 3, 0, "-+-++", []string{"0:unhealthy first check failed", "4:healthy 2 consecutive successes"}, Healthy},
		{"fall after confirmation", 2, 3, 0, "+--+---", []string{"6:unhealthy 3 consecutive failures: connect: connection refused"}, Unhealthy},
		{"fall 1", 1, 1, 0, "+-+", []string{"1:unhealthy 1 consecutive failure:", "2:healthy 1 consecutive success"}, Healthy},
		{"failures below fall never flap", 2, 3, 0, "+--+--+--+", nil, Healthy},
		{"successes below rise never flap", 3, 1, 0, "+-++-++-", []string{"1:unhealthy 1 consecutive failure"}, Unhealthy},
		{"rise counts only consecutive successes", 3, 2, 0, "+--++-+++", []string{"2:unhealthy 2 consecutive failures", "8:healthy 3 consecutive successes"}, Healthy},
		{"carried unhealthy, first success decides", 5, 5, Unhealthy, "+", []string{"0:healthy first check succeeded"}, Healthy},
		{"carried unhealthy, first failure confirms", 2, 3, Unhealthy, "-+", nil, Unhealthy},
		{"carried healthy, first failure decides", 2, 3, Healthy, "-", []string{"0:unhealthy first check failed"}, Unhealthy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker()
			if tt.carried != 0 {
				tr.state = tt.carried
			}
			var got []string
			for i, r := range tt.results {
				var err error
				if r == '-' {
					err = boom
				}
				if reason := tr.observe(err, tt.rise, tt.fall); reason != "" {
					got = append(got, strconv.Itoa(i)+":"+tr.state.String()+" "+reason)
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("changes %q, want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("change %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
			}
			if tr.state != tt.final {
				t.Errorf("final state %s, want %s", tr.state, tt.final)
			}
		})
	}
}

func TestStateString(t *testing.T) {
	got := []string{Healthy.String(), Unhealthy.String(), State(0).String()}
	if !slices.Equal(got, []string{"healthy", "unhealthy", "state(0)"}) {
		t.Errorf("got %q", got)
	}
}
