package ipvs

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/service"
)

// The IPVS data path starts no goroutine of its own: it works on the
// caller's, so that open, apply and close leave nothing running.
func TestDatapathLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	before := halbtest.Running()
	d := newTestDatapath(t, &fakeIPVS{}, filepath.Join(t.TempDir(), "state"))
	if err := d.Apply(context.Background(), []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if left := halbtest.Left(before, "github.com/halb-lb/halb/"); len(left) > 0 {
		t.Errorf("%d goroutines of the data path still run after Close:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
