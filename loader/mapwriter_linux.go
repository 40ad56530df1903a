package loader

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/maglev"
	"github.com/halb-lb/halb/service"
)

// mapWriter is the one way Apply (and adopt) write the maps: every write
// of a service, a backend, a counter, a Maglev table or a conntrack purge
// goes through it, on top of the kernelLB's writers. It keeps two invariants,
// stated here once:
//
//   - A backend's id is out of every Maglev table before it is freed:
//     freeBackend refuses an id that a table written (or adopted) still
//     names, so no slot ever leads to a cleared record or to the next
//     backend that takes the id.
//   - A changed backend record moves the next-hop generation:
//     flushBackends and freeBackend note it, and moveNexthopGen, called
//     once after an Apply's records are written and before its tables
//     name them, makes every CPU ask the FIB again for the next hops it
//     cached for the old record.
//   - A changed halb_nat_replies entry moves it too: halb_reply_flows
//     keeps a NAT flow's translation beside its next hop, valid for the
//     generation it was filled in (putNATReply, deleteNATReply; the
//     caller, writeNATReplies, moves it after).
//
// It also counts the writes it makes (writes), so that tests can tell
// that an Apply that changes nothing writes nothing. Tables are written
// from several goroutines at once (stageTable); the rest from one.
type mapWriter struct {
	lb *kernelLB

	mu sync.Mutex
	// tables holds, for each service id, the distinct backend ids its
	// table in the kernel names; inTables counts the tables naming each
	// backend id, indexed by id: a slice of halb_backends' size, where a
	// map took some 25 bytes a backend (100 000 backends: 0.4 MB, not
	// 2.5).
	tables   map[uint32][]uint32
	inTables []int32
	// genDue: a backend record or a NAT reply entry changed since the
	// next-hop generation last moved.
	genDue bool
	// statIDs, recIDs and recs are the counter resets and the backend
	// records queued for flushBackends.
	statIDs, recIDs []uint32
	recs            []halbBackend
	writes          int
	tableBatches    int
	// swapTook is how long the last batch write of tables to halb_maglev
	// took: the kernel returns from a write to a map of maps only after an
	// RCU grace period, once no program still runs on the tables it
	// replaced (BenchmarkApply reports it beside the Apply).
	swapTook time.Duration
	// spares are tables swapped out of halb_maglev, kept to be written
	// again as the next table of any service (takeSpare), at most
	// maxSpares of them.
	spares []*ebpf.Map
	// held are handles on the tables installed last, oldest first, at
	// most maxSpares of them: when one of them is swapped out, it
	// becomes a spare without being looked up and opened (two system
	// calls, some 60 µs a table here). They are in halb_maglev: they
	// take no kernel memory of their own.
	held []heldTable
}

// heldTable is the table installed last for service, held open.
type heldTable struct {
	service uint32
	m       *ebpf.Map
}

// maxSpares bounds the tables kept to be written again. A table made
// anew costs the map's creation and the first write to each of its pages
// (about 0.5 ms of kernel time for 65537 slots on the virtual machines
// of BENCHMARKS.md), and its release later; one swapped out and written
// again costs a copy of its slots (some 30 µs). Two let an Apply that
// changes one or two tables make none, and cost 2 × 256 KiB of kernel
// memory at the default size: at 1000 services 0.2 % more, 4.013 bytes
// a slot of kernel memory for the tables rather than 4.005.
const maxSpares = 2

func newMapWriter(lb *kernelLB) *mapWriter {
	return &mapWriter{lb: lb, tables: map[uint32][]uint32{}, inTables: make([]int32, lb.maxBackends())}
}

// wrote counts one write.
func (w *mapWriter) wrote() {
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
}

// writeCount is how many writes the writer has made.
func (w *mapWriter) writeCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// putService writes a service's record (and halb_vips beside it).
func (w *mapWriter) putService(key service.Key, svc Service) error {
	w.wrote()
	return w.lb.putService(key, svc)
}

// deleteService removes a service's record: its packets go to the kernel.
func (w *mapWriter) deleteService(key service.Key) error {
	w.wrote()
	return w.lb.deleteService(key)
}

// dropServiceRecord deletes k from halb_services behind the VIP count's
// back; adopt does it for duplicates, then recounts (kernelLB.syncVIPs).
func (w *mapWriter) dropServiceRecord(k halbServiceKey) error {
	w.wrote()
	if err := w.lb.objs.HalbServices.Delete(&k); err != nil {
		return fmt.Errorf("delete from %s: %w", halbMapHalbServices, err)
	}
	return nil
}

// resetServiceStats zeroes the counters of a service id about to be used.
func (w *mapWriter) resetServiceStats(id uint32) error {
	w.wrote()
	return resetStats(w.lb.objs.HalbServiceStats, halbMapHalbServiceStats, id)
}

// foldBackendStats keeps the counters of backend id, freed from service
// svc, in the service's own (kernelLB.foldStats).
func (w *mapWriter) foldBackendStats(svc, id uint32) error {
	w.wrote()
	return w.lb.foldStats(svc, id)
}

// purgeConntrack forgets the flows of backend ids about to be reused.
func (w *mapWriter) purgeConntrack(ids map[uint32]bool) (int, error) {
	n, err := w.lb.purgeConntrack(ids)
	if n > 0 {
		w.wrote()
	}
	return n, err
}

// queueBackend queues backend id's record for flushBackends, and with
// fresh the zeroing of its counters before it: an Apply writes 100 000
// records in a few batch writes rather than 200 000 system calls.
func (w *mapWriter) queueBackend(id uint32, rec halbBackend, fresh bool) {
	if fresh {
		w.wrote()
		w.statIDs = append(w.statIDs, id)
	}
	w.wrote()
	w.recIDs = append(w.recIDs, id)
	w.recs = append(w.recs, rec)
}

// expect makes room for n more records (and counter resets) in the
// queues of flushBackends.
func (w *mapWriter) expect(n int) {
	w.recIDs = slices.Grow(w.recIDs, n)
	w.recs = slices.Grow(w.recs, n)
	w.statIDs = slices.Grow(w.statIDs, n)
}

// flushBackends writes the queued counter resets, then the queued
// records, in batches; the next-hop generation is due. It returns the ids
// whose record is not written, each with why (a record whose counters
// could not be zeroed is not written either).
func (w *mapWriter) flushBackends() map[uint32]error {
	statIDs, recIDs, recs := w.statIDs, w.recIDs, w.recs
	w.statIDs, w.recIDs, w.recs = nil, nil, nil
	failed := map[uint32]error{}
	if len(statIDs) > 0 {
		cpus, err := ebpf.PossibleCPU()
		zero := make([]halbStats, min(len(statIDs), flushBatch)*max(cpus, 1))
		for ids := range slices.Chunk(statIDs, flushBatch) {
			if err == nil {
				_, err = w.lb.objs.HalbBackendStats.BatchUpdate(ids, zero[:len(ids)*cpus], nil)
			}
			if err != nil {
				for _, id := range ids {
					if err := resetStats(w.lb.objs.HalbBackendStats, halbMapHalbBackendStats, id); err != nil {
						failed[id] = err
					}
				}
			}
		}
	}
	if len(failed) > 0 {
		recIDs, recs = dropFailed(recIDs, recs, failed)
	}
	for i := 0; i < len(recIDs); i += flushBatch {
		ids, batch := recIDs[i:min(i+flushBatch, len(recIDs))], recs[i:min(i+flushBatch, len(recs))]
		w.genDue = true
		if _, err := w.lb.objs.HalbBackends.BatchUpdate(ids, batch, nil); err == nil {
			continue
		}
		// Batches need Linux 5.6; one at a time tells which failed.
		for j, id := range ids {
			if err := w.lb.objs.HalbBackends.Put(id, &batch[j]); err != nil {
				failed[id] = fmt.Errorf("write backend %d: %w", id, err)
			}
		}
	}
	return failed
}

// flushBatch bounds the elements of one batch write (and the memory a
// batch of per-CPU counters takes).
const flushBatch = 8192

// dropFailed leaves out the records of the ids in failed.
func dropFailed(ids []uint32, recs []halbBackend, failed map[uint32]error) ([]uint32, []halbBackend) {
	var keptIDs []uint32
	var kept []halbBackend
	for i, id := range ids {
		if failed[id] == nil {
			keptIDs, kept = append(keptIDs, id), append(kept, recs[i])
		}
	}
	return keptIDs, kept
}

// freeBackend clears backend id's record, so that the id may be taken
// again. It refuses while a table names the id.
func (w *mapWriter) freeBackend(id uint32) error {
	w.mu.Lock()
	named := w.named(id)
	w.mu.Unlock()
	if named > 0 {
		return fmt.Errorf("backend %d: %w (%d), not freed", id, errNamed, named)
	}
	w.wrote()
	if err := w.lb.objs.HalbBackends.Put(id, &halbBackend{}); err != nil {
		return fmt.Errorf("clear backend %d: %w", id, err)
	}
	w.genDue = true
	return nil
}

// moveNexthopGen moves the next-hop generation when a record changed
// since it last moved.
func (w *mapWriter) moveNexthopGen() error {
	if !w.genDue {
		return nil
	}
	w.wrote()
	if err := w.lb.forgetNexthops(); err != nil {
		return err
	}
	w.genDue = false
	return nil
}

// setTable installs table as service's Maglev table at once.
func (w *mapWriter) setTable(service uint32, table []uint32) error {
	t, err := w.stageTable(service, table)
	if err != nil {
		return err
	}
	return w.installTables([]*stagedTable{t})
}

// stagedTable is a table written whole into a new map, waiting for
// installTables to swap it in (or discard to drop it).
type stagedTable struct {
	service uint32
	m       *ebpf.Map
	ids     []uint32 // the backend ids it names
}

// stageTable writes service's next table into a new map, whole, aside
// from halb_maglev. Safe for concurrent use: an Apply stages its tables
// on all cores, then installs them together.
func (w *mapWriter) stageTable(service uint32, table []uint32) (*stagedTable, error) {
	m, err := w.lb.newMaglevTable(service, table)
	if err != nil {
		return nil, err
	}
	return &stagedTable{service: service, m: m, ids: distinctIDs(table, w.lb.maxBackends())}, nil
}

// tableDraft is service's next table on its way to a stagedTable: its
// map is made (newMaglevMap) on a goroutine of its own (the draft's owner
// waits for it in stage or discard), so that this happens beside the
// build of the table rather than after it.
type tableDraft struct {
	service uint32
	ready   chan struct{}
	m       *ebpf.Map
	err     error
	// zeros, for a spare (takeSpare), which holds the slots of the
	// table it was: written when the new table names no backend.
	zeros []uint32
}

// draftTable starts making service's next table: a spare, when one is
// kept, else a new map. Safe for concurrent use.
func (w *mapWriter) draftTable(service uint32) *tableDraft {
	t := &tableDraft{service: service, ready: make(chan struct{})}
	if m := w.takeSpare(); m != nil {
		t.m, t.zeros = m, w.lb.zeroSlots()
		close(t.ready)
		return t
	}
	go func() {
		defer close(t.ready)
		t.m, t.err = w.lb.newMaglevMap(service)
	}()
	return t
}

// takeSpare is a table swapped out of halb_maglev, to be written whole
// again, or nil. Safe for concurrent use.
func (w *mapWriter) takeSpare() *ebpf.Map {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.spares)
	if n == 0 {
		return nil
	}
	m := w.spares[n-1]
	w.spares = w.spares[:n-1]
	return m
}

// outgoing opens the tables that a swap of services is about to replace,
// as many as may be kept as spares (held, or looked up), and none that
// is not of the size a table is now (from an earlier halb). w.mu is
// held.
func (w *mapWriter) outgoing(services []uint32) []*ebpf.Map {
	var out []*ebpf.Map
	for _, service := range services {
		m := w.unhold(service)
		room := len(w.spares)+len(out) < maxSpares
		if m == nil && room {
			m, _ = w.lb.openMaglevTable(service)
		}
		if m == nil {
			continue
		}
		if !room || !w.lb.fitsMaglev(m) {
			m.Close()
			continue
		}
		out = append(out, m)
	}
	return out
}

// unhold is service's held table, no longer held, or nil. w.mu is held.
func (w *mapWriter) unhold(service uint32) *ebpf.Map {
	i := slices.IndexFunc(w.held, func(h heldTable) bool { return h.service == service })
	if i < 0 {
		return nil
	}
	m := w.held[i].m
	w.held = slices.Delete(w.held, i, i+1)
	return m
}

// hold keeps t's handle, just installed, letting the oldest go beyond
// maxSpares. w.mu is held.
func (w *mapWriter) hold(t *stagedTable) {
	if len(w.held) == maxSpares {
		w.held[0].m.Close()
		w.held = slices.Delete(w.held, 0, 1)
	}
	w.held = append(w.held, heldTable{service: t.service, m: t.m})
}

// closeTables lets the spare tables go, and the handles held on tables
// installed (on Close).
func (w *mapWriter) closeTables() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.spares {
		m.Close()
	}
	for _, h := range w.held {
		h.m.Close()
	}
	w.spares, w.held = nil, nil
}

// spareTables are the spare tables kept, for BenchmarkApply's count of
// kernel memory.
func (w *mapWriter) spareTables() []*ebpf.Map {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.spares)
}

// stage writes the table whose slot s holds the index idx[s] in ids of
// the backend id it names (maglev.NoBackend: none), and makes it a
// stagedTable, remembering the ids it names. idx is overwritten: it is
// made the table's slots in place.
func (t *tableDraft) stage(idx []int32, ids []uint32) (*stagedTable, error) {
	<-t.ready
	if t.err != nil {
		return nil, t.err
	}
	slots := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(idx))), len(idx))
	named := fillSlots(slots, idx, ids)
	if named == nil {
		slots = t.zeros // a new map's are 0 already
	}
	if slots != nil {
		if err := writeSlots(t.m, slots); err != nil {
			t.m.Close()
			return nil, err
		}
	}
	return &stagedTable{service: t.service, m: t.m, ids: named}, nil
}

// fillSlots writes into slots the backend ids idx names, and returns
// those ids; slots may be idx itself. Every slot of a table names a
// backend, or none does (maglev.Build), and then it returns nil and
// leaves slots alone: a new table's slots are 0 already.
func fillSlots(slots []uint32, idx []int32, ids []uint32) []uint32 {
	if len(idx) == 0 || idx[0] == maglev.NoBackend {
		return nil
	}
	seen := make([]bool, len(ids))
	slots = slots[:len(idx)]
	for s, i := range idx {
		seen[i] = true
		slots[s] = ids[i]
	}
	var named []uint32
	for i, id := range ids {
		if seen[i] && id != 0 {
			named = append(named, id)
		}
	}
	return named
}

// discard drops a draft that is not to be staged.
func (t *tableDraft) discard() {
	<-t.ready
	if t.err == nil {
		t.m.Close()
	}
}

// discard drops a staged table that is not to be swapped in.
func (t *stagedTable) discard() { t.m.Close() }

// installTables swaps the staged tables in, all in one batch write to
// halb_maglev, and notes which ids each one names. Some of the tables
// swapped out become spares: the kernel returns from the write only once
// no program still runs on them.
func (w *mapWriter) installTables(staged []*stagedTable) error {
	if len(staged) == 0 {
		return nil
	}
	services := make([]uint32, len(staged))
	maps := make([]*ebpf.Map, len(staged))
	for i, t := range staged {
		services[i], maps[i] = t.service, t.m
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.outgoing(services)
	w.writes++
	w.tableBatches++
	start := time.Now()
	err := w.lb.installMaglevTables(services, maps)
	w.swapTook = time.Since(start)
	if err != nil {
		// Which were swapped is not known: none is kept.
		for _, m := range old {
			m.Close()
		}
		for _, t := range staged {
			t.discard()
		}
		return err
	}
	w.spares = append(w.spares, old...)
	for _, t := range staged {
		w.hold(t) // halb_maglev holds its own reference
	}
	for _, t := range staged {
		w.name(t.service, t.ids)
	}
	return nil
}

// lastSwap is how long the last batch write of tables to halb_maglev
// took.
func (w *mapWriter) lastSwap() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.swapTook
}

// tableBatchCount is how many batch writes of tables to halb_maglev the
// writer has made.
func (w *mapWriter) tableBatchCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tableBatches
}

// deleteTable removes service's Maglev table: its packets are dropped.
func (w *mapWriter) deleteTable(service uint32) error {
	w.wrote()
	if err := w.lb.deleteMaglevTable(service); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if m := w.unhold(service); m != nil {
		m.Close()
	}
	w.name(service, nil)
	return nil
}

// knowTable notes that service's table in the kernel is table: written
// now, or read back after a restart. Safe for concurrent use.
func (w *mapWriter) knowTable(service uint32, table []uint32) {
	ids := distinctIDs(table, w.lb.maxBackends())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.name(service, ids)
}

// distinctIDs are the backend ids (below limit, 0 left out) a table names,
// in the order they first appear: one pass over the table with a bitset,
// so that remembering what a table names costs little beside writing it.
func distinctIDs(table []uint32, limit uint32) []uint32 {
	seen := make([]uint64, (limit+63)/64)
	var ids []uint32
	for _, id := range table {
		if id == 0 || id >= limit || seen[id/64]&(1<<(id%64)) != 0 {
			continue
		}
		seen[id/64] |= 1 << (id % 64)
		ids = append(ids, id)
	}
	return ids
}

// adoptTable notes that service's table, found pinned by an earlier halb
// and not read, may name any of ids (its service's backends).
func (w *mapWriter) adoptTable(service uint32, ids []uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.name(service, slices.Clone(ids))
}

// name makes ids the backend ids service's table names. w.mu is held.
func (w *mapWriter) name(service uint32, ids []uint32) {
	for _, id := range w.tables[service] {
		w.count(id, -1)
	}
	delete(w.tables, service)
	if len(ids) == 0 {
		return
	}
	w.tables[service] = ids
	for _, id := range ids {
		w.count(id, 1)
	}
}

// count adds by to the tables naming backend id. w.mu is held.
func (w *mapWriter) count(id uint32, by int32) {
	if int(id) >= len(w.inTables) {
		w.inTables = append(w.inTables, make([]int32, int(id)+1-len(w.inTables))...)
	}
	w.inTables[id] += by
}

// named is how many tables name backend id. w.mu is held.
func (w *mapWriter) named(id uint32) int32 {
	if int(id) >= len(w.inTables) {
		return 0
	}
	return w.inTables[id]
}

// putNATReply writes where a NAT backend's replies go back from, when
// halb_nat_replies does not hold it already.
func (w *mapWriter) putNATReply(r natReply) error {
	wrote, err := w.lb.putNATReply(r)
	if wrote {
		w.wrote()
		w.genDue = true
	}
	return err
}

// deleteNATReply forgets a NAT backend's replies: they go to the kernel
// untouched.
func (w *mapWriter) deleteNATReply(k natReplyKey) error {
	w.wrote()
	w.genDue = true
	return w.lb.deleteNATReply(k.Backend, k.Proto)
}

// errNamed tells a backend id that a table still names.
var errNamed = errors.New("still named by a maglev table")
