package loader

import "slices"

// How the Datapath numbers services and backends in the maps.
//
// A service ID indexes halb_maglev and halb_service_stats. Nothing that
// outlives a service names its ID (conntrack is keyed by the flow, and the
// flow's VIP and port are the service's), so a freed service ID may be
// reused at once: serviceIDs hands out the lowest free one.
//
// A backend ID is what halb_ct remembers for each flow, and an LRU entry
// stays until it is evicted, however long its flow has been gone. A backend
// ID reused too early would send the packets of an old flow that is still
// alive to a stranger, perhaps a backend of another service. So:
//   - a backend that leaves the configuration has its record cleared at
//     once: flows that conntrack remembers for it are scheduled again by
//     their service's Maglev table on their next packet;
//   - its ID goes to the back of a FIFO of free IDs (backendIDs), so it
//     comes back only after every other free ID has been handed out, which
//     lets packets that read the old record before it was cleared drain
//     long before;
//   - before an ID is handed out again, halb_ct is purged of the entries
//     that still name it;
//   - and the program honours a conntrack entry only for a backend of the
//     packet's own service (struct backend's service), so an entry that
//     slipped through could move a flow within its service at worst.
//
// A drained backend (weight 0) keeps its ID and record: only a backend that
// leaves the configuration frees its ID.

// serviceIDs hands out IDs from 0 to n-1, lowest free first.
type serviceIDs struct {
	used []bool
}

func newServiceIDs(n uint32) *serviceIDs { return &serviceIDs{used: make([]bool, n)} }

// take returns the lowest free ID, and false when none is left.
func (s *serviceIDs) take() (uint32, bool) {
	for id, used := range s.used {
		if !used {
			s.used[id] = true
			return uint32(id), true
		}
	}
	return 0, false
}

// mark records id as in use (a service found in the maps at start).
func (s *serviceIDs) mark(id uint32) bool {
	if int(id) >= len(s.used) || s.used[id] {
		return false
	}
	s.used[id] = true
	return true
}

func (s *serviceIDs) free(id uint32) {
	if int(id) < len(s.used) {
		s.used[id] = false
	}
}

// backendIDs hands out IDs from 1 to n-1 (0 means "no backend"), the one
// free the longest first.
type backendIDs struct {
	queue []uint32 // free IDs, the next to hand out first
	used  []bool
}

func newBackendIDs(n uint32) *backendIDs {
	b := &backendIDs{used: make([]bool, n)}
	for id := uint32(1); id < n; id++ {
		b.queue = append(b.queue, id)
	}
	return b
}

// take returns the next free ID, and false when none is left.
func (b *backendIDs) take() (uint32, bool) {
	if len(b.queue) == 0 {
		return 0, false
	}
	id := b.queue[0]
	b.queue = b.queue[1:]
	b.used[id] = true
	return id, true
}

// mark records id as in use (a backend found in the maps at start).
func (b *backendIDs) mark(id uint32) bool {
	if id == 0 || int(id) >= len(b.used) || b.used[id] {
		return false
	}
	b.used[id] = true
	if i := slices.Index(b.queue, id); i >= 0 {
		b.queue = slices.Delete(b.queue, i, i+1)
	}
	return true
}

// free puts id at the back of the queue.
func (b *backendIDs) free(id uint32) {
	if id == 0 || int(id) >= len(b.used) || !b.used[id] {
		return
	}
	b.used[id] = false
	b.queue = append(b.queue, id)
}
