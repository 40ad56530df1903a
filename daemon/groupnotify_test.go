package daemon

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/vrrp"
)

// A reload that changes only a sync group's notify scripts restarts the
// group's instances, as one that changes an instance's notify script
// restarts it: the running group was made with the old scripts. One that
// changes nothing restarts nothing.
func TestGroupScriptsChangeRestartsGroup(t *testing.T) {
	s := newVRRPSet(slog.New(slog.NewTextHandler(io.Discard, nil)), t.TempDir())
	events := make(chan string, 20)
	s.run = func(ctx context.Context, in *vrrp.Instance) error {
		name := in.Status().Name
		events <- "start " + name
		<-ctx.Done()
		events <- "stop " + name
		return nil
	}
	next := func(n int) []string {
		t.Helper()
		var got []string
		for range n {
			select {
			case e := <-events:
				got = append(got, e)
			case <-time.After(10 * time.Second):
				t.Fatalf("no more events within 10s after %q", got)
			}
		}
		slices.Sort(got)
		return got
	}
	c := config.VRRP{
		Instances: []config.Instance{
			{Name: "a", Interface: "halbnone0", VRID: 7, Version: 2, Priority: 100},
			{Name: "b", Interface: "halbnone0", VRID: 8, Version: 2, Priority: 100},
		},
		SyncGroups: []config.SyncGroup{{Name: "G", Instances: []string{"a", "b"}, NotifyMaster: []string{"/bin/true"}}},
	}
	s.apply(c)
	if got := next(2); !slices.Equal(got, []string{"start a", "start b"}) {
		t.Fatalf("at start: %q", got)
	}
	s.apply(c)
	select {
	case e := <-events:
		t.Errorf("a reload that changed nothing: %q", e)
	case <-time.After(200 * time.Millisecond):
	}
	c.SyncGroups[0].NotifyMaster = []string{"/bin/false"}
	s.apply(c)
	if got := next(4); !slices.Equal(got, []string{"start a", "start b", "stop a", "stop b"}) {
		t.Errorf("after the group's notify_master changed: %q, want both stopped and started", got)
	}
	s.stopAll(time.Now().Add(5 * time.Second))
}
