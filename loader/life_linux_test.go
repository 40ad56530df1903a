package loader

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/service"
)

// A Datapath owns every goroutine it starts (the network watcher, the
// refresher, the pin guard, the local-MAC watcher): Close, and Cleanup,
// return once they have all returned, and nothing it started runs on.
func TestDatapathLeavesNoGoroutine(t *testing.T) {
	for _, end := range []string{"close", "cleanup"} {
		t.Run(end, func(t *testing.T) {
			b := newDPBench(t)
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			before := halbtest.Running()
			dp := b.start(t, b.cfg, config.ModeXDP)
			if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1), backend(be12, 1))}); err != nil {
				t.Fatal(err)
			}
			waitLive(t, dp, web, 2)
			var err error
			if end == "close" {
				err = dp.Close()
			} else {
				err = dp.Cleanup()
			}
			if err != nil {
				t.Fatal(err)
			}
			if left := halbtest.Left(before, "github.com/halb-lb/halb/"); len(left) > 0 {
				t.Errorf("%d goroutines of the data path still run after %s:\n%s", len(left), end, strings.Join(left, "\n\n"))
			}
		})
	}
}
