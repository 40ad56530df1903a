/* halb_lb.c: halb's layer-4 load balancer, as an XDP program (halb_xdp_lb)
 * and the same logic as a tc program (halb_tc_lb) for where XDP cannot
 * attach. Both share every map; the loader attaches one of them to an
 * interface, never both.
 *
 * halb_xdp_lb looks at every frame that arrives on the interfaces where VIP
 * traffic lands. A TCP or UDP packet to a service in halb_services goes to
 * one of the service's backends; everything else goes on to the kernel
 * untouched, so the program can sit on a host's main interface without
 * disturbing its other traffic.
 *
 * The backend of a flow is the one halb_ct remembers; a flow halb_ct does
 * not know is scheduled by the service's Maglev table (halb_maglev) and then
 * remembered. A TCP packet that is not a SYN is scheduled like any other: it
 * belongs to a flow that another halb node was carrying before a VRRP
 * failover, and the same hash over the same table finds the same backend.
 *
 * Forwarding (forward: dr) rewrites the Ethernet addresses and sends the
 * frame back out (XDP_TX) or to the backend's interface (XDP_REDIRECT; tc:
 * bpf_redirect to either); the IP packet is not changed, and the backend
 * answers the client directly.
 *
 * What the program does with packets it cannot fully read:
 *  - not IPv4 or IPv6 (ARP, LLDP, two stacked VLAN tags, ...): pass (tc:
 *    TC_ACT_UNSPEC, which tcx takes as "next").
 *  - too short to hold the Ethernet or VLAN header, or the fixed IPv4/IPv6
 *    header: pass. The destination is unknown, so the packet is not known to
 *    be ours; the kernel drops it and counts it where it counts such things.
 *  - IPv4 with a bad version or header length, or a TCP/UDP header cut
 *    short, to a VIP in halb_vips: drop, counted as DROP_MALFORMED. To any
 *    other address: pass.
 *  - IPv4 fragments other than the first carry no ports: pass. The first
 *    fragment is balanced like any packet. The program does not reassemble,
 *    so a fragmented datagram to a service ends up split between a backend
 *    (its first fragment) and the local stack (the rest): fragmented
 *    traffic is not served.
 *  - IPv6 with extension headers (the fragment header among them) is not
 *    parsed: pass.
 *  - ICMP and other protocols, even to a VIP: pass (the VIP answers pings).
 *
 * The program uses uapi and libbpf headers only, and no CO-RE: it must load
 * on kernels without BTF.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "jhash.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The Maglev table size M, the same for every service. The loader sets it
 * together with the size of the inner maps of halb_maglev. */
volatile const __u32 halb_maglev_size = HALB_MAGLEV_SIZE;

/* A constant seed, so that every halb node hashes a flow alike. */
#define HALB_HASH_SEED 0x68616c62 /* "halb" */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HALB_MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service);
} halb_services SEC(".maps");

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

/* One service's Maglev table: slot -> backend id. The loader builds a new
 * table aside and swaps it into halb_maglev in one update, so a packet sees
 * either the old table or the new one, never half of each. */
struct maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HALB_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
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

/* Interfaces that backends are reached through, keyed by ifindex (value:
 * the same ifindex). A DEVMAP_HASH rather than a plain DEVMAP, so that the
 * key is the ifindex itself and nobody has to hand out slots. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, HALB_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} halb_tx_ports SEC(".maps");

/* Every packet matched to a service, whatever became of it. */
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

/* Packets dropped, by enum drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32); /* enum drop_reason: array keys must be plain integers */
	__type(value, __u64);
} halb_drops SEC(".maps");

/* No uapi header defines the 802.1Q tag. */
struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

#define IPV4_FRAG_OFFSET 0x1fff /* the fragment offset bits of frag_off */
#define TCP_FLAGS_BYTE 13       /* CWR ECE URG ACK PSH RST SYN FIN */
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_SYN 0x02

/* What the parser made of a frame. */
enum parse_result {
	PARSE_OK,        /* a TCP/UDP packet: pkt->flow is complete */
	PARSE_PASS,      /* not ours, or not known to be ours */
	PARSE_MALFORMED, /* broken after the destination address: pkt->flow
			  * holds family and addresses only */
};

struct packet {
	struct flow flow; /* also the halb_ct key: keep it zeroed before use */
	__u32 len;        /* frame length, for the byte counters */
	__u8 syn;         /* a TCP SYN without ACK: a connection starts */
};

static __always_inline void addr_from_ipv4(union addr *a, __be32 ip)
{
	a->words[0] = 0;
	a->words[1] = 0;
	a->words[2] = bpf_htonl(0x0000ffff);
	a->words[3] = ip;
}

static __always_inline void addr_from_ipv6(union addr *a, const struct in6_addr *ip)
{
	a->words[0] = ip->in6_u.u6_addr32[0];
	a->words[1] = ip->in6_u.u6_addr32[1];
	a->words[2] = ip->in6_u.u6_addr32[2];
	a->words[3] = ip->in6_u.u6_addr32[3];
}

/* parse fills pkt from the frame that starts with eth. The caller has
 * checked that the Ethernet header is there. */
static __always_inline enum parse_result parse(struct ethhdr *eth, void *data_end,
					       struct packet *pkt)
{
	void *l3 = eth + 1;
	void *l4;
	__be16 proto = eth->h_proto;
	__u8 l4proto;

	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return PARSE_PASS;
		proto = vlan->proto;
		l3 = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = l3;
		__u8 version_ihl, ihl;

		if ((void *)(iph + 1) > data_end)
			return PARSE_PASS;
		pkt->flow.family = FAMILY_IPV4;
		addr_from_ipv4(&pkt->flow.saddr, iph->saddr);
		addr_from_ipv4(&pkt->flow.daddr, iph->daddr);
		/* Read as a byte: the bitfields in struct iphdr follow the
		 * byte order of the headers, not of the target. */
		version_ihl = *(__u8 *)iph;
		ihl = version_ihl & 0x0f;
		if (version_ihl >> 4 != 4 || ihl < 5)
			return PARSE_MALFORMED;
		if (iph->frag_off & bpf_htons(IPV4_FRAG_OFFSET))
			return PARSE_PASS;
		l4proto = iph->protocol;
		l4 = l3 + ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) > data_end)
			return PARSE_PASS;
		pkt->flow.family = FAMILY_IPV6;
		addr_from_ipv6(&pkt->flow.saddr, &ip6h->saddr);
		addr_from_ipv6(&pkt->flow.daddr, &ip6h->daddr);
		if (*(__u8 *)ip6h >> 4 != 6)
			return PARSE_MALFORMED;
		l4proto = ip6h->nexthdr;
		l4 = ip6h + 1;
	} else {
		return PARSE_PASS;
	}

	if (l4proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u8 flags;

		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		pkt->flow.sport = bpf_ntohs(th->source);
		pkt->flow.dport = bpf_ntohs(th->dest);
		flags = ((__u8 *)th)[TCP_FLAGS_BYTE];
		pkt->syn = (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		pkt->flow.sport = bpf_ntohs(uh->source);
		pkt->flow.dport = bpf_ntohs(uh->dest);
	} else {
		return PARSE_PASS;
	}
	pkt->flow.proto = l4proto;
	return PARSE_OK;
}

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

static __always_inline int is_vip(const struct flow *flow)
{
	struct vip_key key = {
		.addr = flow->daddr,
		.family = flow->family,
	};

	return bpf_map_lookup_elem(&halb_vips, &key) != NULL;
}

/* flow_hash hashes the addresses as big-endian numbers, so that a little-
 * and a big-endian node agree. With persistence it hashes the client's
 * address alone. */
static __always_inline __u32 flow_hash(const struct flow *flow, int source_only)
{
	__u32 w[10];

	w[0] = bpf_ntohl(flow->saddr.words[0]);
	w[1] = bpf_ntohl(flow->saddr.words[1]);
	w[2] = bpf_ntohl(flow->saddr.words[2]);
	w[3] = bpf_ntohl(flow->saddr.words[3]);
	if (source_only)
		return jhash_words(w, 4, HALB_HASH_SEED);
	w[4] = bpf_ntohl(flow->daddr.words[0]);
	w[5] = bpf_ntohl(flow->daddr.words[1]);
	w[6] = bpf_ntohl(flow->daddr.words[2]);
	w[7] = bpf_ntohl(flow->daddr.words[3]);
	w[8] = (__u32)flow->sport << 16 | flow->dport;
	w[9] = flow->proto;
	return jhash_words(w, 10, HALB_HASH_SEED);
}

/* active_backend returns the record of backend id when it is in use. */
static __always_inline struct backend *active_backend(__u32 id)
{
	struct backend *b;

	if (id == 0)
		return NULL;
	b = bpf_map_lookup_elem(&halb_backends, &id);
	if (!b || !(b->flags & BACKEND_F_ACTIVE))
		return NULL;
	return b;
}

static __always_inline __u32 maglev_pick(const struct service *svc, __u32 hash)
{
	__u32 slot = hash % halb_maglev_size;
	__u32 *id;
	void *table;

	table = bpf_map_lookup_elem(&halb_maglev, &svc->id);
	if (!table)
		return 0;
	id = bpf_map_lookup_elem(table, &slot);
	return id ? *id : 0;
}

/* schedule finds the backend for pkt: the one halb_ct remembers, or else the
 * Maglev choice, which it then remembers. A SYN always takes the Maglev
 * choice: it starts a new connection, perhaps on a reused 5-tuple whose old
 * backend has since been drained. A remembered backend that no longer
 * serves this service (its id was freed and handed to another service's
 * backend) does not count: a flow only ever goes to its own service's
 * backends. */
static __always_inline struct backend *schedule(const struct service *svc,
						const struct packet *pkt,
						__u32 *id, int *new_flow)
{
	struct ct_entry entry;
	struct ct_entry *ct;
	struct backend *b;

	if (!pkt->syn) {
		ct = bpf_map_lookup_elem(&halb_ct, &pkt->flow);
		if (ct) {
			b = active_backend(ct->backend_id);
			if (b && b->service == svc->id) {
				*id = ct->backend_id;
				*new_flow = 0;
				return b;
			}
		}
	}

	*id = maglev_pick(svc, flow_hash(&pkt->flow, svc->flags & SERVICE_F_SOURCE_HASH));
	b = active_backend(*id);
	if (!b)
		return NULL;
	entry.backend_id = *id;
	/* If the table is full the LRU evicts its oldest flow; if the update
	 * fails anyway the next packet is scheduled again, to the same place
	 * while the table holds still. */
	bpf_map_update_elem(&halb_ct, &pkt->flow, &entry, BPF_ANY);
	*new_flow = 1;
	return b;
}

/* What balance made of a frame. */
enum verdict {
	VERDICT_PASS,    /* not for a service: on to the kernel */
	VERDICT_DROP,    /* for a service, dropped and counted */
	VERDICT_FORWARD, /* for backend d->b; the MACs are rewritten */
};

/* A forwarding decision, for the hook to carry out and then count. */
struct decision {
	struct backend *b;
	struct stats *svc_stats;
	__u32 backend_id;
	__u32 len;    /* frame length, for the byte counters */
	int new_flow; /* scheduled by Maglev, not found in halb_ct */
};

/* balance is the whole load balancer but the last step, which differs
 * between XDP and tc: it finds the frame's service and backend and rewrites
 * the Ethernet addresses for DR (the IP packet is not changed, and the
 * backend answers the client directly). len is the frame's whole length. */
static __always_inline enum verdict balance(void *data, void *data_end, __u32 len,
					    struct decision *d)
{
	struct ethhdr *eth = data;
	struct packet pkt = {};
	struct service_key skey = {};
	struct service *svc;

	if ((void *)(eth + 1) > data_end)
		return VERDICT_PASS;

	switch (parse(eth, data_end, &pkt)) {
	case PARSE_OK:
		break;
	case PARSE_MALFORMED:
		if (!is_vip(&pkt.flow))
			return VERDICT_PASS;
		count_drop(DROP_MALFORMED);
		return VERDICT_DROP;
	default:
		return VERDICT_PASS;
	}

	skey.vip = pkt.flow.daddr;
	skey.port = pkt.flow.dport;
	skey.proto = pkt.flow.proto;
	skey.family = pkt.flow.family;
	svc = bpf_map_lookup_elem(&halb_services, &skey);
	if (!svc)
		return VERDICT_PASS;

	d->len = len;
	d->svc_stats = count(&halb_service_stats, svc->id, len);

	if (svc->forward != FORWARD_DR) {
		count_drop(DROP_UNSUPPORTED);
		return VERDICT_DROP;
	}

	d->b = schedule(svc, &pkt, &d->backend_id, &d->new_flow);
	if (!d->b) {
		count_drop(DROP_NO_BACKEND);
		return VERDICT_DROP;
	}
	__builtin_memcpy(eth->h_dest, d->b->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, d->b->src_mac, ETH_ALEN);
	return VERDICT_FORWARD;
}

/* forwarded counts a frame that went to its backend. */
static __always_inline void forwarded(const struct decision *d)
{
	struct stats *be_stats = count(&halb_backend_stats, d->backend_id, d->len);

	if (d->new_flow) {
		if (d->svc_stats)
			d->svc_stats->new_flows++;
		if (be_stats)
			be_stats->new_flows++;
	}
}

/* halb_xdp_lb sends a frame back out of the interface it came in on
 * (XDP_TX) or to the backend's interface (XDP_REDIRECT). */
SEC("xdp")
int halb_xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct decision d = {};
	int action;

	switch (balance(data, data_end, data_end - data, &d)) {
	case VERDICT_PASS:
		return XDP_PASS;
	case VERDICT_DROP:
		return XDP_DROP;
	default:
		break;
	}

	if (d.b->ifindex == ctx->ingress_ifindex) {
		action = XDP_TX;
	} else {
		/* On a missing port this returns the low bits of the flags:
		 * 0, which is XDP_ABORTED. */
		action = bpf_redirect_map(&halb_tx_ports, d.b->ifindex, 0);
		if (action != XDP_REDIRECT) {
			count_drop(DROP_NO_TX_PORT);
			return XDP_DROP;
		}
	}
	forwarded(&d);
	return action;
}

/* The most of a frame the parser reads: Ethernet, a VLAN tag, IPv4 with
 * the longest options and a TCP header. */
#define HALB_PARSE_LEN (ETH_HLEN + 4 + 60 + 20)

/* halb_tc_lb is halb_xdp_lb for the tc ingress hook (tcx), where XDP cannot
 * attach: the same maps, the same decisions, and the frame goes out of the
 * backend's interface (bpf_redirect to its egress; the same interface as
 * the ingress is allowed and is how DR hairpins). On the skb path the
 * kernel has usually moved a VLAN tag into the skb's metadata before tc
 * runs, and puts it back on the way out. */
SEC("tc")
int halb_tc_lb(struct __sk_buff *skb)
{
	struct decision d = {};
	void *data, *data_end;
	__u32 linear = skb->data_end - skb->data;

	/* Direct packet access reaches the linear part of the skb only: pull
	 * the headers into it. Failure leaves the frame short, and the parser
	 * passes what it cannot read. */
	if (linear < HALB_PARSE_LEN && linear < skb->len)
		bpf_skb_pull_data(skb, skb->len < HALB_PARSE_LEN ? skb->len : HALB_PARSE_LEN);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	switch (balance(data, data_end, skb->len, &d)) {
	case VERDICT_PASS:
		return TC_ACT_UNSPEC; /* tcx: TCX_NEXT, on to the next program or the stack */
	case VERDICT_DROP:
		return TC_ACT_SHOT;
	default:
		break;
	}

	if (d.b->ifindex != skb->ingress_ifindex &&
	    !bpf_map_lookup_elem(&halb_tx_ports, &d.b->ifindex)) {
		count_drop(DROP_NO_TX_PORT);
		return TC_ACT_SHOT;
	}
	forwarded(&d);
	return bpf_redirect(d.b->ifindex, 0);
}
