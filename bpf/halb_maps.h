/* halb_maps.h: every map and global variable of halb_lb.c, the ones the
 * loader writes and the ones it reads back, and the counters the program
 * keeps in them.
 *
 * The types of their keys and values are in halb.h, which bpf2go turns into
 * Go; the names here are what `bpftool map show` prints and what the loader
 * looks up. A cache among them (halb_nexthops, halb_mac_cache, halb_clock)
 * is never pinned, so a restart starts it empty.
 */
#ifndef HALB_MAPS_H
#define HALB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "halb.h"

/* The Maglev table size M, the same for every service. The loader sets it
 * together with the size of the inner maps of halb_maglev. */
volatile const __u32 halb_maglev_size = HALB_MAGLEV_SIZE;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service);
} halb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct service_slot);
} halb_service_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, struct vip_key);
	__type(value, struct vip);
} halb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HALB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} halb_backends SEC(".maps");

/* One service's Maglev table: slot -> backend id, all M slots in the one
 * value of a one-element array, so that a table takes 4 bytes a slot and
 * the array's header (some 300 bytes) beside them: an array of M elements
 * rounds each up to 8 bytes, and a mapped (BPF_F_MMAPABLE) one rounds its
 * header and its elements up to pages. The loader sizes the value to M
 * (datapath.maglev_table_size; the array below is the default's),
 * builds each new table aside, writes it whole with one update and swaps
 * it into halb_maglev with the other tables of its Apply in one batch
 * update, so a packet sees either the old table or the new one, never
 * half of each. All tables have one size and no BPF_F_INNER_MAP, so the
 * verifier still inlines their lookups. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32[HALB_MAGLEV_SIZE]); /* slot -> backend id */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct maglev_table);
} halb_maglev SEC(".maps");

/* One LRU shared by all CPUs: a flow's packets arrive on one CPU anyway
 * (RSS), and a shared list lets a busy CPU use the whole table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HALB_CT_ENTRIES);
	__type(key, struct flow);
	__type(value, struct ct_entry);
} halb_ct SEC(".maps");

/* forward: nat: where a backend's replies are translated back to, by
 * its address, port and protocol (struct nat_reply), and the addresses
 * of NAT backends (port and protocol 0), which a new flow to a NAT
 * service does not come from. Written by the loader from the services
 * alone: no entry depends on a flow, so a node that takes the VIPs over
 * translates replies as the old Master did. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HALB_MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct nat_reply);
} halb_nat_replies SEC(".maps");

/* forward: fullnat: each flow as its backend sees it (struct fnat_key:
 * the backend's address and port, the balancer's address and the port it
 * gave the flow), and the client it goes back to (struct fnat_flow).
 * Unlike halb_nat_replies this is state per flow, and must be: the
 * backend sees the balancer's address, not the client's, so nothing in a
 * reply names its client but the source port the balancer picked. The
 * port is derived from the flow's hash (halb_nat.h, snat_port), so that
 * a node that takes the VIPs over, with the same snat_address, picks the
 * same port for a flow it never saw, and writes the same entry from the
 * client's next packet. An LRU as large as halb_ct, shared by all CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HALB_CT_ENTRIES);
	__type(key, struct fnat_key);
	__type(value, struct fnat_flow);
} halb_fnat SEC(".maps");

/* The source ports full NAT gives flows, per backend: from
 * halb_snat_port_first, halb_snat_port_count of them (none: every new
 * full NAT flow is dropped, DROP_NO_SPORT). The loader keeps them out of
 * the kernel's ip_local_port_range, where the node's own connections to
 * a backend (health checks) take their ports. */
volatile __u32 halb_snat_port_first;
volatile __u32 halb_snat_port_count;

/* halb_nat_last[b] is non-zero when a NAT backend's address ends in the
 * byte b: a packet's source is looked up in halb_nat_replies only then,
 * so that the host's other traffic, and every DR and TUN packet, skips
 * the lookup (all zeros while no service does NAT). The loader sets a
 * byte before it writes an entry that needs it and clears it after. */
volatile __u8 halb_nat_last[256];

/* halb_fnat_last[b] is non-zero when a full NAT backend's address ends
 * in the byte b (and halb_nat_last[b] is then too): its replies are
 * looked up in halb_fnat alone, which holds all a reply needs. */
volatile __u8 halb_fnat_last[256];

/* Interfaces that backends are reached through, keyed by ifindex (value:
 * the same ifindex). A DEVMAP_HASH rather than a plain DEVMAP, so that the
 * key is the ifindex itself and nobody has to hand out slots. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, HALB_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} halb_tx_ports SEC(".maps");

/* Every packet matched to a service that no backend took (dropped,
 * passed, or answered in its place), and the counts of backends that
 * left it (the loader folds them in): a packet a backend took is counted
 * in halb_backend_stats alone, one per-CPU counter a packet on the hot
 * path. A service's counters are this entry and its backends' added up,
 * as the loader reads them (Datapath.Status). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct stats);
} halb_service_stats SEC(".maps");

/* Every packet sent to a backend. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HALB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct stats);
} halb_backend_stats SEC(".maps");

/* Where the FIB last said a NAT reply to a client goes (struct nexthop),
 * valid as a TUN backend's entry in halb_nexthops is: for the generation
 * of halb_nexthop_gen it was filled in, and a second. A reply's next hop
 * depends on its client, which no per-backend entry holds; the FIB
 * lookup for each reply would cost more than the rest of its path
 * several times over (BenchmarkXDP nat-reply). One LRU for all CPUs, so
 * that a busy CPU may use it whole. A cache: never pinned. */
#define HALB_REPLY_HOPS 16384
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HALB_REPLY_HOPS);
	__type(key, struct reply_hop_key);
	__type(value, struct nexthop);
} halb_reply_hops SEC(".maps");

/* What the replies of each NAT flow go back as, and through (struct
 * reply_flow), so that a reply takes one lookup in place of two: the
 * translation (halb_nat_replies, or halb_fnat for full NAT) and the next
 * hop toward its client (halb_reply_hops), each a hash lookup. With the
 * two, a reply cost 23 ns more than the DR hit with its one, a full NAT
 * reply 27; with this one, 2 and 3 (BenchmarkXDP nat-reply and
 * fullnat-reply, medians of alternating runs; BENCHMARKS.md). It holds
 * nothing that those two and the FIB do not say, and keeps it no longer
 * than its next hop (a second, or until halb_nexthop_gen moves, as the
 * loader moves it when a NAT reply entry changes): a node that takes
 * over starts it empty and translates as the old one did. The first
 * reply of a flow pays for the insert. ICMP errors do not use it. The
 * loader sizes it as halb_ct. A cache: never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HALB_CT_ENTRIES);
	__type(key, struct flow);
	__type(value, struct reply_flow);
} halb_reply_flows SEC(".maps");

/* Where a NAT reply that missed halb_reply_flows builds its entry and
 * its next hop (struct reply_scratch): the program's 512 bytes of stack
 * are nearly all taken on the tc path, and these are 136. Per CPU, as
 * the other caches: a program runs to its end on the CPU it started on,
 * and XDP and tc ingress run with bottom halves off, so no other run of
 * the program on that CPU comes between. Never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reply_scratch);
} halb_reply_scratch SEC(".maps");

/* Next hops toward NAT clients that the neighbour table lacked when a
 * reply went there (struct reply_hop_key, the address the next hop's;
 * the value is when, bpf_ktime_get_coarse_ns). XDP cannot resolve a MAC
 * and must not hand a reply to the kernel (halb_lb.c, xdp_nat_reply), so
 * it drops the reply and leaves the next hop here; the loader reads the
 * map a few times a second, asks the kernel to resolve each entry and
 * deletes it. A node that becomes Master has often never spoken to the
 * clients whose replies it now carries. Never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 256);
	__type(key, struct reply_hop_key);
	__type(value, __u64);
} halb_neigh_wanted SEC(".maps");

/* Every NAT reply translated back, by the backend that sent it (struct
 * stats; new_flows stays 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HALB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct stats);
} halb_reply_stats SEC(".maps");

/* A TUN or NAT backend's next hop as this CPU last had it from the FIB (struct
 * nexthop). A cache: never pinned, so a restart starts it empty. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HALB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct nexthop);
} halb_nexthops SEC(".maps");

/* The loader bumps halb_nexthop_gen whenever a route, a neighbour or a
 * backend changes: every cached next hop filled before is then asked of
 * the FIB again. */
volatile __u32 halb_nexthop_gen;

/* halb_vip_last[b] is non-zero when a VIP in halb_vips ends in the byte b.
 * A new flow's source is looked up in halb_vips only when its last byte
 * says it may be there: most clients' are not, and they skip a hash
 * lookup. The loader sets a VIP's byte before it writes the VIP, and
 * clears bytes after VIPs leave. */
volatile __u8 halb_vip_last[256];

/* The destination MACs that make a frame this node's, by the interface it
 * arrives on (struct local_mac): frames to any other MAC are another
 * host's, and go to the kernel untouched. The loader writes the entries of
 * an interface before the program runs there, and keeps them as its MAC
 * and its VMAC children change. Never pinned: a loader fills it anew at
 * every start, from the interfaces as they are then. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HALB_MAX_LOCAL_MACS);
	__type(key, struct local_mac);
	__type(value, struct local_mac_via);
} halb_local_macs SEC(".maps");

/* The loader bumps halb_local_macs_gen after every change to
 * halb_local_macs: each CPU's halb_mac_cache filled before is then
 * asked of the map again. */
volatile __u32 halb_local_macs_gen;

/* What this CPU last found in halb_local_macs. The hash lookup added
 * about 10 ns to a conntrack hit, half as much again as the rest of halb's
 * own work there, and a CPU sees frames to one MAC on one interface
 * nearly always: an array lookup the verifier inlines and a few compares
 * cost a fraction of it. A cache: never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct local_mac_cache);
} halb_mac_cache SEC(".maps");

/* This CPU's copy of the coarse clock (struct clock), for coarse_ns. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock);
} halb_clock SEC(".maps");

/* Packets dropped, by enum drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32); /* enum drop_reason: array keys must be plain integers */
	__type(value, __u64);
} halb_drops SEC(".maps");

/* Other things worth counting, by enum event. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EVENTS);
	__type(key, __u32); /* enum event */
	__type(value, __u64);
} halb_events SEC(".maps");

/* count_drop counts a dropped packet. Drops are the cold path, so it is a
 * call of its own rather than inlined; that also puts enum drop_reason into
 * the object's BTF, where bpf2go finds it. */
static __noinline void count_drop(enum drop_reason reason)
{
	__u32 key = reason;
	__u64 *count = bpf_map_lookup_elem(&halb_drops, &key);

	if (count)
		*count += 1;
}

/* count_event is count_drop for halb_events. */
static __noinline void count_event(enum event event)
{
	__u32 key = event;
	__u64 *count = bpf_map_lookup_elem(&halb_events, &key);

	if (count)
		*count += 1;
}

/* coarse_ns is bpf_ktime_get_coarse_ns(), the clock of every time stamp
 * the program keeps (the next hops' age, a full NAT flow's last reply),
 * without a helper call for most packets: the coarse clock moves only
 * with the tick, when jiffies does, so this CPU's copy from the last
 * jiffy (halb_clock) is the same time to within a tick, and the verifier
 * inlines both the jiffies read and the per-CPU lookup, where the
 * helper is a call (whose return a kernel that mitigates SRSO pays for)
 * for every NAT and TUN packet, twice for a full NAT reply. */
static __always_inline __u64 coarse_ns(void)
{
	__u64 jiffies = bpf_jiffies64();
	struct clock *c;
	__u32 zero = 0;

	c = bpf_map_lookup_elem(&halb_clock, &zero);
	if (!c)
		return bpf_ktime_get_coarse_ns();
	if (c->jiffies != jiffies || !c->ns) {
		c->ns = bpf_ktime_get_coarse_ns();
		c->jiffies = jiffies;
	}
	return c->ns;
}

/* count adds one packet to a per-CPU stats record and returns it. */
static __always_inline struct stats *count(void *stats_map, __u32 id, __u32 len)
{
	struct stats *s = bpf_map_lookup_elem(stats_map, &id);

	if (s) {
		s->packets++;
		s->bytes += len;
	}
	return s;
}

#endif /* HALB_MAPS_H */
