package loader

import (
	"context"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/service"
)

// flowScanMax bounds how many halb_ct entries one listing reads: about
// 56 MB copied from the kernel in 256 batch reads, well under a second.
// halb_ct holds datapath.conntrack_entries (up to millions); a larger
// table is listed in part, and the list says so.
const flowScanMax = 1 << 20

// flowNames is what a listing needs of the Datapath's state to name a
// halb_ct entry: the service at each key, and each backend id in use.
// It is copied under d.mu, so that the scan runs without holding it.
type flowNames struct {
	services map[service.Key]string
	backends map[uint32]flowBackend
}

type flowBackend struct {
	addr    netip.AddrPort
	service service.Key
}

// Flows lists the flows halb_ct remembers (FlowLister): client, VIP,
// backend, when the flow began (its last SYN) and its packets since. The
// list is whatever halb_ct still holds: a flow that ended stays until the
// LRU evicts it, so closed connections show too.
func (d *Datapath) Flows(ctx context.Context, q service.FlowQuery) (service.FlowList, error) {
	names, err := d.flowNames()
	if err != nil {
		return service.FlowList{}, err
	}
	return d.lb.listFlows(ctx, names, q, flowScanMax)
}

var _ service.FlowLister = (*Datapath)(nil)

// flowNames copies the names of the services and backends in use.
func (d *Datapath) flowNames() (flowNames, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return flowNames{}, fmt.Errorf("flows: %w", service.ErrClosed)
	}
	n := flowNames{services: make(map[service.Key]string, len(d.applied)), backends: map[uint32]flowBackend{}}
	for key, st := range d.applied {
		n.services[key] = st.name
		for _, be := range st.backends {
			n.backends[be.id] = flowBackend{addr: be.key(), service: key}
		}
	}
	return n, nil
}

// listFlows reads halb_ct, at most scanMax entries, and keeps at most
// q.Limit flows of q.Service: memory is bounded by the limit and one
// batch, whatever the table holds.
func (lb *kernelLB) listFlows(ctx context.Context, names flowNames, q service.FlowQuery, scanMax int) (service.FlowList, error) {
	now, err := monotonicSeconds()
	if err != nil {
		return service.FlowList{}, err
	}
	var out service.FlowList
	complete, err := lb.eachFlow(ctx, scanMax, func(k halbFlow, v halbCtEntry) {
		out.Keep(q, names.flow(k, v, now))
	})
	if err != nil {
		return service.FlowList{}, err
	}
	if err := ctx.Err(); err != nil { // ran out during the last batch: no time left to sort
		return service.FlowList{}, fmt.Errorf("read %s: %w", halbMapHalbCt, err)
	}
	out.Partial = !complete
	out.Sort()
	return out, nil
}

// flow is one halb_ct entry as `halb flows` shows it. A backend id no
// longer in use, or in use by another service's backend (freed and handed
// out again), is shown by its id alone: the flow's next packet is
// scheduled again.
func (n flowNames) flow(k halbFlow, v halbCtEntry, now int64) service.Flow {
	key := service.Key{VIP: addrFrom(k.Daddr, k.Family), Port: k.Dport, Proto: service.Protocol(k.Proto)}
	f := service.Flow{
		Client:     netip.AddrPortFrom(addrFrom(k.Saddr, k.Family), k.Sport),
		Key:        key,
		Service:    n.services[key],
		BackendID:  v.BackendId,
		SourcePort: v.Sport,
	}
	if b, ok := n.backends[v.BackendId]; ok && b.service == key {
		f.Backend = b.addr
	}
	age := max(now-int64(v.FirstSeen), 0)
	packets := uint64(v.Packets)
	f.AgeSeconds, f.Packets = &age, &packets
	return f
}

// eachFlow calls f with halb_ct's entries, batchSize a system call (one
// at a time on a kernel without batch lookups), until it has read
// scanMax of them or ctx is done. It reports whether it read them all.
// Entries come and go while it reads: a flow may be missed or, rarely,
// seen twice.
func (lb *kernelLB) eachFlow(ctx context.Context, scanMax int, f func(halbFlow, halbCtEntry)) (bool, error) {
	return eachBatchedUpTo(ctx, lb.objs.HalbCt, halbMapHalbCt, scanMax, f)
}

// monotonicSeconds is the clock halb_ct's first_seen is read from, in
// seconds: bpf_ktime_get_coarse_ns is CLOCK_MONOTONIC_COARSE, which moves
// with the tick. CLOCK_MONOTONIC runs up to a tick ahead of it, so a flow
// stamped just before a second began would read a second older than it
// is.
func monotonicSeconds() (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read the monotonic clock: %w", err)
	}
	return int64(ts.Sec), nil // an int32 on 32-bit ARM
}
