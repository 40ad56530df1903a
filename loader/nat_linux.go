package loader

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/service"
)

// forward: nat's own maps. The program rewrites a client's packet to its
// backend's address and port from the backend's record, as it sends any
// packet; the way back needs a map of its own: halb_nat_replies, keyed by
// a backend's address, port and protocol, says which VIP and port its
// replies go back as. An entry is derived from the services alone, never
// from a flow (the configuration refuses a backend address and port in two
// NAT services), so a node that becomes Master translates the replies of
// flows the old Master opened. halb_nat_last, a filter by the addresses'
// last byte, spares every other packet the lookup.

// natReply is one entry of halb_nat_replies: a NAT backend's replies
// from Backend over Proto go back from VIP.
type natReply struct {
	Backend   netip.AddrPort
	Proto     service.Protocol
	VIP       netip.AddrPort
	Service   uint32 // the service's id
	BackendID uint32 // the backend's id: the index of its reply counters
	// FullNAT: its replies come to the balancer's address, and
	// halb_fnat names their client.
	FullNAT bool
}

// natBook is halb_nat_replies and halb_nat_last as written: the entries,
// how many entries each backend address has (its address-only entry, the
// program's hairpin check, lives while it has any), and how many
// addresses end in each byte; and halb_fnat_last: how many full NAT
// entries have an address ending in each byte.
type natBook struct {
	mu        sync.Mutex
	entries   map[halbBackendKey]halbNatReply
	addrs     map[halbBackendKey]int
	lastBytes [256]int
	last      [256]uint8
	lastKnown bool
	fullBytes [256]int
	fullLast  [256]uint8
	fullKnown bool
}

// isFull tells a full NAT backend's entry.
func isFull(v halbNatReply) bool { return v.Flags&halbNatReplyFlagsNAT_REPLY_F_FULLNAT != 0 }

// natKeys are the map keys of r: its own, and its address's.
func natKeys(backend netip.AddrPort, proto service.Protocol) (halbBackendKey, halbBackendKey, error) {
	addr, family, err := addrOf(backend.Addr())
	if err != nil {
		return halbBackendKey{}, halbBackendKey{}, fmt.Errorf("nat backend %s: %w", backend, err)
	}
	k := halbBackendKey{Addr: addr, Port: backend.Port(), Proto: uint8(proto), Family: family}
	return k, halbBackendKey{Addr: addr, Family: family}, nil
}

// putNATReply writes r, and before it the address's entry and its byte in
// halb_nat_last: a reply the filter lets through finds its entry. It
// writes nothing when the map holds r already, and says whether it wrote.
func (lb *kernelLB) putNATReply(r natReply) (bool, error) {
	k, ak, err := natKeys(r.Backend, r.Proto)
	if err != nil {
		return false, err
	}
	vip, vfamily, err := addrOf(r.VIP.Addr())
	if err != nil || vfamily != k.Family {
		return false, fmt.Errorf("nat backend %s: VIP %s is not of its family", r.Backend, r.VIP)
	}
	v := halbNatReply{Vip: vip, Port: r.VIP.Port(), Service: r.Service, BackendId: r.BackendID}
	if r.FullNAT {
		v.Flags = halbNatReplyFlagsNAT_REPLY_F_FULLNAT
	}
	b := &lb.nat
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == nil {
		b.entries, b.addrs = map[halbBackendKey]halbNatReply{}, map[halbBackendKey]int{}
	}
	old, had := b.entries[k]
	if had && old == v {
		return false, nil
	}
	// A full NAT entry's byte before the entry, and a byte no entry
	// needs any more after it (writeNATLast, below).
	if isFull(v) && !(had && isFull(old)) {
		b.fullBytes[k.Addr.Bytes[15]]++
		if err := lb.writeNATLast(); err != nil {
			return true, err
		}
	}
	if !had {
		if b.addrs[ak] == 0 {
			if err := lb.objs.HalbNatReplies.Put(&ak, &halbNatReply{}); err != nil {
				return true, fmt.Errorf("write nat backend address %s to %s: %w", r.Backend.Addr(), halbMapHalbNatReplies, err)
			}
			b.lastBytes[ak.Addr.Bytes[15]]++
		}
		b.addrs[ak]++
		if err := lb.writeNATLast(); err != nil {
			return true, err
		}
	}
	if err := lb.objs.HalbNatReplies.Put(&k, &v); err != nil {
		return true, fmt.Errorf("write nat backend %s/%s to %s: %w", r.Backend, r.Proto, halbMapHalbNatReplies, err)
	}
	b.entries[k] = v
	if had && isFull(old) && !isFull(v) {
		b.fullBytes[k.Addr.Bytes[15]]--
		return true, lb.writeNATLast()
	}
	return true, nil
}

// deleteNATReply removes the entry of backend over proto, and its
// address's when it was the last of it; halb_nat_last after them.
func (lb *kernelLB) deleteNATReply(backend netip.AddrPort, proto service.Protocol) error {
	k, ak, err := natKeys(backend, proto)
	if err != nil {
		return err
	}
	b := &lb.nat
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.entries[k]
	if !ok {
		return nil
	}
	if err := deleteKey(lb.objs.HalbNatReplies, &k); err != nil {
		return fmt.Errorf("delete nat backend %s/%s from %s: %w", backend, proto, halbMapHalbNatReplies, err)
	}
	delete(b.entries, k)
	if isFull(old) {
		b.fullBytes[k.Addr.Bytes[15]]--
	}
	if b.addrs[ak]--; b.addrs[ak] > 0 {
		return lb.writeNATLast()
	}
	delete(b.addrs, ak)
	if err := deleteKey(lb.objs.HalbNatReplies, &ak); err != nil {
		return fmt.Errorf("delete nat backend address %s from %s: %w", backend.Addr(), halbMapHalbNatReplies, err)
	}
	b.lastBytes[ak.Addr.Bytes[15]]--
	return lb.writeNATLast()
}

// natReplyKeys are the (backend, proto) pairs halb_nat_replies holds.
func (lb *kernelLB) natReplyKeys() map[natReplyKey]bool {
	b := &lb.nat
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[natReplyKey]bool, len(b.entries))
	for k := range b.entries {
		addr := netip.AddrFrom16(k.Addr.Bytes).Unmap()
		out[natReplyKey{netip.AddrPortFrom(addr, k.Port), service.Protocol(k.Proto)}] = true
	}
	return out
}

// natReplyKey names an entry of halb_nat_replies.
type natReplyKey struct {
	Backend netip.AddrPort
	Proto   service.Protocol
}

// writeNATLast makes halb_nat_last name the last bytes of the addresses
// in the book, writing only when it changes. lb.nat.mu is held.
func (lb *kernelLB) writeNATLast() error {
	b := &lb.nat
	var last [256]uint8
	for i, n := range b.lastBytes {
		if n > 0 {
			last[i] = 1
		}
	}
	if !b.lastKnown || last != b.last {
		if err := lb.objs.HalbNatLast.Set(last); err != nil {
			return fmt.Errorf("write %s: %w", halbVarHalbNatLast, err)
		}
		b.last, b.lastKnown = last, true
	}
	var full [256]uint8
	for i, n := range b.fullBytes {
		if n > 0 {
			full[i] = 1
		}
	}
	if b.fullKnown && full == b.fullLast {
		return nil
	}
	if err := lb.objs.HalbFnatLast.Set(full); err != nil {
		return fmt.Errorf("write %s: %w", halbVarHalbFnatLast, err)
	}
	b.fullLast, b.fullKnown = full, true
	return nil
}

func deleteKey(m *ebpf.Map, k any) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// replyStats reads the counters of the NAT replies backend id sent, which
// the program translated back to their clients (NewFlows stays 0).
func (lb *kernelLB) replyStats(id uint32) (Stats, error) {
	return sumStats(lb.objs.HalbReplyStats, halbMapHalbReplyStats, id)
}

// natReplies are the entries halb_nat_replies should hold: one for each
// backend of each NAT service d.applied holds, with its id. A backend
// address, port and protocol in two NAT services is an error: its replies
// could not tell which VIP they go back as. The first service in key
// order keeps it. d.mu is held.
func (d *Datapath) natReplies() (map[natReplyKey]natReply, error) {
	want := map[natReplyKey]natReply{}
	owner := map[natReplyKey]*svcState{}
	var errs []error
	for st, be := range d.natBackends {
		key := st.key
		ap := be.key()
		k := natReplyKey{Backend: ap, Proto: key.Proto}
		if other := owner[k]; other != nil {
			errs = append(errs, fmt.Errorf("service %s: backend %s/%s is a backend of the NAT service %s too, and its replies could not tell which VIP they go back as: give it another port in one of them", st, ap, key.Proto, other))
			continue
		}
		owner[k] = st
		want[k] = natReply{Backend: ap, Proto: key.Proto, VIP: netip.AddrPortFrom(key.VIP, key.Port), Service: st.id, BackendID: be.id, FullNAT: st.fullnat}
	}
	return want, errors.Join(errs...)
}

// natBackends yields each backend of each NAT or full NAT service
// d.applied holds, services in key order: the one walk natReplies and
// natRepliesCounter share. d.mu is held.
func (d *Datapath) natBackends(yield func(*svcState, *beState) bool) {
	for _, key := range sortedKeys(d.applied) {
		st := d.applied[key]
		if !st.nat {
			continue
		}
		for i := range st.backends {
			if !yield(st, &st.backends[i]) {
				return
			}
		}
	}
}

// writeNATReplies writes the entries of halb_nat_replies that are new or
// changed and, when remove, deletes those no NAT backend has any more and
// reports the backends two NAT services share. Apply writes before the
// tables name new backends, so that their first replies find their way
// back, and removes after the backends that left are cleared. d.mu is
// held.
func (d *Datapath) writeNATReplies(remove bool) error {
	want, err := d.natReplies()
	var errs []error
	if remove {
		errs = append(errs, err)
	}
	for _, k := range sortedNATKeys(want) {
		errs = append(errs, d.maps.putNATReply(want[k]))
	}
	if remove {
		have := d.lb.natReplyKeys()
		for _, k := range sortedNATKeys(have) {
			if _, ok := want[k]; !ok {
				errs = append(errs, d.maps.deleteNATReply(k))
			}
		}
	}
	// The flows' cached translations (halb_reply_flows) go with the
	// entries they were taken from.
	errs = append(errs, d.maps.moveNexthopGen())
	return errors.Join(errs...)
}

func sortedNATKeys[V any](m map[natReplyKey]V) []natReplyKey {
	keys := make([]natReplyKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b natReplyKey) int {
		return cmp.Or(a.Backend.Compare(b.Backend), cmp.Compare(a.Proto, b.Proto))
	})
	return keys
}

// natRepliesCounter is the counter family of the NAT replies translated
// back, by backend ("198.51.100.11:8080/tcp"), for the metrics beside
// the drops. d.mu is held.
func (d *Datapath) natRepliesCounter() (service.Counter, error) {
	values := map[string]uint64{}
	for st, be := range d.natBackends {
		s, err := d.lb.replyStats(be.id)
		if err != nil {
			return service.Counter{}, err
		}
		values[be.key().String()+"/"+st.key.Proto.String()] += s.Packets
	}
	return NATRepliesCounter(values), nil
}

// wantedInterval is how often resolveWanted reads halb_neigh_wanted: a
// dropped reply waits at most this long, plus the kernel's resolution,
// before its next hop is asked for; TCP retransmits after 200 ms at the
// earliest.
const wantedInterval = 100 * time.Millisecond

// resolveWanted asks the kernel to resolve the next hops that the program
// left in halb_neigh_wanted, until ctx ends, while the last Apply had a
// NAT or full NAT service (no other kind leaves any): XDP drops a NAT
// reply whose next hop toward the client has no MAC yet
// (DropReplyNoNeigh) and cannot resolve it itself. The clients are not known beforehand, as backends
// are, and a node that becomes Master has often never spoken to them.
func (d *Datapath) resolveWanted(ctx context.Context) {
	tick := time.NewTicker(wantedInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if d.natServed.Load() {
			d.resolveWantedOnce()
		}
	}
}

// resolveWantedOnce takes the entries out of halb_neigh_wanted and asks
// the kernel to resolve each (NTF_USE, as solicit does for backends).
// An empty map costs one lookup.
func (d *Datapath) resolveWantedOnce() {
	var (
		k    halbReplyHopKey
		v    uint64
		keys []halbReplyHopKey
	)
	it := d.lb.objs.HalbNeighWanted.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		d.log.Warn("cannot read the next hops nat replies wait for", "map", halbMapHalbNeighWanted, "err", err)
		return
	}
	if len(keys) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	for i := range keys {
		k := keys[i]
		if err := deleteKey(d.lb.objs.HalbNeighWanted, &k); err != nil {
			d.log.Warn("cannot forget a next hop asked for", "map", halbMapHalbNeighWanted, "err", err)
		}
		addr := netip.AddrFrom16(k.Client.Bytes).Unmap()
		err := d.nl.NeighSet(&netlink.Neigh{LinkIndex: int(k.Ifindex), IP: addr.AsSlice(), State: netlink.NUD_NONE, Flags: netlink.NTF_USE})
		if err != nil {
			d.log.Warn("cannot ask for the mac of a nat client's next hop", "next_hop", addr.String(), "ifindex", k.Ifindex, "err", err)
			continue
		}
		d.log.Debug("asked for the mac of a nat client's next hop", "next_hop", addr.String(), "ifindex", k.Ifindex)
	}
}
