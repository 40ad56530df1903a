package loader

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// LiveBackends counts the backends in the maps a halb pinned under
// bpffs that take new flows: their record is active and of a weight above
// 0, as Status tells them live. It reads halb_backends in batches and
// nothing else, so that a benchmark can watch 100 000 backends go live
// every few milliseconds (a status query reads each one's counters too,
// and takes seconds at that size). It needs Linux 5.6 (batch lookups).
func LiveBackends(bpffs string) (int, error) {
	path := filepath.Join(bpffs, halbMapHalbBackends)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer m.Close()
	keys := make([]uint32, 4096)
	vals := make([]halbBackend, len(keys))
	var cursor ebpf.MapBatchCursor
	live := 0
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if (&beState{rec: vals[i]}).live() {
				live++
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return live, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", path, err)
		}
	}
}
