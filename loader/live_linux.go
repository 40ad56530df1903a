package loader

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// LiveBackends counts the backends in the maps a halb pinned under
// bpffs that take new flows: their record is active and of a weight above
// 0, as Status tells them live. It reads halb_backends in batches and
// nothing else, so that a benchmark can watch 100 000 backends go live
// every few milliseconds (a status query reads each one's counters too,
// and takes seconds at that size).
func LiveBackends(bpffs string) (int, error) {
	path := filepath.Join(bpffs, halbMapHalbBackends)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer m.Close()
	live := 0
	err = eachBatched(m, path, func(_ uint32, rec halbBackend) {
		if (&beState{rec: rec}).live() {
			live++
		}
	})
	if err != nil {
		return 0, err
	}
	return live, nil
}
