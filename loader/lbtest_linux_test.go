package loader

// The kernelLB's writers and readers that only tests use: the daemon's
// writes go through mapWriter, which keeps the invariants these skip
// (a backend's id leaves every table before it is freed; a changed
// record moves the next-hop generation once per Apply).

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// xdpProgram is halb_xdp_lb, loaded (loadLB loads both programs).
func (lb *kernelLB) xdpProgram() *ebpf.Program { return lb.objs.HalbXdpLb }

// tcProgram is halb_tc_lb, the same balancer for the tc ingress hook.
func (lb *kernelLB) tcProgram() *ebpf.Program { return lb.objs.HalbTcLb }

// putBackend writes backend id and, when it has a MAC, makes it active:
// conntrack entries that name it are honoured.
func (lb *kernelLB) putBackend(id uint32, b Backend) error {
	v, err := lb.backendRecord(id, b)
	if err != nil {
		return err
	}
	if err := lb.objs.HalbBackends.Put(id, &v); err != nil {
		return fmt.Errorf("write backend %d: %w", id, err)
	}
	// The id may have served another backend, whose next hop the CPUs
	// still cache.
	return lb.forgetNexthops()
}

// deleteBackend clears backend id, and keeps its counters in its
// service's own, as Datapath.dropBackend does. Flows that conntrack
// remembers for it are scheduled again by their service's Maglev table,
// which should no longer name it. (To drain a backend instead, leave it
// and take it out of the Maglev tables: its flows stay, new ones go
// elsewhere.)
func (lb *kernelLB) deleteBackend(id uint32) error {
	var rec halbBackend
	if err := lb.objs.HalbBackends.Lookup(id, &rec); err != nil {
		return fmt.Errorf("read backend %d: %w", id, err)
	}
	if err := lb.objs.HalbBackends.Put(id, &halbBackend{}); err != nil {
		return fmt.Errorf("clear backend %d: %w", id, err)
	}
	if err := lb.foldStats(rec.Service, id); err != nil {
		return err
	}
	return lb.forgetNexthops()
}

// setMaglevTable gives service id a new Maglev table: table[slot] is the
// backend id for the flows that hash to slot, 0 for none, and
// len(table) is maglevTableSize. The table is written into a new map that
// then replaces the old one in a single update, so no packet ever sees a
// table half written.
func (lb *kernelLB) setMaglevTable(service uint32, table []uint32) error {
	m, err := lb.newMaglevTable(service, table)
	if err != nil {
		return err
	}
	defer m.Close()
	return lb.installMaglevTables([]uint32{service}, []*ebpf.Map{m})
}

// events reads how many times each event happened, summed over CPUs.
func (lb *kernelLB) events() (map[Event]uint64, error) {
	return sumCounters(lb.objs.HalbEvents, halbMapHalbEvents, Event(halbEventEVENTS))
}
