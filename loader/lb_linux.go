package loader

// The C is in bpf/: halb_lb.c (the entry points and balance(); its top
// comment says which header holds what), halb.h (the map layout, which
// bpf2go turns into the halb* Go types; TestMapLayout holds the Go side to
// its asserted sizes) and a header per concern (maps, parse, checks,
// tunnel, icmp, csum, jhash).
//
// clang -target bpf does not search Debian's multiarch include directory,
// where <asm/types.h> lives (every uapi header includes it); -idirafter
// names it for the architectures halb builds on. Only the directory that
// exists is read, and all of them hold the same definitions, so the objects
// come out the same on any of these hosts.
//
//go:generate go tool bpf2go -tags linux -type addr -type family -type forward_mode -type service_flags -type backend_flags -type nat_reply_flags -type drop_reason -type event -type nexthop halb ../bpf/halb_lb.c -- -I../bpf -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu -idirafter /usr/include/arm-linux-gnueabihf -O2 -g -Wall -Werror -mcpu=v3

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/service"
)

// Defaults for Options, the same as the configuration's.
const (
	DefaultMaglevTableSize  = 65537
	DefaultConntrackEntries = 65536
	DefaultMaxBackends      = 4096
	// The source ports forward: fullnat gives flows, per backend: below
	// Linux's default ip_local_port_range (32768-60999), where the
	// node's own connections, its health checks among them, take their
	// ports, so that a reply to one of those never meets a full NAT
	// flow's entry; and above the privileged ports.
	DefaultSNATPortFirst = 1024
	DefaultSNATPortLast  = 32767
)

// Options size the maps whose size the configuration chooses.
type Options struct {
	// MaglevTableSize is M, the slots in every service's Maglev table
	// (datapath.maglev_table_size, a prime). 0 means
	// DefaultMaglevTableSize.
	MaglevTableSize uint32
	// ConntrackEntries is how many flows halb_ct remembers
	// (datapath.conntrack_entries). 0 means DefaultConntrackEntries.
	ConntrackEntries uint32
	// MaxBackends sizes halb_backends and the per-backend maps beside it
	// (datapath.max_backends): backend IDs run from 1 to MaxBackends-1.
	// 0 means DefaultMaxBackends.
	MaxBackends uint32
	// SNATPortFirst and SNATPortLast bound the source ports that
	// forward: fullnat gives its flows (datapath.snat_ports). 0 means
	// DefaultSNATPortFirst and DefaultSNATPortLast.
	SNATPortFirst, SNATPortLast uint16
}

// kernelLB is halb's load balancer in the kernel: the programs halb_xdp_lb and
// halb_tc_lb (each loaded when first wanted) and their maps, attached nowhere. Its methods write the maps the
// program reads and read the counters it keeps; it is safe for concurrent
// use.
type kernelLB struct {
	// objs holds the programs loaded so far (program) and the maps.
	objs halbObjects
	// progMu guards the programs in objs.
	progMu sync.Mutex
	// opts sized the maps; shared are the maps by name, and data the
	// maps of the programs' variables, which objs leaves out: a program
	// loaded later is made from opts and takes its maps from shared.
	opts   Options
	shared map[string]*ebpf.Map
	data   *ebpf.Collection
	// maglev is the template of one service's Maglev table, sized at
	// load: slots slots, all in its one element.
	maglev *ebpf.MapSpec
	slots  uint32
	// zeros is a table that names no backend (zeroSlots).
	zeroOnce sync.Once
	zeros    []uint32
	// mu serialises the service writers, which keep halb_vips in step
	// with halb_services, and guards vips.
	mu sync.Mutex
	// vips is what halb_vips and halb_vip_last are derived from, kept in
	// Go so that a service written costs no walk of halb_services.
	vips vipBook
	// genMu serialises the bumps of halb_nexthop_gen.
	genMu sync.Mutex
	// macMu serialises the writers of halb_local_macs.
	macMu sync.Mutex
	// nat is halb_nat_replies and halb_nat_last as written (nat_linux.go).
	nat natBook
}

// loadLB loads halb_xdp_lb and halb_tc_lb and creates their maps, sized by
// opts, pinned nowhere. It needs CAP_BPF and CAP_NET_ADMIN (or root).
func loadLB(opts Options) (*kernelLB, error) {
	spec, maglev, err := newSpec(opts)
	if err != nil {
		return nil, err
	}
	return load(spec, maglev, opts, &ebpf.CollectionOptions{}, halbProgHalbXdpLb, halbProgHalbTcLb)
}

// mmapable says whether the kernel makes BPF arrays that can be mapped
// into memory (BPF_F_MMAPABLE, Linux 5.5). The data path needs them:
// cilium/ebpf reads and writes the program's variables through a mapping,
// so the load stops with the reason on an older kernel. Tests replace it
// to take that way.
var mmapable = func() error { return features.HaveMapFlag(features.BPF_F_MMAPABLE) }

// newSpec is the collection sized by opts, and the template of one
// service's Maglev table.
func newSpec(opts Options) (*ebpf.CollectionSpec, *ebpf.MapSpec, error) {
	if opts.MaglevTableSize == 0 {
		opts.MaglevTableSize = DefaultMaglevTableSize
	}
	if opts.ConntrackEntries == 0 {
		opts.ConntrackEntries = DefaultConntrackEntries
	}
	if opts.MaxBackends == 0 {
		opts.MaxBackends = DefaultMaxBackends
	}
	if opts.SNATPortFirst == 0 || opts.SNATPortLast < opts.SNATPortFirst {
		opts.SNATPortFirst, opts.SNATPortLast = DefaultSNATPortFirst, DefaultSNATPortLast
	}
	spec, err := loadHalb()
	if err != nil {
		return nil, nil, err
	}
	// The program computes hash % M with M from halb_maglev_size, and the
	// verifier checks its reads of a table against the inner map's value
	// size: both come from the one option. All M slots are the one value
	// (bpf/halb_maps.h), whose BTF type has the default's size: the
	// tables go without BTF.
	maglev := spec.Maps[halbMapHalbMaglev].InnerMap
	maglev.ValueSize = 4 * opts.MaglevTableSize
	maglev.Key, maglev.Value = nil, nil
	if err := mmapable(); errors.Is(err, ebpf.ErrNotSupported) {
		return nil, nil, fmt.Errorf("%w: halb's eBPF data path writes its variables (halb_vip_last, halb_nexthop_gen) "+
			"through BPF arrays mapped into memory (BPF_F_MMAPABLE, Linux 5.5), and this kernel cannot map them; use datapath.mode: ipvs, or Linux 5.5 or later", err)
	}
	if err := spec.Variables[halbVarHalbMaglevSize].Set(opts.MaglevTableSize); err != nil {
		return nil, nil, fmt.Errorf("set %s: %w", halbVarHalbMaglevSize, err)
	}
	spec.Maps[halbMapHalbCt].MaxEntries = opts.ConntrackEntries
	// A full NAT flow has an entry in each, and a NAT flow's replies
	// one in halb_reply_flows.
	spec.Maps[halbMapHalbFnat].MaxEntries = opts.ConntrackEntries
	spec.Maps[halbMapHalbReplyFlows].MaxEntries = opts.ConntrackEntries
	if err := spec.Variables[halbVarHalbSnatPortFirst].Set(uint32(opts.SNATPortFirst)); err != nil {
		return nil, nil, fmt.Errorf("set %s: %w", halbVarHalbSnatPortFirst, err)
	}
	if err := spec.Variables[halbVarHalbSnatPortCount].Set(uint32(opts.SNATPortLast-opts.SNATPortFirst) + 1); err != nil {
		return nil, nil, fmt.Errorf("set %s: %w", halbVarHalbSnatPortCount, err)
	}
	// Every map indexed by backend ID has the same size: the program
	// bounds its lookups by the map, not by HALB_MAX_BACKENDS.
	for _, name := range []string{halbMapHalbBackends, halbMapHalbBackendStats, halbMapHalbNexthops, halbMapHalbReplyStats} {
		spec.Maps[name].MaxEntries = opts.MaxBackends
	}
	return spec, maglev.Copy(), nil
}

// load loads spec's maps and, of its programs, those named in progs;
// copts says where maps are pinned, if anywhere. opts are what spec was
// made from (newSpec): program makes the others from them when they are
// first wanted.
func load(spec *ebpf.CollectionSpec, maglev *ebpf.MapSpec, opts Options, copts *ebpf.CollectionOptions, progs ...string) (*kernelLB, error) {
	lb := &kernelLB{maglev: maglev, opts: opts}
	if err := spec.Variables[halbVarHalbMaglevSize].Get(&lb.slots); err != nil {
		return nil, fmt.Errorf("read %s: %w", halbVarHalbMaglevSize, err)
	}
	coll, err := loadPrograms(spec, copts, progs)
	if err != nil {
		return nil, err
	}
	lb.shared = maps.Clone(coll.Maps)
	lb.objs.HalbXdpLb = coll.DetachProgram(halbProgHalbXdpLb)
	lb.objs.HalbTcLb = coll.DetachProgram(halbProgHalbTcLb)
	err = errors.Join(coll.Assign(&lb.objs.halbMaps), coll.Assign(&lb.objs.halbVariables))
	// What objs does not take are the maps of the programs' variables
	// (.bss, .rodata): a program loaded later shares them.
	lb.data = coll
	if err != nil {
		lb.close()
		return nil, fmt.Errorf("load %s: %w", strings.Join(progs, " and "), err)
	}
	// halb_services and halb_vips may be pinned, and full, from an
	// earlier halb.
	if err := lb.readVIPs(); err != nil {
		lb.close()
		return nil, err
	}
	return lb, nil
}

// program is the program called name (halb_xdp_lb or halb_tc_lb), loaded
// with the maps of those before it the first time it is wanted: the
// verifier takes some 0.35 s over halb_xdp_lb and 0.7 s over halb_tc_lb
// on a 2-core machine, and a data path attached by XDP alone never needs
// halb_tc_lb (nor one on tc halb_xdp_lb), so NewDatapath loads the
// program of its first hook only. Safe for concurrent use.
func (lb *kernelLB) program(name string) (*ebpf.Program, error) {
	lb.progMu.Lock()
	defer lb.progMu.Unlock()
	slot := &lb.objs.HalbXdpLb
	if name == halbProgHalbTcLb {
		slot = &lb.objs.HalbTcLb
	}
	if *slot != nil {
		return *slot, nil
	}
	spec, _, err := newSpec(lb.opts)
	if err != nil {
		return nil, err
	}
	coll, err := loadPrograms(spec, &ebpf.CollectionOptions{MapReplacements: lb.shared}, []string{name})
	if err != nil {
		return nil, err
	}
	defer coll.Close() // the clones of the shared maps
	*slot = coll.DetachProgram(name)
	return *slot, nil
}

// loadPrograms loads spec's maps and, of its programs, those named in
// progs.
func loadPrograms(spec *ebpf.CollectionSpec, copts *ebpf.CollectionOptions, progs []string) (*ebpf.Collection, error) {
	only := *spec
	only.Programs = make(map[string]*ebpf.ProgramSpec, len(progs))
	for _, name := range progs {
		only.Programs[name] = spec.Programs[name]
	}
	coll, err := ebpf.NewCollectionWithOptions(&only, *copts)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", strings.Join(progs, " and "), err)
	}
	return coll, nil
}

// loaded are the programs loaded so far.
func (lb *kernelLB) loaded() []*ebpf.Program {
	lb.progMu.Lock()
	defer lb.progMu.Unlock()
	var out []*ebpf.Program
	for _, p := range []*ebpf.Program{lb.objs.HalbXdpLb, lb.objs.HalbTcLb} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// close releases the programs and the maps. Attachments and pins made
// from them keep them alive.
func (lb *kernelLB) close() error {
	if lb.data != nil {
		lb.data.Close()
	}
	return lb.objs.Close()
}

// maglevTableSize is M, the length of every table setMaglevTable takes.
func (lb *kernelLB) maglevTableSize() int { return int(lb.slots) }

// Forward is how a service reaches its backends.
type Forward uint8

const (
	// ForwardDR rewrites the Ethernet addresses only; the backend holds
	// the VIP itself and answers the client directly.
	ForwardDR = Forward(halbForwardModeFORWARD_DR)
	// ForwardTUN puts the packet in an outer IPv4 (IPIP) or IPv6
	// (IP6IP6) header from the balancer's address to the backend's, and
	// sends it to the next hop the kernel's FIB names; the backend
	// decapsulates, holds the VIP, and answers the client directly. Its
	// backends have a Src. The FIB lookup needs forwarding enabled on the
	// backends' interfaces (net.ipv4.conf.IF.forwarding,
	// net.ipv6.conf.IF.forwarding).
	ForwardTUN = Forward(halbForwardModeFORWARD_TUN)
	// ForwardNAT rewrites the destination to the backend's address and
	// port, and sends the packet to the next hop the kernel's FIB names;
	// the backend's replies come back through the balancer (its route to
	// the clients goes there), which rewrites their source back to the
	// VIP and port (halb_nat_replies, nat_linux.go). Its backends have a
	// Src, as tunnel ends do, and a Port.
	ForwardNAT = Forward(halbForwardModeFORWARD_NAT)
	// ForwardFullNAT is ForwardNAT that rewrites the source too: to the
	// backend's Src (the service's snat_address, or the kernel's source
	// toward it) and a port of the pool, so that the backend needs no
	// route to the clients. Its replies are known by that address and
	// port in halb_fnat, which the program writes per flow.
	ForwardFullNAT = Forward(halbForwardModeFORWARD_FULLNAT)
)

func (f Forward) String() string {
	switch f {
	case ForwardDR:
		return "dr"
	case ForwardTUN:
		return "tun"
	case ForwardNAT:
		return "nat"
	case ForwardFullNAT:
		return "fullnat"
	}
	return fmt.Sprintf("forward(%d)", uint8(f))
}

// Service is how the data path serves one service.Key.
type Service struct {
	// ID names the service in the maps: the index of its Maglev table and
	// of its counters. Unique, below MaxServices.
	ID      uint32
	Forward Forward
	// Persistence hashes the client's address alone, so all of one
	// client's flows meet one backend while the Maglev table holds still.
	Persistence bool
}

// maxServices is how many services the maps hold; IDs run below it.
func (lb *kernelLB) maxServices() uint32 { return lb.objs.HalbMaglev.MaxEntries() }

// maxBackends is how many backends the maps hold; IDs run from 1 to
// maxBackends-1 (0 means "no backend").
func (lb *kernelLB) maxBackends() uint32 { return lb.objs.HalbBackends.MaxEntries() }

// putService adds the service at key, or changes it.
func (lb *kernelLB) putService(key service.Key, svc Service) error {
	k, err := serviceKey(key)
	if err != nil {
		return err
	}
	if svc.ID >= lb.maxServices() {
		return fmt.Errorf("service %s: id %d is out of range: the maps hold ids 0 to %d", key, svc.ID, lb.maxServices()-1)
	}
	if svc.Forward != ForwardDR && svc.Forward != ForwardTUN && svc.Forward != ForwardNAT && svc.Forward != ForwardFullNAT {
		return fmt.Errorf("service %s: %w", key, unsupported("forward mode "+svc.Forward.String()))
	}
	v := halbService{Id: svc.ID, Forward: halbForwardMode(svc.Forward)}
	if svc.Persistence {
		v.Flags |= halbServiceFlagsSERVICE_F_SOURCE_HASH
	}

	lb.mu.Lock()
	defer lb.mu.Unlock()
	var old halbService
	hadOld := lb.objs.HalbServices.Lookup(&k, &old) == nil
	if err := lb.objs.HalbServices.Put(&k, &v); err != nil {
		return fmt.Errorf("write service %s: %w", key, err)
	}
	// halb_service_ids after halb_services: the short way to a service
	// leads where the long way does.
	if err := lb.objs.HalbServiceIds.Put(svc.ID, &halbServiceSlot{Key: k, Svc: v}); err != nil {
		return fmt.Errorf("write service %s to %s: %w", key, halbMapHalbServiceIds, err)
	}
	if hadOld && old.Id != svc.ID {
		if err := lb.clearSlot(old.Id, k); err != nil {
			return err
		}
	}
	vk := halbVipKey{Addr: k.Vip, Family: k.Family}
	if !hadOld {
		lb.vips.services[vk]++
	}
	return lb.syncVIP(vk)
}

// deleteService removes the service at key. Its Maglev table and counters
// stay until the ID is reused or deleteMaglevTable removes the table.
func (lb *kernelLB) deleteService(key service.Key) error {
	k, err := serviceKey(key)
	if err != nil {
		return err
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var old halbService
	if err := lb.objs.HalbServices.Lookup(&k, &old); err == nil {
		// The short way goes first: no packet may reach the service
		// once it is gone from halb_services.
		if err := lb.clearSlot(old.Id, k); err != nil {
			return err
		}
	}
	if err := lb.objs.HalbServices.Delete(&k); err != nil {
		return fmt.Errorf("delete service %s: %w", key, err)
	}
	vk := halbVipKey{Addr: k.Vip, Family: k.Family}
	lb.vips.forget(vk)
	return lb.syncVIP(vk)
}

// each calls f with every entry of m, in the map's order, and wraps an
// error reading it with the map's name. It is how the kernelLB's walks
// read their maps; nothing outside lb_linux.go iterates them.
func each[K, V any](m *ebpf.Map, name string, f func(K, V)) error {
	_, err := iterateUpTo(m, name, math.MaxInt, f)
	return err
}

// iterateUpTo is each for at most scanMax entries, one at a time. It
// reports whether it read them all.
func iterateUpTo[K, V any](m *ebpf.Map, name string, scanMax int, f func(K, V)) (bool, error) {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for read := 0; read < scanMax; read++ {
		if !it.Next(&k, &v) {
			if err := it.Err(); err != nil {
				return false, fmt.Errorf("read %s: %w", name, err)
			}
			return true, nil
		}
		f(k, v)
	}
	return false, nil
}

// eachService calls f with every record of halb_services, for adopt.
func (lb *kernelLB) eachService(f func(halbServiceKey, halbService)) error {
	return each(lb.objs.HalbServices, halbMapHalbServices, f)
}

// eachBatched is each read batchSize entries a system call: one lookup
// and one next-key call an entry would cost each start that adopts
// halb_backends 200 000 system calls at 100 000 backends, about half a
// second of its way to "services programmed". On a kernel without batch
// lookups (before 5.6) it is each.
func eachBatched[K, V any](m *ebpf.Map, name string, f func(K, V)) error {
	_, err := eachBatchedUpTo(context.Background(), m, name, math.MaxInt, f)
	return err
}

// eachBatchedUpTo is eachBatched until it has read scanMax entries or ctx
// is done. It reports whether it read them all. Entries come and go while
// it reads: one may be missed or, rarely, seen twice.
func eachBatchedUpTo[K, V any](ctx context.Context, m *ebpf.Map, name string, scanMax int, f func(K, V)) (bool, error) {
	n := min(batchSize, scanMax)
	keys := make([]K, n)
	vals := make([]V, n)
	var cursor ebpf.MapBatchCursor
	read := 0
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("read %s: %w", name, err)
		}
		want := min(n, scanMax-read)
		got, err := m.BatchLookup(&cursor, keys[:want], vals[:want], nil)
		for i := range got {
			f(keys[i], vals[i])
		}
		read += got
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return true, nil
		case first && errors.Is(err, ebpf.ErrNotSupported):
			return iterateUpTo(m, name, scanMax, f)
		case errors.Is(err, unix.ENOSPC) && want < batchSize:
			// The bound cut this batch short (what is left of it, or
			// scanMax itself) and the next bucket of the hash holds more
			// entries than that: the bound is reached.
			return false, nil
		case err != nil:
			return false, fmt.Errorf("read %s: %w", name, err)
		case read >= scanMax:
			return false, nil
		}
	}
}

// batchSize is how many entries eachBatched reads a system call.
const batchSize = 4096

// eachBackend calls f with every record of halb_backends, cleared ones
// too, for adopt.
func (lb *kernelLB) eachBackend(f func(id uint32, b halbBackend)) error {
	return eachBatched(lb.objs.HalbBackends, halbMapHalbBackends, f)
}

// eachTable calls f with the id of every service halb_maglev holds a
// table for, for adopt.
func (lb *kernelLB) eachTable(f func(service uint32)) error {
	return each(lb.objs.HalbMaglev, halbMapHalbMaglev, func(service, _ uint32) { f(service) })
}

// eachTxPort calls f with every interface halb_tx_ports lets the program
// redirect to.
func (lb *kernelLB) eachTxPort(f func(ifindex uint32)) error {
	return each(lb.objs.HalbTxPorts, halbMapHalbTxPorts, func(ifindex, _ uint32) { f(ifindex) })
}

// clearSlot clears service id's entry in halb_service_ids when it leads to
// key. lb.mu is held.
func (lb *kernelLB) clearSlot(id uint32, k halbServiceKey) error {
	var slot halbServiceSlot
	if err := lb.objs.HalbServiceIds.Lookup(id, &slot); err != nil {
		return fmt.Errorf("read %d from %s: %w", id, halbMapHalbServiceIds, err)
	}
	if slot.Key != k {
		return nil
	}
	if err := lb.objs.HalbServiceIds.Put(id, &halbServiceSlot{}); err != nil {
		return fmt.Errorf("clear %d in %s: %w", id, halbMapHalbServiceIds, err)
	}
	return nil
}

// syncServiceIDs makes halb_service_ids hold exactly what halb_services
// says, as after a restart that adopted halb_services but not it. lb.mu
// is held.
func (lb *kernelLB) syncServiceIDs() error {
	want := map[uint32]halbServiceSlot{}
	err := lb.eachService(func(k halbServiceKey, v halbService) {
		if v.Id < lb.maxServices() {
			want[v.Id] = halbServiceSlot{Key: k, Svc: v}
		}
	})
	if err != nil {
		return err
	}
	for id := range lb.maxServices() {
		var have halbServiceSlot
		if err := lb.objs.HalbServiceIds.Lookup(id, &have); err != nil {
			return fmt.Errorf("read %d from %s: %w", id, halbMapHalbServiceIds, err)
		}
		if have == want[id] {
			continue
		}
		slot := want[id]
		if err := lb.objs.HalbServiceIds.Put(id, &slot); err != nil {
			return fmt.Errorf("write %d to %s: %w", id, halbMapHalbServiceIds, err)
		}
	}
	return nil
}

// vipBook is what halb_vips and halb_vip_last are derived from: how many
// services halb_services holds on each VIP, and which VIPs halb_vips
// holds, with what count, as last written. The kernelLB keeps it up to date on
// every service put and delete, so writing one service costs no walk of
// halb_services (which made writing S services cost S² lookups).
type vipBook struct {
	// services counts the services of each VIP in halb_services.
	services map[halbVipKey]uint32
	// held is halb_vips as written: a VIP's count there.
	held map[halbVipKey]uint32
	// lastBytes counts the VIPs in held by their last byte: the filter
	// halb_vip_last is the bytes counted here.
	lastBytes [256]uint32
	// last is halb_vip_last as written; lastKnown is false until the
	// first write.
	last      [256]uint8
	lastKnown bool
}

func newVIPBook() vipBook {
	return vipBook{services: map[halbVipKey]uint32{}, held: map[halbVipKey]uint32{}}
}

// forget counts one service fewer on k.
func (b *vipBook) forget(k halbVipKey) {
	if b.services[k] <= 1 {
		delete(b.services, k)
		return
	}
	b.services[k]--
}

// hold notes that halb_vips holds k with n services.
func (b *vipBook) hold(k halbVipKey, n uint32) {
	if _, ok := b.held[k]; !ok {
		b.lastBytes[k.Addr.Bytes[15]]++
	}
	b.held[k] = n
}

// drop notes that halb_vips no longer holds k.
func (b *vipBook) drop(k halbVipKey) {
	if _, ok := b.held[k]; ok {
		b.lastBytes[k.Addr.Bytes[15]]--
		delete(b.held, k)
	}
}

// lastFilter is what halb_vip_last should be: the last bytes of the VIPs
// held, and also's when it is not nil.
func (b *vipBook) lastFilter(also *halbVipKey) [256]uint8 {
	var last [256]uint8
	for i, n := range b.lastBytes {
		if n > 0 {
			last[i] = 1
		}
	}
	if also != nil {
		last[also.Addr.Bytes[15]] = 1
	}
	return last
}

// readVIPs fills lb.vips from the maps, which may be pinned by an earlier
// halb: one walk of halb_services and one of halb_vips. halb_vip_last is
// written from what it finds. lb.mu is held, or nobody else has lb yet.
func (lb *kernelLB) readVIPs() error {
	book := newVIPBook()
	err := lb.eachService(func(k halbServiceKey, _ halbService) {
		book.services[halbVipKey{Addr: k.Vip, Family: k.Family}]++
	})
	if err != nil {
		return err
	}
	err = each(lb.objs.HalbVips, halbMapHalbVips, func(k halbVipKey, v halbVip) { book.hold(k, v.Services) })
	if err != nil {
		return err
	}
	lb.vips = book
	return lb.writeVIPLast(nil)
}

// syncVIPs makes halb_vips count the services of every VIP, after
// halb_services was changed by other means than putService and
// deleteService (an adopting restart clears duplicates). lb.mu is held.
func (lb *kernelLB) syncVIPs() error {
	if err := lb.readVIPs(); err != nil {
		return err
	}
	keys := make([]halbVipKey, 0, len(lb.vips.held)+len(lb.vips.services))
	for k := range lb.vips.held {
		keys = append(keys, k)
	}
	for k := range lb.vips.services {
		if _, ok := lb.vips.held[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if err := lb.syncVIP(k); err != nil {
			return err
		}
	}
	return nil
}

// syncVIP makes halb_vips count the services on one VIP, as lb.vips
// does, and forget the VIP when none is left. It writes only what
// differs. lb.mu is held.
func (lb *kernelLB) syncVIP(key halbVipKey) error {
	n := lb.vips.services[key]
	if n == 0 {
		if _, ok := lb.vips.held[key]; ok {
			err := lb.objs.HalbVips.Delete(&key)
			if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from %s: %w", halbMapHalbVips, err)
			}
			lb.vips.drop(key)
		}
		return lb.writeVIPLast(nil)
	}
	// The VIP's last byte first: a packet from the VIP must not pass the
	// program's filter while the VIP is in halb_vips.
	if err := lb.writeVIPLast(&key); err != nil {
		return err
	}
	if have, ok := lb.vips.held[key]; ok && have == n {
		return nil
	}
	if err := lb.objs.HalbVips.Put(&key, &halbVip{Services: n}); err != nil {
		return fmt.Errorf("write %s: %w", halbMapHalbVips, err)
	}
	lb.vips.hold(key, n)
	return nil
}

// writeVIPLast makes halb_vip_last name the last bytes of the VIPs in
// halb_vips, and also's when it is not nil: the filter in front of the
// program's check of a new flow's source against the VIPs. It writes only
// when the filter changes. lb.mu is held, or nobody else has lb yet.
func (lb *kernelLB) writeVIPLast(also *halbVipKey) error {
	last := lb.vips.lastFilter(also)
	if lb.vips.lastKnown && last == lb.vips.last {
		return nil
	}
	if err := lb.objs.HalbVipLast.Set(last); err != nil {
		return fmt.Errorf("write %s: %w", halbVarHalbVipLast, err)
	}
	lb.vips.last, lb.vips.lastKnown = last, true
	return nil
}

// Backend is one real server as the data path sees it.
type Backend struct {
	// Addr is the backend's own address: the outer destination for
	// forward: tun. DR does not use it; it is there for bpftool readers.
	Addr netip.Addr
	// Src makes the backend a tunnel end (forward: tun): it is the
	// balancer's own address toward Addr, of Addr's family, the outer
	// source. A tunnel end is active without a MAC: the program asks the
	// kernel's FIB for the next hop out of Ifindex.
	Src netip.Addr
	// MAC is the backend's Ethernet address, the destination of its
	// frames (DR). Without one (nil) a DR backend's record is written
	// inactive: it holds the backend's place while its address is being
	// resolved, and the program sends it nothing.
	MAC net.HardwareAddr
	// Ifindex is the interface that reaches the backend (for a tunnel
	// end, its next hop). When the program is attached there, it sends
	// frames back out (XDP_TX); otherwise the interface must be a tx port
	// (addTxPort).
	Ifindex int
	// SrcMAC is that interface's own address, the source of DR's frames.
	SrcMAC net.HardwareAddr

	// The program does not read these; they let bpftool readers, and a
	// restarted loader, tell whose backend a record is.
	Port    uint16 // the backend's port; DR keeps the packet's
	Service uint32 // the ID of the service it serves
	Weight  uint32 // its share of the service's Maglev table; 0 drains it
}

// forgetNexthops makes every CPU ask the FIB again for the next hops of
// TUN backends, which it caches in halb_nexthops (for at most a second
// without this): after a route, a neighbour or a backend changed.
func (lb *kernelLB) forgetNexthops() error {
	lb.genMu.Lock()
	defer lb.genMu.Unlock()
	return bumpGen(lb.objs.HalbNexthopGen, halbVarHalbNexthopGen)
}

// bumpGen moves a generation the program's per-CPU caches are checked
// against (halb_nexthop_gen, halb_local_macs_gen), so that every CPU
// forgets what it cached. The caller serialises the bumps of v.
func bumpGen(v *ebpf.Variable, name string) error {
	var gen uint32
	if err := v.Get(&gen); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if err := v.Set(gen + 1); err != nil {
		return fmt.Errorf("bump %s: %w", name, err)
	}
	return nil
}

func (lb *kernelLB) backendRecord(id uint32, b Backend) (halbBackend, error) {
	if id == 0 || id >= lb.maxBackends() {
		return halbBackend{}, fmt.Errorf("backend %d: id out of range: the maps hold ids 1 to %d", id, lb.maxBackends()-1)
	}
	addr, family, err := addrOf(b.Addr)
	if err != nil {
		return halbBackend{}, fmt.Errorf("backend %d: %w", id, err)
	}
	if (b.MAC != nil && len(b.MAC) != 6) || len(b.SrcMAC) != 6 {
		return halbBackend{}, fmt.Errorf("backend %d: MAC %q and SrcMAC %q must be 6-byte Ethernet addresses (MAC may be missing)", id, b.MAC, b.SrcMAC)
	}
	if b.Ifindex <= 0 {
		return halbBackend{}, fmt.Errorf("backend %d: ifindex %d is not an interface", id, b.Ifindex)
	}
	v := halbBackend{
		Addr:    addr,
		Family:  family,
		Ifindex: uint32(b.Ifindex),
		Port:    b.Port,
		Service: b.Service,
		Weight:  b.Weight,
	}
	if b.Src.IsValid() {
		src, srcFamily, err := addrOf(b.Src)
		if err != nil || srcFamily != family {
			return halbBackend{}, fmt.Errorf("backend %d: tunnel source %s is not an address of %s's family", id, b.Src, b.Addr)
		}
		v.Src = src
		v.Flags = halbBackendFlagsBACKEND_F_ACTIVE
	}
	if b.MAC != nil {
		v.Flags = halbBackendFlagsBACKEND_F_ACTIVE
		copy(v.Mac[:], b.MAC)
	}
	copy(v.SrcMac[:], b.SrcMAC)
	return v, nil
}

// addTxPort lets the program redirect frames to interface ifindex. The
// kernel resolves ifindex in the network namespace of the calling thread.
func (lb *kernelLB) addTxPort(ifindex int) error {
	i := uint32(ifindex)
	if err := lb.objs.HalbTxPorts.Put(&i, &i); err != nil {
		return fmt.Errorf("add tx port ifindex %d: %w", ifindex, err)
	}
	return nil
}

// deleteTxPort stops redirects to interface ifindex.
func (lb *kernelLB) deleteTxPort(ifindex int) error {
	i := uint32(ifindex)
	if err := lb.objs.HalbTxPorts.Delete(&i); err != nil {
		return fmt.Errorf("delete tx port ifindex %d: %w", ifindex, err)
	}
	return nil
}

// newMaglevTable makes a new map holding table for service, not yet in
// halb_maglev. Safe for concurrent use.
func (lb *kernelLB) newMaglevTable(service uint32, table []uint32) (*ebpf.Map, error) {
	if len(table) != lb.maglevTableSize() {
		return nil, fmt.Errorf("maglev table of service %d: %d slots, want %d", service, len(table), lb.maglevTableSize())
	}
	m, err := lb.newMaglevMap(service)
	if err != nil {
		return nil, err
	}
	if err := writeSlots(m, table); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// newMaglevMap makes service's next table, all slots 0, and writes it
// once so: the first write to a page of a new map is where writing a
// table costs (the kernel hands out pages the hypervisor has to back:
// some 6-10 µs each on the shared virtual machines of BENCHMARKS.md, 0.4-
// 0.6 ms a table, against 30 µs for the write itself), so that a map
// made while its table is being built has paid it by the time the table
// is written. Every table has one name, halb_mgl, not its service's: a
// table swapped out is written again as the next table of any service
// (mapWriter.spares); halb_maglev says whose each is. Safe for concurrent
// use.
func (lb *kernelLB) newMaglevMap(service uint32) (*ebpf.Map, error) {
	spec := lb.maglev.Copy()
	spec.Name = "halb_mgl"
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create maglev table of service %d: %w", service, err)
	}
	if err := writeSlots(m, lb.zeroSlots()); err != nil {
		m.Close()
		return nil, fmt.Errorf("create maglev table of service %d: %w", service, err)
	}
	return m, nil
}

// zeroSlots is a table of M slots that name no backend, shared and never
// written.
func (lb *kernelLB) zeroSlots() []uint32 {
	lb.zeroOnce.Do(func() { lb.zeros = make([]uint32, lb.maglevTableSize()) })
	return lb.zeros
}

// writeSlots writes the slots of Maglev table m whole, with one update of
// its one element: the kernel copies them in.
func writeSlots(m *ebpf.Map, slots []uint32) error {
	if err := m.Put(uint32(0), unsafe.Pointer(&slots[0])); err != nil {
		return fmt.Errorf("write %s: %w", m, err)
	}
	return nil
}

// installMaglevTables swaps tables[i] in as the table of services[i], all
// in one batch update of halb_maglev (each swap on its own is atomic for
// the packets of its service). halb_maglev holds its own reference to
// each table once it is in; the caller closes its own.
func (lb *kernelLB) installMaglevTables(services []uint32, tables []*ebpf.Map) error {
	if len(services) == 0 {
		return nil
	}
	fds := make([]uint32, len(tables))
	for i, m := range tables {
		fds[i] = uint32(m.FD())
	}
	_, err := lb.objs.HalbMaglev.BatchUpdate(services, fds, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		// Batch updates need Linux 5.6: one swap at a time.
		for i, m := range tables {
			if err := lb.objs.HalbMaglev.Put(services[i], m); err != nil {
				return fmt.Errorf("install maglev table of service %d: %w", services[i], err)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("install %d maglev tables: %w", len(services), err)
	}
	return nil
}

// deleteMaglevTable removes the table of service id: its packets are
// dropped as DropNoBackend.
func (lb *kernelLB) deleteMaglevTable(service uint32) error {
	if err := lb.objs.HalbMaglev.Delete(service); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete maglev table of service %d: %w", service, err)
	}
	return nil
}

// openMaglevTable opens the table of service id, or returns nil when it
// has none.
func (lb *kernelLB) openMaglevTable(service uint32) (*ebpf.Map, error) {
	var id uint32
	err := lb.objs.HalbMaglev.Lookup(service, &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read maglev table of service %d: %w", service, err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return nil, fmt.Errorf("open maglev table of service %d: %w", service, err)
	}
	return m, nil
}

// fitsMaglev reports whether m is made as newMaglevMap makes a table
// now, so that it can be written as one.
func (lb *kernelLB) fitsMaglev(m *ebpf.Map) bool {
	t := lb.maglev
	return m.Type() == t.Type && m.KeySize() == t.KeySize && m.ValueSize() == t.ValueSize &&
		m.MaxEntries() == t.MaxEntries && m.Flags() == t.Flags
}

// maglevTable reads the table of service id back from the kernel, or nil
// when it has none.
func (lb *kernelLB) maglevTable(service uint32) ([]uint32, error) {
	m, err := lb.openMaglevTable(service)
	if m == nil || err != nil {
		return nil, err
	}
	defer m.Close()
	if m.ValueSize() != uint32(4*lb.maglevTableSize()) {
		return nil, fmt.Errorf("read maglev table of service %d: %d bytes, not %d slots", service, m.ValueSize(), lb.maglevTableSize())
	}
	table := make([]uint32, lb.maglevTableSize())
	if err := m.Lookup(uint32(0), unsafe.Pointer(&table[0])); err != nil {
		return nil, fmt.Errorf("read maglev table of service %d: %w", service, err)
	}
	return table, nil
}

// purgeConntrack deletes the flows halb_ct remembers for any of the
// backends in ids and returns how many it deleted. It reads the table in
// batches, so that a large one takes milliseconds rather than seconds.
func (lb *kernelLB) purgeConntrack(ids map[uint32]bool) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var stale []halbFlow
	keys := make([]halbFlow, 4096)
	vals := make([]halbCtEntry, len(keys))
	var cursor ebpf.MapBatchCursor
	for {
		n, err := lb.objs.HalbCt.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if ids[vals[i].BackendId] {
				stale = append(stale, keys[i])
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			// Batches need Linux 5.6 (and a bucket larger than a batch
			// fails one): one key at a time instead.
			stale = stale[:0]
			if err := lb.scanConntrack(ids, &stale); err != nil {
				return 0, err
			}
			break
		}
	}
	n := 0
	for i := range stale {
		err := lb.objs.HalbCt.Delete(&stale[i])
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete from %s: %w", halbMapHalbCt, err)
		}
		n++
	}
	return n, nil
}

// scanConntrack is purgeConntrack's walk of halb_ct one key at a time,
// where batches fail.
func (lb *kernelLB) scanConntrack(ids map[uint32]bool, stale *[]halbFlow) error {
	return each(lb.objs.HalbCt, halbMapHalbCt, func(k halbFlow, v halbCtEntry) {
		if ids[v.BackendId] {
			*stale = append(*stale, k)
		}
	})
}

// resetStats zeroes the counters of id in a per-CPU stats map, before the
// id names a new service or backend.
func resetStats(m *ebpf.Map, name string, id uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := m.Put(id, make([]halbStats, cpus)); err != nil {
		return fmt.Errorf("reset %d in %s: %w", id, name, err)
	}
	return nil
}

// Stats are a service's or a backend's counters, summed over CPUs. A
// service counts every packet addressed to it, a backend every packet sent
// to it; bytes are whole frames.
type Stats struct {
	Packets  uint64
	Bytes    uint64
	NewFlows uint64 // flows Maglev scheduled because conntrack did not know them
}

func (s Stats) plus(o Stats) Stats {
	return Stats{Packets: s.Packets + o.Packets, Bytes: s.Bytes + o.Bytes, NewFlows: s.NewFlows + o.NewFlows}
}

// unservedStats reads service id's own counters: the packets for it that
// went to no backend (dropped, passed, or answered in their place), and
// the counters of backends that left it (foldStats). The program counts a
// packet a backend took in the backend's counters alone, one per-CPU
// counter a packet where two cost a conntrack hit some 4 ns: a service's
// counters are these plus its backends' (Datapath.Status adds them).
func (lb *kernelLB) unservedStats(id uint32) (Stats, error) {
	return sumStats(lb.objs.HalbServiceStats, halbMapHalbServiceStats, id)
}

// foldStats adds backend id's counters to service svc's own, for a
// backend that left the service: the service's counters must not go back
// when its backends' no longer count. A packet for the service that the
// program counts while this runs (one no backend took) may be lost.
func (lb *kernelLB) foldStats(svc, id uint32) error {
	var from, into []halbStats
	if err := lb.objs.HalbBackendStats.Lookup(id, &from); err != nil {
		return fmt.Errorf("read %d from %s: %w", id, halbMapHalbBackendStats, err)
	}
	if err := lb.objs.HalbServiceStats.Lookup(svc, &into); err != nil {
		return fmt.Errorf("read %d from %s: %w", svc, halbMapHalbServiceStats, err)
	}
	for i := range min(len(from), len(into)) {
		into[i].Packets += from[i].Packets
		into[i].Bytes += from[i].Bytes
		into[i].NewFlows += from[i].NewFlows
	}
	if err := lb.objs.HalbServiceStats.Put(svc, into); err != nil {
		return fmt.Errorf("write %d to %s: %w", svc, halbMapHalbServiceStats, err)
	}
	return nil
}

// backendStats reads the counters of backend id.
func (lb *kernelLB) backendStats(id uint32) (Stats, error) {
	return sumStats(lb.objs.HalbBackendStats, halbMapHalbBackendStats, id)
}

func sumStats(m *ebpf.Map, name string, id uint32) (Stats, error) {
	var perCPU []halbStats
	if err := m.Lookup(id, &perCPU); err != nil {
		return Stats{}, fmt.Errorf("read %d from %s: %w", id, name, err)
	}
	var s Stats
	for _, c := range perCPU {
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.NewFlows += c.NewFlows
	}
	return s, nil
}

// DropReason is why halb_xdp_lb dropped a packet. The reasons about the
// packet itself (DropMalformed, and DropIPHeader to DropVIPSource) are
// counted only for packets to a VIP in frames addressed to this node: the
// program passes anyone else's to the kernel untouched.
type DropReason uint32

const (
	// DropMalformed: a TCP or UDP packet to a VIP whose header its IP
	// length says is there, but which the program could not read
	// (halb_tc_lb: the kernel could not pull it into the skb's head).
	DropMalformed = DropReason(halbDropReasonDROP_MALFORMED)
	// DropNoBackend: the service has no Maglev table, or the packet's slot
	// names no active backend (every backend drained or removed).
	DropNoBackend = DropReason(halbDropReasonDROP_NO_BACKEND)
	// DropNoTxPort: the backend's interface is not a tx port.
	DropNoTxPort = DropReason(halbDropReasonDROP_NO_TX_PORT)
	// DropUnsupported: the service's forward mode is not in this program.
	DropUnsupported = DropReason(halbDropReasonDROP_UNSUPPORTED)
	// DropNoRoute: forward: tun, and the kernel's FIB has no route from
	// the balancer's address to the backend, or forwarding is disabled on
	// the backend's interface (the FIB lookup needs it).
	DropNoRoute = DropReason(halbDropReasonDROP_NO_ROUTE)
	// DropNoNeigh: forward: tun in XDP, and the neighbour table lacks the
	// next hop's MAC. The Datapath asks the kernel to resolve the next
	// hops of its tunnel ends; halb_tc_lb hands such packets to the
	// kernel instead (EventNeighResolve).
	DropNoNeigh = DropReason(halbDropReasonDROP_NO_NEIGH)
	// DropTooBig: forward: tun, and the packet with its outer header
	// exceeds the egress interface's MTU, and the client was not told:
	// halb_tc_lb, IPv4 without DF, an ICMP error, IPv6 that fits in
	// 1280 bytes.
	DropTooBig = DropReason(halbDropReasonDROP_TOO_BIG)
	// DropTooBigAnswered: as DropTooBig, and halb_xdp_lb sent the client
	// an ICMP "fragmentation needed" or ICMPv6 "packet too big" with the
	// tunnel's MTU in its place, as IPVS does: the client's path MTU
	// discovery sends smaller packets next.
	DropTooBigAnswered = DropReason(halbDropReasonDROP_TOO_BIG_ANSWERED)
	// DropEncap: forward: tun, and the frame has no room for the outer
	// header, or (tc) carries a VLAN tag in its data.
	DropEncap = DropReason(halbDropReasonDROP_ENCAP)
	// DropIPHeader: to a VIP, IPv4 whose version is not 4 or whose header
	// length is below 5 words, or IPv6 whose version is not 6.
	DropIPHeader = DropReason(halbDropReasonDROP_IP_HEADER)
	// DropIPLength: to a VIP, an IPv4 total length or IPv6 payload length
	// that runs past the frame, or leaves no room for the IP header and 8
	// bytes. Ethernet padding after the packet is fine.
	DropIPLength = DropReason(halbDropReasonDROP_IP_LENGTH)
	// DropTCPHeader: to a VIP, TCP whose data offset is below 5 words or
	// past the segment, or a segment too short for the header.
	DropTCPHeader = DropReason(halbDropReasonDROP_TCP_HEADER)
	// DropUDPHeader: to a VIP, UDP whose length is below 8 or past the
	// IP payload.
	DropUDPHeader = DropReason(halbDropReasonDROP_UDP_HEADER)
	// DropBadSource: to a VIP, from an address no client can have:
	// 0.0.0.0/8, loopback, multicast, 255.255.255.255, and in IPv6 ::/96
	// (unspecified, loopback) and IPv4-mapped addresses (bpf/halb_checks.h
	// gives the reasons).
	DropBadSource = DropReason(halbDropReasonDROP_BAD_SOURCE)
	// DropVIPSource: for a service, from one of the VIPs: forged, or a
	// backend's answer to a forged packet, which would loop through the
	// balancer.
	DropVIPSource = DropReason(halbDropReasonDROP_VIP_SOURCE)
	// DropReplyNoRoute: forward: nat, a backend's reply the kernel's FIB
	// has no route for toward its client, or that arrived on an
	// interface that does not forward.
	DropReplyNoRoute = DropReason(halbDropReasonDROP_REPLY_NO_ROUTE)
	// DropReplyNoNeigh: forward: nat in XDP, a backend's reply whose
	// next hop toward the client has no MAC in the neighbour table yet
	// (halb_tc_lb hands such replies to the kernel, EventNeighResolve).
	DropReplyNoNeigh = DropReason(halbDropReasonDROP_REPLY_NO_NEIGH)
	// DropReplyTooBig: forward: nat, a backend's reply longer than the
	// MTU of the route toward its client.
	DropReplyTooBig = DropReason(halbDropReasonDROP_REPLY_TOO_BIG)
	// DropNoSport: forward: fullnat, a new flow for which every source
	// port its hash may take toward its backend is held by a live flow.
	DropNoSport = DropReason(halbDropReasonDROP_NO_SPORT)
	// DropNATReplyWrongIf: forward: nat or fullnat, a frame from a
	// backend's address and port that came in on an interface other
	// than the one that reaches the backend: a forged reply, which
	// translated would leave from the VIP toward any address. It is
	// not translated but handed to the kernel as it came (which deals
	// with it as without halb); counted here all the same.
	DropNATReplyWrongIf = DropReason(halbDropReasonDROP_NAT_REPLY_WRONG_IF)
)

func (r DropReason) String() string {
	switch r {
	case DropMalformed:
		return "malformed"
	case DropNoBackend:
		return "no-backend"
	case DropNoTxPort:
		return "no-tx-port"
	case DropUnsupported:
		return "unsupported"
	case DropNoRoute:
		return "no-route"
	case DropNoNeigh:
		return "no-neigh"
	case DropTooBig:
		return "too-big"
	case DropTooBigAnswered:
		return "too-big-answered"
	case DropEncap:
		return "encap"
	case DropIPHeader:
		return "ip-header"
	case DropIPLength:
		return "ip-length"
	case DropTCPHeader:
		return "tcp-header"
	case DropUDPHeader:
		return "udp-header"
	case DropBadSource:
		return "bad-source"
	case DropVIPSource:
		return "vip-source"
	case DropReplyNoRoute:
		return "reply-no-route"
	case DropReplyNoNeigh:
		return "reply-no-neigh"
	case DropReplyTooBig:
		return "reply-too-big"
	case DropNoSport:
		return "no-sport"
	case DropNATReplyWrongIf:
		return "nat-reply-wrong-if"
	}
	return fmt.Sprintf("drop(%d)", uint32(r))
}

// drops reads how many packets were dropped for each reason, summed over
// CPUs.
func (lb *kernelLB) drops() (map[DropReason]uint64, error) {
	return sumCounters(lb.objs.HalbDrops, halbMapHalbDrops, DropReason(halbDropReasonDROP_REASONS))
}

// sumCounters reads the per-CPU counters 0 to n-1 of m (halb_drops,
// halb_events), each summed over CPUs.
func sumCounters[K interface {
	~uint32
	fmt.Stringer
}](m *ebpf.Map, name string, n K) (map[K]uint64, error) {
	sums := make(map[K]uint64, n)
	for k := range n {
		var perCPU []uint64
		if err := m.Lookup(uint32(k), &perCPU); err != nil {
			return nil, fmt.Errorf("read %s from %s: %w", k, name, err)
		}
		for _, c := range perCPU {
			sums[k] += c
		}
	}
	return sums, nil
}

// Event is something halb_xdp_lb or halb_tc_lb counts besides forwarding
// and dropping.
type Event uint32

const (
	// EventNeighResolve: halb_tc_lb had a forward: tun packet for a next
	// hop the neighbour table lacks, and handed it to the kernel
	// (bpf_redirect_neigh), which resolves the next hop and sends it.
	EventNeighResolve = Event(halbEventEVENT_NEIGH_RESOLVE)
	// EventICMPTooBig: an ICMP "fragmentation needed" or ICMPv6 "packet
	// too big" about a flow of a service went to the flow's backend, so
	// that its path MTU discovery works.
	EventICMPTooBig = Event(halbEventEVENT_ICMP_TOO_BIG)
	// EventOtherHost: a frame that would have been balanced or dropped
	// was addressed to a MAC that is not this node's (a broadcast, a
	// multicast, or another host's unicast frame that a switch flooded),
	// and went to the kernel untouched: the node it is for balances it.
	EventOtherHost = Event(halbEventEVENT_OTHER_HOST)
	// EventNATHairpin: a new flow to a forward: nat service came from a
	// NAT backend's address, and went to the kernel untouched: the
	// backend it met would answer it directly, from its own address.
	EventNATHairpin = Event(halbEventEVENT_NAT_HAIRPIN)
	// EventNATICMP: an ICMP error (fragmentation needed, packet too big,
	// port unreachable) about a NAT flow was translated with the packet
	// it quotes and sent on, to the backend or back to the client.
	EventNATICMP = Event(halbEventEVENT_NAT_ICMP)
)

func (e Event) String() string {
	switch e {
	case EventNeighResolve:
		return "neigh-resolve"
	case EventICMPTooBig:
		return "icmp-too-big"
	case EventOtherHost:
		return "other-host"
	case EventNATHairpin:
		return "nat-hairpin"
	case EventNATICMP:
		return "nat-icmp"
	}
	return fmt.Sprintf("event(%d)", uint32(e))
}

// serviceKey and keyOfService are where a service's key changes form,
// both ways: service.Key in Go, halbServiceKey in the maps (an address
// in 16 bytes with its family beside it, the protocol's number).
func serviceKey(key service.Key) (halbServiceKey, error) {
	addr, family, err := addrOf(key.VIP)
	if err != nil {
		return halbServiceKey{}, fmt.Errorf("service %s: %w", key, err)
	}
	if key.Port == 0 {
		return halbServiceKey{}, fmt.Errorf("service %s: port 0 cannot be served", key)
	}
	if key.Proto != service.TCP && key.Proto != service.UDP {
		return halbServiceKey{}, fmt.Errorf("service %s: only tcp and udp can be served", key)
	}
	return halbServiceKey{Vip: addr, Port: key.Port, Proto: uint8(key.Proto), Family: family}, nil
}

func keyOfService(k halbServiceKey) service.Key {
	return service.Key{VIP: addrFrom(k.Vip, k.Family), Port: k.Port, Proto: service.Protocol(k.Proto)}
}

// addrOf gives an address in the maps' form: 16 bytes, IPv4 mapped into
// IPv6 (an IPv4-mapped IPv6 address counts as the IPv4 address it maps).
func addrOf(a netip.Addr) (halbAddr, halbFamily, error) {
	if !a.IsValid() {
		return halbAddr{}, 0, errors.New("no address")
	}
	a = a.Unmap()
	family := halbFamilyFAMILY_IPV6
	if a.Is4() {
		family = halbFamilyFAMILY_IPV4
	}
	return halbAddr{Bytes: a.As16()}, family, nil
}
