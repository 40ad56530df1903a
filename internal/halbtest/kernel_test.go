package halbtest

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/loader"
)

// A probe over NoKernel finds nothing the kernel would have to answer,
// whatever the machine running the test has.
func TestNoKernel(t *testing.T) {
	var k loader.Kernel = NoKernel{}
	for what, err := range map[string]error{
		"xdp": k.ProgramType(ebpf.XDP), "xdp link": k.XDPLink(), "tcx": k.TCX(), "ipvs": k.IPVSFamily(),
	} {
		if !errors.Is(err, ErrNoKernel) {
			t.Errorf("%s: %v, want ErrNoKernel", what, err)
		}
	}
	r := loader.Host{Root: t.TempDir(), Kernel: k}.Probe()
	for _, f := range []loader.Feature{r.XDP, r.SchedCLS, r.XDPLink, r.TCX, r.IPVS.Family} {
		if f.Supported {
			t.Errorf("probe over NoKernel: %+v supported", f)
		}
	}
}
