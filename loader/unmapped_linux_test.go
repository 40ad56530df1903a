package loader

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestLoadNeedsMmapableArrays takes the way of a kernel that cannot map
// BPF arrays (before Linux 5.5; forced here through mmapable): loading
// stops before anything is made, with an error that names the feature,
// the kernel that has it and the data path that does without it.
func TestLoadNeedsMmapableArrays(t *testing.T) {
	was := mmapable
	mmapable = func() error { return ebpf.ErrNotSupported }
	t.Cleanup(func() { mmapable = was })

	_, err := loadLB(Options{MaglevTableSize: 251})
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("load: %v, want an error wrapping ebpf.ErrNotSupported", err)
	}
	for _, want := range []string{"BPF_F_MMAPABLE", "Linux 5.5", "datapath.mode: ipvs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("load error %q does not say %q", err, want)
		}
	}
}
