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
 * Only a frame addressed to this node is balanced or dropped: to the
 * interface's own MAC (or its bridge's, a VLAN's on it), or to a VRRP
 * virtual MAC the node holds, as the loader keeps them in halb_local_macs.
 * A broadcast, a multicast or another host's unicast frame goes to the
 * kernel untouched (counted as EVENT_OTHER_HOST when it was for a
 * service), or every node that sees a flooded frame would send it to a
 * backend.
 *
 * The backend of a flow is the one halb_ct remembers; a flow halb_ct does
 * not know is scheduled by the service's Maglev table (halb_maglev) and then
 * remembered. A packet of a known flow finds its service through the
 * backend's service id (halb_service_ids), checked against the packet's
 * address, port and protocol; that spares the hot path its second hash
 * lookup. Any other packet finds it by those in halb_services. A TCP
 * packet that is not a SYN is scheduled like any other: it belongs to a
 * flow that another halb node was carrying before a VRRP failover, and the
 * same hash over the same table finds the same backend.
 *
 * forward: dr rewrites the Ethernet addresses and sends the frame back out
 * (XDP_TX) or to the backend's interface (XDP_REDIRECT; tc: bpf_redirect to
 * either); the IP packet is not changed, and the backend answers the client
 * directly.
 *
 * forward: tun puts the IP packet, unchanged, inside an outer IPv4 (IPIP,
 * RFC 2003) or IPv6 (IP6IP6, RFC 2473) header from the balancer's address
 * to the backend's, and sends it to the next hop the kernel's FIB names
 * (bpf_fib_lookup): the backend may be routed, off the balancer's links.
 * halb_tunnel.h says how the next hop is found and kept.
 *
 * forward: nat rewrites the destination to the backend's address and port
 * (the backend's port may differ from the service's), updates the IP and
 * transport checksums incrementally, and sends the packet to the next hop
 * the FIB names for the backend, as TUN does. The backend's route to the
 * clients goes through the balancer: its replies arrive on an interface
 * the program is attached to, are known by their source address, port and
 * protocol (halb_nat_replies, which the loader derives from the services:
 * no per-flow state, so a new Master translates the replies of flows the
 * old one opened), get the VIP and the service's port as their source,
 * and go to the next hop the FIB names for the client. A flow's later
 * replies find both in one lookup (halb_reply_flows, a cache of them). A reply to this
 * node's own address (a health check's answer) goes to the kernel as it
 * came, and so does a new flow from a NAT backend's address to a NAT
 * service (hairpin: the backend it met would answer it directly). An ICMP
 * error about a NAT flow (fragmentation needed, packet too big, port
 * unreachable) is translated both ways, the packet it quotes with it.
 * halb_nat.h holds the rewrite.
 *
 * forward: fullnat rewrites the source too, to the balancer's address
 * toward the backend (the service's snat_address, or the kernel's source
 * toward it: the backend's src) and a port of the pool
 * (halb_snat_port_first, _count) that the flow's hash names, so that the
 * backend answers the balancer and needs no route to the clients. Its
 * replies come to that address and port, whose client only halb_fnat
 * knows: state per flow, written with the flow's first packet; their
 * source becomes the VIP's and their destination the client's. A reply
 * halb_fnat does not know (the node's own connection to the backend)
 * goes to the kernel as it came. A new flow that finds no free port is
 * dropped (DROP_NO_SPORT).
 *
 * A TUN packet that does not fit the path to its backend with the outer
 * header is dropped. XDP answers the client in its place, as IPVS does,
 * with an ICMP "fragmentation needed" or ICMPv6 "packet too big" that
 * names the tunnel's MTU (xdp_too_big says when it cannot). tc drops such
 * a packet unanswered; it sees a sender's large TCP segments as one GSO
 * packet, which it does not check against the MTU (tc_tunnel).
 *
 * An ICMP "fragmentation needed" (RFC 792) or ICMPv6 "packet too big" (RFC
 * 4443 §3.2) to a VIP is about a packet the backend sent to a client: the
 * program reads the flow from the packet it quotes and sends the ICMP
 * packet to that flow's backend, DR or TUN as the service says, so that
 * path MTU discovery works for the backend (RFC 1191, RFC 8201).
 *
 * What the program does with packets it cannot fully read:
 *  - not IPv4 or IPv6 (ARP, LLDP, two stacked VLAN tags, ...): pass (tc:
 *    TC_ACT_UNSPEC, which tcx takes as "next").
 *  - too short to hold the Ethernet or VLAN header, or the fixed IPv4/IPv6
 *    header: pass. The destination is unknown, so the packet is not known to
 *    be ours; the kernel drops it and counts it where it counts such things.
 *  - to a VIP in halb_vips, whatever the protocol: IPv4 with a bad version
 *    or header length (DROP_IP_HEADER); an IP length past the frame or
 *    short of the headers (DROP_IP_LENGTH; Ethernet padding after the
 *    packet is fine); a source no client can have, such as 0.0.0.0,
 *    255.255.255.255, loopback or multicast (DROP_BAD_SOURCE, see
 *    halb_checks.h); and for TCP and UDP a data offset or a length that
 *    does not fit the packet (DROP_TCP_HEADER, DROP_UDP_HEADER): drop. To
 *    any other address: pass.
 *  - for a service, from one of the VIPs: drop (DROP_VIP_SOURCE).
 *  - tagged with a VLAN the node has no interface for (halb_local_macs
 *    holds each VLAN's MACs with its id): pass, as a frame to another
 *    MAC: balanced, it would leave still tagged onto a VLAN not ours.
 *  - IPv4 fragments other than the first carry no ports: pass. The first
 *    fragment is balanced like any packet. The program does not reassemble,
 *    so a fragmented datagram to a service ends up split between a backend
 *    (its first fragment) and the local stack (the rest): fragmented
 *    traffic is not served.
 *  - IPv6 with extension headers (the fragment header among them) is not
 *    parsed: pass.
 *  - ICMP and other protocols, even to a VIP: pass (the VIP answers pings),
 *    but for ICMP "too big" errors that quote a TCP/UDP packet from a
 *    service's VIP, and for NAT "port unreachable" errors and errors about
 *    a NAT backend's packets. One that quotes something else, or too
 *    little to read the ports, passes.
 *
 * The program uses uapi and libbpf headers only, and no CO-RE: it must load
 * on kernels without BTF.
 *
 * Where to read what. One packet reads in this file and at most two
 * headers: this file holds the two entry points (halb_xdp_lb, halb_tc_lb),
 * balance(), the one decision both carry out (the service, the backend by
 * halb_ct or Maglev, the DR rewrite), and each hook's TUN and NAT steps
 * (xdp_tunnel, xdp_nat, xdp_nat_reply and their tc twins); halb_parse.h
 * reads the packet; halb_tunnel.h adds what a TUN packet needs,
 * halb_nat.h what a NAT packet does. The headers, each one concern:
 *  - halb.h: the type of every map's key and value, and of the counters'
 *    indexes: the contract with the loader, which bpf2go turns into Go.
 *  - halb_maps.h: the maps, the global variables the loader sets, and the
 *    counters (count_drop, count_event, count).
 *  - halb_parse.h: the parser (struct packet) and the wire headers that no
 *    uapi header has; halb_checks.h: the sources no client has.
 *  - halb_tunnel.h: forward: tun: the FIB and the per-CPU next-hop cache,
 *    the outer IPIP or IP6IP6 header.
 *  - halb_icmp.h: the "fragmentation needed" or "packet too big" that XDP
 *    sends a client in place of a TUN packet too big for the tunnel.
 *  - halb_nat.h: forward: nat's rewrite of addresses, ports, checksums
 *    and ICMP errors, and its reply lookup.
 *  - halb_csum.h: the checksums of the headers halb writes.
 *  - jhash.h: the hash of a flow, the same on every node.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "halb_maps.h"
#include "halb_parse.h"
#include "halb_tunnel.h"
#include "halb_icmp.h"
#include "halb_nat.h"
#include "jhash.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* A constant seed, so that every halb node hashes a flow alike. */
#define HALB_HASH_SEED 0x68616c62 /* "halb" */

/* is_vip tells whether addr, of the flow's family, is a VIP in halb_vips. */
static __always_inline int is_vip(const union addr *addr, enum family family)
{
	struct vip_key key = {
		.addr = *addr,
		.family = family,
	};

	return bpf_map_lookup_elem(&halb_vips, &key) != NULL;
}

/* mac_copy copies the MAC at src to dst, both at least 2-aligned (in a
 * frame, and in halb's records), as three 16-bit words. The frame's
 * Ethernet header is a packed struct, and clang copies its members a byte
 * at a time: 24 instructions for the two MACs of a DR frame, where these
 * are 12. */
static __always_inline void mac_copy(void *dst, const void *src)
{
	__u16 *d = dst;
	const __u16 *s = src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
}

/* for_this_node tells whether the frame at eth, which arrived on ifindex,
 * is addressed to this node: to the interface's own MAC (or its bridge's,
 * a VLAN's on it on that VLAN) or to a VRRP virtual MAC it holds, as
 * halb_local_macs says; vlan is the id of the frame's tag, 0 if none. Only such a frame is balanced or dropped. Any other (a broadcast,
 * a multicast, a unicast frame flooded by a switch that has not learnt its
 * MAC) reaches every node on the link: balanced by each, one SYN would
 * reach a backend once through the Master and once through the Backup.
 *
 * tc's pkt_type cannot stand in for the lookup: the kernel sets it against
 * the interface's own MAC alone, and a frame to a VMAC is PACKET_OTHERHOST
 * on the parent, where tc runs before macvlan hands it to the child. */
static __always_inline int for_this_node(const struct ethhdr *eth, __u32 ifindex, __u16 vlan)
{
	struct local_mac key;
	struct local_mac_cache *c;
	/* The generation is read before the map: a change after it moves
	 * the generation past what the cache is filled with. */
	__u32 gen = halb_local_macs_gen, zero = 0;

	/* The MAC is compared in place, 4 bytes and 2, read through a cast
	 * of eth itself: through the packed struct's member, clang would
	 * read it a byte at a time. */
	c = bpf_map_lookup_elem(&halb_mac_cache, &zero);
	if (c && c->gen == gen && c->key.ifindex == ifindex && c->key.vlan == vlan &&
	    *(__u32 *)c->key.mac == *(const __u32 *)eth &&
	    *(__u16 *)&c->key.mac[4] == ((const __u16 *)eth)[2])
		return 1;
	key.ifindex = ifindex;
	key.vlan = vlan;
	__builtin_memcpy(key.mac, eth->h_dest, ETH_ALEN);
	if (bpf_map_lookup_elem(&halb_local_macs, &key)) {
		if (c) {
			c->gen = gen;
			c->key = key;
		}
		return 1;
	}
	count_event(EVENT_OTHER_HOST);
	return 0;
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
	const __u32 *ids; /* the table's M slots, the value of its one element */
	__u32 zero = 0;
	void *table;

	table = bpf_map_lookup_elem(&halb_maglev, &svc->id);
	if (!table)
		return 0;
	ids = bpf_map_lookup_elem(table, &zero);
	/* slot < M always; the verifier knows M (a frozen constant), not
	 * what % gives, and needs the bound to allow ids[slot]. */
	if (!ids || slot >= halb_maglev_size)
		return 0;
	return ids[slot];
}

/* remember_flow puts a new flow into halb_ct. A call of its own, so that
 * its entry takes no room on the program's stack, which is close to the
 * verifier's 512 bytes, and the hit path does not pay for it. If the table
 * is full the LRU evicts its oldest flow; if the update fails anyway the
 * next packet is scheduled again, to the same place while the table holds
 * still. */
static __noinline void remember_flow(const struct flow *flow, __u32 id, __u16 sport)
{
	struct ct_entry entry = {
		.backend_id = id,
		.sport = sport,
		.first_seen = bpf_ktime_get_coarse_ns() / 1000000000,
		.packets = 1,
	};

	bpf_map_update_elem(&halb_ct, flow, &entry, BPF_ANY);
}

/* schedule finds the backend for pkt: the one halb_ct remembers (ct, which
 * the caller looked up, or NULL; known, its record, when known_service
 * found the service through it), or else the Maglev choice, which it then
 * remembers. A SYN always takes the Maglev choice: it starts a new
 * connection, perhaps on a reused 5-tuple whose old backend has since been
 * drained. A remembered backend that no longer serves this service (its
 * id was freed and handed to another service's backend) does not count: a
 * flow only ever goes to its own service's backends. An ICMP error goes
 * where its flow goes, and is not a flow to remember.
 *
 * A full NAT flow's source port (*sport) is remembered with its backend:
 * a packet halb_ct knows needs neither the flow's hash nor halb_fnat. A
 * new flow takes its port here (snat_port), and one that finds none
 * (*sport 0) is not remembered.
 *
 * A remembered flow counts its packet in its entry (ct->packets), for
 * `halb flows`: a plain increment, not an atomic one, as a flow's packets
 * arrive on one CPU (RSS); when two CPUs carry one flow the count may lose
 * increments. It is approximate by design, and costs the hit no helper. A
 * new entry counts its first packet and notes when it was made (a SYN on
 * a reused 5-tuple makes a new one, and restarts both). */
static __always_inline struct backend *schedule(const struct service *svc,
						const struct packet *pkt,
						struct ct_entry *ct, struct backend *known,
						__u32 *id, int *new_flow, __u16 *sport)
{
	int full = svc->forward == FORWARD_FULLNAT;
	struct backend *b;
	__u32 hash;

	*new_flow = 0;
	*sport = 0;
	if (ct && (!full || ct->sport)) {
		b = known ? known : active_backend(ct->backend_id);
		if (b && b->service == svc->id) {
			*id = ct->backend_id;
			*sport = ct->sport;
			ct->packets++;
			return b;
		}
	}

	hash = flow_hash(&pkt->flow, svc->flags & SERVICE_F_SOURCE_HASH);
	*id = maglev_pick(svc, hash);
	b = active_backend(*id);
	if (!b || pkt->icmp)
		return b;
	if (full) {
		if (svc->flags & SERVICE_F_SOURCE_HASH)
			hash = flow_hash(&pkt->flow, 0); /* the port is the flow's */
		*sport = snat_port(&pkt->flow, b, *id, hash, 1);
		if (!*sport)
			return b;
	}
	remember_flow(&pkt->flow, *id, *sport);
	*new_flow = 1;
	return b;
}

/* service_key_tail is the last word of the service_key of flow's
 * destination (port, proto, family), as known_service reads a key's: so
 * that the key is compared without being built, which only the long way
 * needs. */
_Static_assert(__builtin_offsetof(struct service_key, port) == 16 &&
		       __builtin_offsetof(struct service_key, proto) == 18 &&
		       __builtin_offsetof(struct service_key, family) == 19,
	       "service_key_tail packs port, proto and family as a service_key holds them");
static __always_inline __u32 service_key_tail(const struct flow *flow)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u32)flow->dport | (__u32)flow->proto << 16 | (__u32)flow->family << 24;
#else
	return (__u32)flow->dport << 16 | (__u32)flow->proto << 8 | (__u32)flow->family;
#endif
}

/* known_service is the service of a flow halb_ct knows, through the
 * backend it names (*known, its record) and halb_service_ids, when that
 * service's key is flow's destination: what halb_services holds there,
 * without the hash lookup. NULL sends the packet the long way. The key is
 * compared as five words, as the hash map compares it byte for byte: a
 * service_key is 20 bytes without a hole (halb.h), 4-aligned, and first
 * in a service_slot; its address as the flow's daddr, the rest as
 * service_key_tail packs it. */
_Static_assert(sizeof(struct service_key) == 5 * sizeof(__u32) &&
		       _Alignof(struct service_key) == sizeof(__u32) &&
		       __builtin_offsetof(struct service_slot, key) == 0,
	       "known_service compares a service_key as five aligned words");
static __always_inline struct service *known_service(const struct ct_entry *ct,
						      const struct flow *flow,
						      struct backend **known)
{
	struct service_slot *slot;
	struct backend *b;
	__u32 *have;

	b = active_backend(ct->backend_id);
	if (!b)
		return NULL;
	slot = bpf_map_lookup_elem(&halb_service_ids, &b->service);
	if (!slot)
		return NULL;
	have = (__u32 *)&slot->key;
	if (have[0] != flow->daddr.words[0] || have[1] != flow->daddr.words[1] ||
	    have[2] != flow->daddr.words[2] || have[3] != flow->daddr.words[3] ||
	    have[4] != service_key_tail(flow))
		return NULL;
	*known = b;
	return &slot->svc;
}

/* What balance made of a frame. */
enum verdict {
	VERDICT_PASS,    /* not for a service: on to the kernel */
	VERDICT_DROP,    /* for a service, dropped and counted */
	VERDICT_FORWARD, /* DR to backend d->b; the MACs are rewritten */
	VERDICT_TUNNEL,  /* TUN to backend d->b; the frame is as it came */
	VERDICT_NAT,     /* NAT to backend d->b; the frame is as it came */
	VERDICT_REPLY,   /* a NAT backend's reply, back to the client as d->rev
			  * says; the frame is as it came */
};

/* A forwarding decision, for the hook to carry out and then count. */
struct decision {
	struct backend *b;
	__u32 svc_id;   /* the service's id, for unserved */
	__u32 backend_id;
	__u32 in_ifindex; /* XDP: the interface the frame came in on */
	__u32 len;      /* frame length, for the byte counters */
	int new_flow;   /* scheduled by Maglev, not found in halb_ct */
	__u16 l3_off;   /* where the IP header starts */
	__u32 ip_len;   /* the IP packet's length */
	__u8 family;    /* enum family of the packet */
	__u8 icmp;      /* an ICMP error about a flow (PKT_ICMP_*) */
	__u8 answered;  /* XDP: too big for the tunnel; the client was sent
			 * an ICMP error in the frame's place */
	/* NAT: */
	__u8 nat;       /* VERDICT_NAT */
	__u8 proto;     /* the flow's transport protocol */
	__u16 l4_off;   /* where the TCP, UDP or ICMP header starts */
	struct nat_reply *rev; /* VERDICT_REPLY: what the reply goes back as */
	struct reply_flow *hop; /* VERDICT_REPLY: the flow's halb_reply_flows
				 * entry, when it had a valid one; rev (and
				 * fnat) point into it */
	/* Full NAT: */
	__u16 sport;    /* VERDICT_NAT: the source port the flow was given */
	struct fnat_flow *fnat; /* VERDICT_REPLY: the client it goes back to */
};

/* nat_pkt_of is where d's packet is, for halb_nat.h. */
static __always_inline struct nat_pkt nat_pkt_of(const struct decision *d)
{
	struct nat_pkt p = {
		.ip_len = d->ip_len,
		.l3_off = d->l3_off,
		.l4_off = d->l4_off,
		.family = d->family,
		.proto = d->proto,
		.icmp = d->icmp,
	};

	return p;
}

/* note_packet copies into d where pkt is in the frame, for the hook's
 * step after balance. */
static __always_inline void note_packet(struct decision *d, const struct packet *pkt)
{
	d->l3_off = pkt->l3_off;
	d->l4_off = pkt->l4_off;
	d->ip_len = pkt->ip_len;
	d->family = pkt->flow.family;
	d->proto = pkt->flow.proto;
	d->icmp = pkt->icmp;
}

/* unserved counts a frame for service d->svc_id that went to no backend
 * (dropped, passed, or answered in its place) in the service's own
 * counters; forwarded counts the rest in the backend's. A cold path: a
 * call of its own. */
static __noinline void count_unserved(__u32 svc_id, __u32 len)
{
	count(&halb_service_stats, svc_id, len);
}

static __always_inline void unserved(const struct decision *d)
{
	count_unserved(d->svc_id, d->len);
}

/* is_nat tells whether svc rewrites addresses: forward: nat or fullnat. */
static __always_inline int is_nat(const struct service *svc)
{
	return svc->forward == FORWARD_NAT || svc->forward == FORWARD_FULLNAT;
}

/* via_backend_if tells whether a reply that rev names came in on ifindex,
 * the interface the balancer reaches rev's backend through (its
 * halb_backends record). A source address and port say nothing of who
 * sent a frame: a client that forges a backend's would otherwise have
 * its packet sent on from the VIP to any address it chose (a reflector),
 * which the kernel itself never forwards (the VIP is its own address). */
static __always_inline int via_backend_if(const struct nat_reply *rev, __u32 ifindex)
{
	__u32 id = rev->backend_id;
	const struct backend *b = bpf_map_lookup_elem(&halb_backends, &id);

	return b && b->ifindex == ifindex;
}

/* nat_reply is balance's verdict on pkt, a NAT backend's reply (or an
 * ICMP error about a client's packet to a NAT backend) that d->rev says
 * how to translate: only a frame to this node is translated, as any
 * frame balanced, and only one that came in on its backend's interface
 * (via_backend_if; checked: a halb_reply_flows entry, which is written
 * only for a reply that passed it and holds only on that interface,
 * reply_flow_of). Any other goes to the kernel as it came,
 * counted (DROP_NAT_REPLY_WRONG_IF). */
static __always_inline enum verdict nat_reply(struct ethhdr *eth, __u32 ifindex, __u32 len,
					      const struct packet *pkt, struct decision *d,
					      int checked)
{
	if (!for_this_node(eth, ifindex, pkt->vlan))
		return VERDICT_PASS;
	if (!checked && !via_backend_if(d->rev, ifindex)) {
		count_drop(DROP_NAT_REPLY_WRONG_IF);
		return VERDICT_PASS;
	}
	d->len = len;
	note_packet(d, pkt);
	return VERDICT_REPLY;
}

/* reply_scratch is this CPU's halb_reply_scratch, or NULL, which does
 * not happen. */
static __always_inline struct reply_scratch *reply_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&halb_reply_scratch, &zero);
}

/* reply_flow_of is the halb_reply_flows entry of a NAT reply's flow
 * (not an ICMP error's) that came in on ifindex, while it is valid: for
 * the generation of halb_nexthop_gen and the second its next hop was
 * asked of the FIB in. NULL: the reply goes the long way, which then
 * fills it in (remember_reply). */
static __always_inline struct reply_flow *reply_flow_of(const struct flow *flow, __u32 ifindex)
{
	struct reply_flow *rf = bpf_map_lookup_elem(&halb_reply_flows, flow);

	if (!rf || rf->ifindex != ifindex || rf->nh.gen != halb_nexthop_gen ||
	    coarse_ns() - rf->nh.stamp >= NEXTHOP_TTL_NS)
		return NULL;
	return rf;
}

/* balance is the whole load balancer but the last step, which differs
 * between XDP and tc: it finds the frame's service and backend, and for DR
 * rewrites the Ethernet addresses (the IP packet is not changed, and the
 * backend answers the client directly). len is the frame's whole length,
 * ifindex the interface it came in on.
 *
 * Whether the frame is this node's (for_this_node) is asked last, once it
 * would be balanced or dropped: the host's other traffic does not pay for
 * the lookup. */
static __always_inline enum verdict balance(void *data, void *data_end, __u32 len,
					    __u32 ifindex, __u16 vlan_meta, struct decision *d)
{
	struct ethhdr *eth = data;
	struct packet pkt = {};
	struct ct_entry *ct = NULL;
	struct service *svc = NULL;
	struct backend *known = NULL;
	struct reply_scratch *sc;

	if ((void *)(eth + 1) > data_end)
		return VERDICT_PASS;

	switch (parse(eth, data_end, len, &pkt)) {
	case PARSE_OK:
		/* tc: a tag the NIC took out of the frame is the frame's VLAN. */
		if (vlan_meta)
			pkt.vlan = vlan_meta;
		/* A NAT backend's reply: the byte filter first, so that
		 * every other packet pays one load for it. */
		if (halb_nat_last[pkt.flow.saddr.bytes[15]]) {
			/* A flow whose replies went back in the last second
			 * takes one lookup, for its translation and its next
			 * hop (halb_reply_flows). Any other leaves its flow
			 * in this CPU's scratch, as the key of the entry its
			 * hook's step fills in (remember_reply). */
			if (!pkt.icmp) {
				d->hop = reply_flow_of(&pkt.flow, ifindex);
				if (d->hop) {
					d->rev = &d->hop->back.rev;
					if (d->rev->flags & NAT_REPLY_F_FULLNAT)
						d->fnat = &d->hop->back;
					return nat_reply(eth, ifindex, len, &pkt, d, 1);
				}
				sc = reply_scratch();
				if (sc)
					sc->key = pkt.flow;
			}
			if (halb_fnat_last[pkt.flow.saddr.bytes[15]]) {
				d->fnat = fnat_of(&pkt.flow);
				if (d->fnat) {
					d->rev = &d->fnat->rev;
					return nat_reply(eth, ifindex, len, &pkt, d, 0);
				}
			}
			d->rev = nat_reply_of(&pkt.flow);
			/* A full NAT backend's packet halb_fnat does not
			 * know is no mapped reply: the node's own traffic. */
			if (d->rev && (d->rev->flags & NAT_REPLY_F_FULLNAT))
				return VERDICT_PASS;
			if (d->rev)
				return nat_reply(eth, ifindex, len, &pkt, d, 0);
		}
		break;
	case PARSE_DROP:
		if (vlan_meta)
			pkt.vlan = vlan_meta;
		if (!is_vip(&pkt.flow.daddr, pkt.flow.family) || !for_this_node(eth, ifindex, pkt.vlan))
			return VERDICT_PASS;
		count_drop(pkt.drop);
		return VERDICT_DROP;
	default:
		return VERDICT_PASS;
	}

	/* A flow halb_ct knows finds its service through its backend; any
	 * other packet, and a SYN, by the service's key. */
	if (!pkt.syn) {
		ct = bpf_map_lookup_elem(&halb_ct, &pkt.flow);
		if (ct)
			svc = known_service(ct, &pkt.flow, &known);
	}
	if (!svc) {
		struct service_key skey = {
			.vip = pkt.flow.daddr,
			.port = pkt.flow.dport,
			.proto = pkt.flow.proto,
			.family = pkt.flow.family,
		};

		svc = bpf_map_lookup_elem(&halb_services, &skey);
	}
	/* A port unreachable is NAT's alone to translate: a DR or TUN
	 * backend answers from the VIP itself, and the error reaches it
	 * only through the kernel, as before NAT came. */
	if (!svc || (pkt.icmp == PKT_ICMP_UNREACH && !is_nat(svc)) ||
	    !for_this_node(eth, ifindex, pkt.vlan))
		return VERDICT_PASS;

	d->len = len;
	d->svc_id = svc->id;

	if (svc->forward != FORWARD_DR && svc->forward != FORWARD_TUN && !is_nat(svc)) {
		count_drop(DROP_UNSUPPORTED);
		unserved(d);
		return VERDICT_DROP;
	}

	/* A packet from a VIP is forged, or a backend's answer to a forged
	 * one, and its backend would answer a VIP: back to a balancer. It is
	 * checked once per flow, where halb_ct does not know it, rather than
	 * for every packet: halb_ct learns only flows that passed, and its
	 * key holds the source. */
	if (!ct && halb_vip_last[pkt.flow.saddr.bytes[15]] &&
	    is_vip(&pkt.flow.saddr, pkt.flow.family)) {
		count_drop(DROP_VIP_SOURCE);
		unserved(d);
		return VERDICT_DROP;
	}
	/* A NAT backend as a client of a NAT service (hairpin): translated,
	 * its packet would reach a backend that answers it directly, from
	 * its own address, which the first backend never asked. It goes to
	 * the kernel as it came. Checked once per flow, as above. */
	if (!ct && is_nat(svc) && nat_backend_addr(&pkt.flow.saddr, pkt.flow.family)) {
		count_event(EVENT_NAT_HAIRPIN);
		unserved(d);
		return VERDICT_PASS;
	}
	/* Two other sources are let through, on purpose:
	 *  - a backend of this service: a backend that is also a client of
	 *    its own service, its VIP held where its routing table does not
	 *    send its own packets (another namespace, a policy rule), is a
	 *    known DR setup, and Maglev may send it back to itself, or to a
	 *    peer backend. A forged one makes that backend answer itself:
	 *    nothing a spoofed client address does not already allow, and no
	 *    loop, as the answer comes from the VIP to a backend, not to a VIP.
	 *  - the balancer's own address: from outside only a forgery (the
	 *    node's own packets to a VIP never cross its ingress hook: a VIP it
	 *    holds is local, one it does not leaves by another node). The
	 *    backend's answer reaches this node's stack, which holds no such
	 *    connection and resets it; the kernel's martian-source check
	 *    (accept_local) is what XDP skips. Dropping it would need the
	 *    node's addresses in a map kept like halb_local_macs, for a case
	 *    that neither loops nor amplifies. */
	d->b = schedule(svc, &pkt, ct, known, &d->backend_id, &d->new_flow, &d->sport);
	if (!d->b) {
		count_drop(DROP_NO_BACKEND);
		unserved(d);
		return VERDICT_DROP;
	}
	d->icmp = pkt.icmp;
	if (svc->forward == FORWARD_TUN) {
		d->l3_off = pkt.l3_off;
		d->ip_len = pkt.ip_len;
		d->family = pkt.flow.family;
		return VERDICT_TUNNEL;
	}
	if (svc->forward == FORWARD_FULLNAT && !d->sport) {
		if (!pkt.icmp) {
			count_drop(DROP_NO_SPORT);
			unserved(d);
			return VERDICT_DROP;
		}
		/* An ICMP error finds its flow's port, and makes none. */
		d->sport = snat_port(&pkt.flow, d->b, d->backend_id, flow_hash(&pkt.flow, 0), 0);
		if (!d->sport) {
			unserved(d);
			return VERDICT_PASS; /* about no flow of ours */
		}
	}
	if (is_nat(svc)) {
		note_packet(d, &pkt);
		d->nat = 1;
		return VERDICT_NAT;
	}
	mac_copy(eth->h_dest, d->b->mac);
	mac_copy(eth->h_source, d->b->src_mac);
	return VERDICT_FORWARD;
}

/* forwarded counts a frame that went to its backend: in the backend's
 * counters alone. A service's counters are its backends' summed (the
 * loader adds them up, and folds in those of a backend that leaves),
 * and its own entry in halb_service_stats, which counts the frames for
 * the service that no backend took (unserved): one per-CPU counter per
 * packet where two cost a conntrack hit about 4 ns (BenchmarkXDP). */
static __always_inline void forwarded(const struct decision *d)
{
	struct stats *be_stats = count(&halb_backend_stats, d->backend_id, d->len);

	if (unlikely(d->icmp)) {
		if (d->icmp == PKT_ICMP_TOO_BIG)
			count_event(EVENT_ICMP_TOO_BIG);
		if (d->nat)
			count_event(EVENT_NAT_ICMP);
	}
	if (d->new_flow && be_stats)
		be_stats->new_flows++;
}

/* xdp_xmit sends the frame of d out of ifindex: back out (XDP_TX) when
 * it is the one it came in on, else through halb_tx_ports. */
static __always_inline int xdp_xmit(const struct decision *d, __u32 ifindex)
{
	int action;

	if (ifindex == d->in_ifindex)
		return XDP_TX;
	/* On a missing port this returns the low bits of the flags: 0,
	 * which is XDP_ABORTED. */
	action = bpf_redirect_map(&halb_tx_ports, ifindex, 0);
	if (action != XDP_REDIRECT) {
		count_drop(DROP_NO_TX_PORT);
		return XDP_DROP;
	}
	return action;
}

/* xdp_refuse_too_big answers a packet too big for its route, whose MTU
 * with a tunnel's outer header is mtu, with an ICMP error in its place
 * where xdp_too_big may, and drops it where it may not; counted either
 * way. No error answers an error (RFC 1122 §3.2.2, RFC 4443 §2.4 (e.1)). */
static __always_inline int xdp_refuse_too_big(struct xdp_md *ctx, struct decision *d, __u32 mtu)
{
	if (!d->icmp && !xdp_too_big(ctx, d->len, d->family, d->l3_off, d->ip_len, mtu)) {
		count_drop(DROP_TOO_BIG_ANSWERED);
		d->answered = 1;
		return XDP_TX;
	}
	count_drop(DROP_TOO_BIG);
	return XDP_DROP;
}

/* xdp_tunnel encapsulates the frame for TUN and sends it to the next hop.
 * The next hop and the egress port come first, so that a frame that cannot go
 * is dropped as it came. */
static __always_inline int xdp_tunnel(struct xdp_md *ctx, struct decision *d)
{
	struct nexthop *nh = NULL;
	__u32 outer = outer_len(d->family);
	void *data, *data_end;
	struct ethhdr *eth;
	int rc, action;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return XDP_DROP;
	}
	if (tun_overflows(d->family, d->ip_len)) {
		count_drop(DROP_TOO_BIG);
		return XDP_DROP;
	}
	rc = tun_nexthop(ctx, d->b, d->backend_id, d->family, 0, &nh);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || !nh) {
		tun_drop(rc);
		return XDP_DROP;
	}
	if (outer + d->ip_len > nh->mtu)
		return xdp_refuse_too_big(ctx, d, nh->mtu);
	/* A redirect happens after the program returns: the frame can
	 * change until then. */
	action = xdp_xmit(d, nh->ifindex);
	if (action == XDP_DROP)
		return action;
	/* The IP packet stays where it is; in front of it go a new Ethernet
	 * header and the outer header, in place of the old Ethernet header
	 * and its VLAN tag, if any: the FIB's next hop is untagged. Ethernet
	 * padding after the packet stays, outside the outer length. */
	if (bpf_xdp_adjust_head(ctx, (int)d->l3_off - (int)(ETH_HLEN + outer))) {
		count_drop(DROP_ENCAP);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || encap(eth + 1, data_end, d->b, d->family, d->ip_len)) {
		count_drop(DROP_ENCAP);
		return XDP_DROP;
	}
	mac_copy(eth->h_dest, nh->dmac);
	mac_copy(eth->h_source, nh->smac);
	*eth_proto(eth) = d->family == FAMILY_IPV4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	return action;
}

/* replied counts a NAT reply that went back to its client. */
static __always_inline void replied(const struct decision *d)
{
	count(&halb_reply_stats, d->rev->backend_id, d->len);
	if (d->icmp)
		count_event(EVENT_NAT_ICMP);
}

/* reply_route asks the FIB for the next hop of NAT reply d toward its
 * client, as the kernel would forward it from the interface it came in
 * on, with the VIP as its source: for tot_len bytes (0: the caller checks
 * the MTU). A reply to one of this node's own addresses (the answer to a
 * health check, or to the node's own connection) is not forwarded: the
 * FIB says BPF_FIB_LKUP_RET_NOT_FWDED, and it goes to the kernel as it
 * came. */
static __always_inline int reply_route(void *ctx, const struct decision *d, const union addr *client,
				       __u32 ifindex, struct bpf_fib_lookup *fib, __u16 tot_len)
{
	fib->ifindex = ifindex;
	fib->tot_len = tot_len;
	fib->l4_protocol = d->proto;
	if (d->family == FAMILY_IPV4) {
		fib->family = HALB_AF_INET;
		fib->ipv4_src = d->rev->vip.words[3];
		fib->ipv4_dst = client->words[3];
	} else {
		fib->family = HALB_AF_INET6;
		__builtin_memcpy(fib->ipv6_src, d->rev->vip.words, 16);
		__builtin_memcpy(fib->ipv6_dst, client->words, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* reply_client reads the client of NAT reply d from its IP header, the
 * destination (an ICMP error's too: it goes where the packet it quotes
 * came from). It is read from the packet rather than kept from the
 * parser, so that every other packet's decision stays as small as it
 * was. It returns -1 when the header is not where the parser found it,
 * which does not happen. */
static __always_inline int reply_client(void *data, void *data_end, const struct decision *d,
					union addr *client)
{
	if (d->fnat) {
		*client = d->fnat->client; /* the packet names the balancer */
		return 0;
	}
	if (d->l3_off > ETH_HLEN + sizeof(struct vlan_hdr))
		return -1;
	if (d->family == FAMILY_IPV4) {
		struct iphdr *ip = data + d->l3_off;

		if ((void *)(ip + 1) > data_end)
			return -1;
		addr_from_ipv4(client, ip->daddr);
		return 0;
	}
	struct ipv6hdr *ip6 = data + d->l3_off;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	addr_from_ipv6(client, &ip6->daddr);
	return 0;
}

/* want_neigh leaves the next hop that fib names, whose MAC the
 * neighbour table lacks, in halb_neigh_wanted for the loader to have
 * resolved. On BPF_FIB_LKUP_RET_NO_NEIGH the FIB has filled in the egress
 * interface and the next hop's address. */
static __noinline void want_neigh(const struct bpf_fib_lookup *fib, __u8 family, __u64 now)
{
	struct reply_hop_key key = { .ifindex = fib->ifindex };

	if (family == FAMILY_IPV4)
		addr_from_ipv4(&key.client, fib->ipv4_dst);
	else
		__builtin_memcpy(key.client.words, fib->ipv6_dst, 16);
	bpf_map_update_elem(&halb_neigh_wanted, &key, &now, BPF_ANY);
}

/* reply_nexthop is the next hop of NAT reply d, which came in on
 * ifindex, toward its client, in *nh: from halb_reply_hops while it is
 * fresh, else from the FIB, whose answer it then keeps. The route's MTU
 * comes as tun_nexthop has it. It returns a BPF_FIB_LKUP_RET_ code; a
 * reply the FIB does not forward (BPF_FIB_LKUP_RET_NOT_FWDED: to this
 * node) is never kept, so it asks again each time. On
 * BPF_FIB_LKUP_RET_NO_NEIGH nh->ifindex is the egress interface, for tc's
 * bpf_redirect_neigh, and XDP (xdp) leaves the next hop for the loader
 * to have resolved (want_neigh). ctx is either hook's, data and data_end
 * its frame's. */
static __always_inline int reply_nexthop(void *ctx, void *data, void *data_end, int xdp,
					 const struct decision *d, __u32 ifindex, struct nexthop *nh)
{
	struct reply_hop_key key = { .ifindex = ifindex };
	__u32 gen = halb_nexthop_gen;
	__u64 now = coarse_ns();
	struct bpf_fib_lookup fib = {};
	struct nexthop *cached;
	__u16 mtu = 0xffff;
	int rc;

	if (reply_client(data, data_end, d, &key.client))
		return BPF_FIB_LKUP_RET_NOT_FWDED; /* passed as it came */
	cached = bpf_map_lookup_elem(&halb_reply_hops, &key);
	if (cached && cached->gen == gen && now - cached->stamp < NEXTHOP_TTL_NS) {
		*nh = *cached;
		return BPF_FIB_LKUP_RET_SUCCESS;
	}
	rc = reply_route(ctx, d, &key.client, ifindex, &fib, 0xffff);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		mtu = fib.mtu_result;
		__builtin_memset(&fib, 0, sizeof(fib));
		rc = reply_route(ctx, d, &key.client, ifindex, &fib, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (xdp)
			want_neigh(&fib, d->family, now);
		nh->ifindex = fib.ifindex;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return rc;
	nh->stamp = now;
	nh->gen = gen;
	nh->ifindex = fib.ifindex;
	nh->mtu = mtu;
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	nh->pad = 0;
	bpf_map_update_elem(&halb_reply_hops, &key, nh, BPF_ANY);
	return rc;
}

/* remember_reply keeps in halb_reply_flows what NAT reply d, which came
 * in on ifindex, went back as the long way, and sc->rf.nh, the next hop
 * reply_nexthop found for it, for the next replies of its flow
 * (reply_flow_of): sc->key, which balance left there. An ICMP error is
 * not kept. */
static __always_inline void remember_reply(const struct decision *d, struct reply_scratch *sc,
					   __u32 ifindex)
{
	if (d->icmp)
		return;
	if (d->fnat) {
		sc->rf.back = *d->fnat;
	} else {
		__builtin_memset(&sc->rf.back, 0, sizeof(sc->rf.back));
		sc->rf.back.rev = *d->rev;
	}
	sc->rf.ifindex = ifindex;
	sc->rf.pad = 0;
	bpf_map_update_elem(&halb_reply_flows, &sc->key, &sc->rf, BPF_ANY);
}

/* reply_hop is the next hop of NAT reply d, which came in on ifindex:
 * its flow's halb_reply_flows entry's (d->hop), or else reply_nexthop's
 * (xdp: for XDP), which it finds into this CPU's scratch, *sc, for
 * remember_reply (*sc NULL: the entry's). *rc is reply_nexthop's code.
 * NULL: no scratch, which does not happen. */
static __always_inline const struct nexthop *reply_hop(void *ctx, void *data, void *data_end, int xdp,
							const struct decision *d, __u32 ifindex,
							struct reply_scratch **sc, int *rc)
{
	struct reply_scratch *s;

	*sc = NULL;
	*rc = BPF_FIB_LKUP_RET_SUCCESS;
	if (d->hop)
		return &d->hop->nh;
	s = reply_scratch();
	if (!s)
		return NULL;
	*sc = s;
	*rc = reply_nexthop(ctx, data, data_end, xdp, d, ifindex, &s->rf.nh);
	return &s->rf.nh;
}

/* reply_drop counts a NAT reply the FIB gave no next hop for. */
static __always_inline void reply_drop(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		count_drop(DROP_REPLY_NO_NEIGH);
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		count_drop(DROP_REPLY_TOO_BIG);
		break;
	default:
		count_drop(DROP_REPLY_NO_ROUTE);
	}
}

/* xdp_nat_send translates the frame as op says, and op2 (full NAT's
 * other end; NULL: none), and sends it to the next hop from smac to dmac,
 * untagged: the FIB's next hop is, as for TUN. action is how xdp_xmit
 * sends it. */
static __always_inline int xdp_nat_send(struct xdp_md *ctx, const struct decision *d,
					const struct nat_op *op, const struct nat_op *op2,
					const __u8 *dmac, const __u8 *smac, int action)
{
	struct nat_pkt p = nat_pkt_of(d);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth;

	if (nat_rewrite(data, data_end, &p, op, op2)) {
		count_drop(DROP_MALFORMED);
		return XDP_DROP;
	}
	if (d->l3_off != ETH_HLEN && bpf_xdp_adjust_head(ctx, (int)d->l3_off - ETH_HLEN)) {
		count_drop(DROP_ENCAP);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		count_drop(DROP_ENCAP);
		return XDP_DROP;
	}
	mac_copy(eth->h_dest, dmac);
	mac_copy(eth->h_source, smac);
	*eth_proto(eth) = d->family == FAMILY_IPV4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	return action;
}

/* xdp_nat sends a client's packet to its NAT backend: its destination
 * rewritten to the backend's address and port, to the next hop the FIB
 * names for the backend (kept per CPU as for TUN, halb_tunnel.h). The
 * next hop comes first, so that a frame that cannot go is dropped as it
 * came, and a packet too big for the route is answered, as TUN's, with
 * the route's MTU (xdp_too_big takes an MTU that holds an outer header;
 * NAT adds none). */
static __always_inline int xdp_nat(struct xdp_md *ctx, struct decision *d)
{
	struct nat_op op = { .to = &d->b->addr, .port = d->b->port, .dst = 1 };
	struct nat_op src = { .to = &d->b->src, .port = d->sport };
	struct nexthop *nh = NULL;
	int rc, action;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return XDP_DROP;
	}
	rc = tun_nexthop(ctx, d->b, d->backend_id, d->family, d->proto, &nh);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || !nh) {
		tun_drop(rc);
		return XDP_DROP;
	}
	if (d->ip_len > nh->mtu)
		return xdp_refuse_too_big(ctx, d, nh->mtu + outer_len(d->family));
	action = xdp_xmit(d, nh->ifindex);
	if (action == XDP_DROP)
		return action;
	return xdp_nat_send(ctx, d, &op, d->sport ? &src : NULL, nh->dmac, nh->smac, action);
}

/* xdp_nat_reply sends a NAT backend's reply back to its client, its
 * source rewritten to the VIP and the service's port, to the next hop the
 * FIB names for the client (kept in halb_reply_hops, and with the flow's
 * translation in halb_reply_flows). A reply is never handed to the
 * kernel once rewritten: the kernel drops a packet from one of its own
 * addresses (the VIP) as a martian. One it would not forward (to this
 * node) goes to the kernel before. */
static __always_inline int xdp_nat_reply(struct xdp_md *ctx, struct decision *d)
{
	struct nat_op op = { .to = &d->rev->vip, .port = d->rev->port };
	struct nat_op dst = { .dst = 1 };
	const struct nexthop *hop;
	struct reply_scratch *sc;
	int rc, action;

	hop = reply_hop(ctx, (void *)(long)ctx->data, (void *)(long)ctx->data_end, 1, d,
			ctx->ingress_ifindex, &sc, &rc);
	if (!hop || rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return XDP_PASS;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && d->ip_len > hop->mtu)
		rc = BPF_FIB_LKUP_RET_FRAG_NEEDED;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		reply_drop(rc);
		return XDP_DROP;
	}
	action = xdp_xmit(d, hop->ifindex);
	if (action == XDP_DROP)
		return action;
	if (sc)
		remember_reply(d, sc, ctx->ingress_ifindex);
	if (d->fnat) {
		dst.to = &d->fnat->client;
		dst.port = d->fnat->client_port;
	}
	action = xdp_nat_send(ctx, d, &op, d->fnat ? &dst : NULL, hop->dmac, hop->smac, action);
	if (action != XDP_DROP)
		replied(d);
	return action;
}

/* halb_xdp_lb sends a frame back out of the interface it came in on
 * (XDP_TX) or to the backend's interface (XDP_REDIRECT). */
SEC("xdp")
int halb_xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 in = ctx->ingress_ifindex; /* three loads the verifier makes of it */
	struct decision d = { .in_ifindex = in };
	int action;

	switch (balance(data, data_end, data_end - data, in, 0, &d)) {
	case VERDICT_PASS:
		return XDP_PASS;
	case VERDICT_DROP:
		return XDP_DROP;
	case VERDICT_TUNNEL:
		action = xdp_tunnel(ctx, &d);
		break;
	case VERDICT_NAT:
		action = xdp_nat(ctx, &d);
		break;
	case VERDICT_REPLY:
		return xdp_nat_reply(ctx, &d);
	default:
		action = xdp_xmit(&d, d.b->ifindex);
	}
	if (action != XDP_DROP && !d.answered)
		forwarded(&d);
	else
		unserved(&d);
	return action;
}

/* The most of a frame the parser reads, and NAT rewrites: Ethernet, a
 * VLAN tag, IPv4 with the longest options, and an ICMP header quoting an
 * IPv6 header and a whole TCP header (NAT updates its checksum). */
#define HALB_PARSE_LEN (ETH_HLEN + 4 + 60 + 8 + 40 + 20)

/* tc_egress_ok tells whether the tc program may send a frame out of
 * ifindex: the ingress interface, or one in halb_tx_ports. */
static __always_inline int tc_egress_ok(struct __sk_buff *skb, __u32 ifindex)
{
	if (ifindex == skb->ingress_ifindex || bpf_map_lookup_elem(&halb_tx_ports, &ifindex))
		return 1;
	count_drop(DROP_NO_TX_PORT);
	return 0;
}

/* tc_encap makes room for the outer header with bpf_skb_adjust_room,
 * which marks the skb as encapsulated so that GSO segments it right, and
 * writes it. The kernel has usually taken a VLAN tag into the skb's
 * metadata; it goes, as in XDP. A tag still in the frame (a second one)
 * makes the frame one tc cannot encapsulate. On success the frame starts
 * with its old Ethernet header. */
static __always_inline int tc_encap(struct __sk_buff *skb, const struct decision *d)
{
	__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;
	void *data, *data_end;
	struct ethhdr *eth;

	if (d->family == FAMILY_IPV4)
		flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4;
	if (skb->vlan_present)
		bpf_skb_vlan_pop(skb);
	if (d->l3_off != ETH_HLEN || bpf_skb_adjust_room(skb, outer_len(d->family), BPF_ADJ_ROOM_MAC, flags))
		goto fail;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || encap(eth + 1, data_end, d->b, d->family, d->ip_len))
		goto fail;
	return 0;
fail:
	count_drop(DROP_ENCAP);
	return -1;
}

/* tc_tunnel is xdp_tunnel for tc. A next hop the neighbour table lacks is
 * left to the kernel's neighbour layer (bpf_redirect_neigh), which
 * resolves it and sends the packet. */
static __always_inline int tc_tunnel(struct __sk_buff *skb, const struct decision *d)
{
	struct bpf_fib_lookup fib = {};
	__u32 outer = outer_len(d->family);
	void *data, *data_end;
	struct ethhdr *eth;
	int rc;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}
	if (tun_overflows(d->family, d->ip_len)) {
		count_drop(DROP_TOO_BIG);
		return TC_ACT_SHOT;
	}
	/* A GSO packet is checked against the MTU segment by segment where
	 * it leaves (tot_len 0 lets it through); any other by its length
	 * with the outer header. */
	rc = tun_route(skb, d->b, d->family, &fib, skb->gso_segs > 1 ? 0 : outer + d->ip_len, 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (!tc_egress_ok(skb, fib.ifindex) || tc_encap(skb, d))
			return TC_ACT_SHOT;
		count_event(EVENT_NEIGH_RESOLVE);
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		tun_drop(rc);
		return TC_ACT_SHOT;
	}
	if (!tc_egress_ok(skb, fib.ifindex) || tc_encap(skb, d))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		count_drop(DROP_ENCAP);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}

/* tc_nat_rewrite is nat_rewrite for a TCP or UDP packet in tc, through
 * the kernel's helpers: an skb may carry a partial checksum
 * (CHECKSUM_PARTIAL: a local socket's, on a veth or a NIC with TX
 * offload), which holds the pseudo-header's sum alone and wants only the
 * addresses' change, or a checksum the kernel keeps of the whole packet
 * (CHECKSUM_COMPLETE), which wants updating too; the helpers know which
 * the skb has, the program does not. UDP over IPv4 without a checksum
 * keeps none (BPF_F_MARK_MANGLED_0). */
static __always_inline int tc_nat_rewrite(struct __sk_buff *skb, const struct decision *d,
					  const struct nat_op *op)
{
	__u32 v4 = d->family == FAMILY_IPV4;
	__u32 addr_off = d->l3_off + (v4 ? (op->dst ? 16 : 12) : (op->dst ? 24 : 8));
	__u32 check_off = d->l4_off + (d->proto == IPPROTO_TCP ? 16 : 6);
	__u32 port_off = d->l4_off + (op->dst ? 2 : 0);
	__u64 zero = d->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be16 old_port, new_port = bpf_htons(op->port);
	__be32 old, new;

	for (int i = 0; i < 4; i++) {
		if (v4 && i > 0)
			break;
		new = v4 ? op->to->words[3] : op->to->words[i];
		if (bpf_skb_load_bytes(skb, addr_off + 4 * i, &old, 4) ||
		    bpf_l4_csum_replace(skb, check_off, old, new, BPF_F_PSEUDO_HDR | zero | 4) ||
		    (v4 && bpf_l3_csum_replace(skb, d->l3_off + 10, old, new, 4)) ||
		    bpf_skb_store_bytes(skb, addr_off + 4 * i, &new, 4, 0))
			return -1;
	}
	if (bpf_skb_load_bytes(skb, port_off, &old_port, 2) ||
	    bpf_l4_csum_replace(skb, check_off, old_port, new_port, zero | 2) ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0))
		return -1;
	return 0;
}

/* tc_nat_send translates the frame as op says and sends it out of
 * ifindex: to dmac from smac, or with neigh through the kernel's
 * neighbour layer, which resolves the next hop's MAC. The kernel usually
 * holds a VLAN tag in the skb's metadata; it goes, as in XDP; a tag in
 * the frame's data makes a frame tc does not translate.
 *
 * A TCP or UDP packet is rewritten through the kernel's checksum helpers
 * (tc_nat_rewrite); an ICMP error, which no one offloads, as XDP rewrites
 * it. */
static __always_inline int tc_nat_send(struct __sk_buff *skb, const struct decision *d,
				       const struct nat_op *op, const struct nat_op *op2, __u32 ifindex,
				       const __u8 *dmac, const __u8 *smac, int neigh)
{
	struct nat_pkt p = nat_pkt_of(d);
	void *data, *data_end;
	struct ethhdr *eth;
	int err;

	if (!tc_egress_ok(skb, ifindex))
		return TC_ACT_SHOT;
	if (skb->vlan_present)
		bpf_skb_vlan_pop(skb);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if (d->l3_off != ETH_HLEN || (void *)(eth + 1) > data_end) {
		count_drop(DROP_ENCAP);
		return TC_ACT_SHOT;
	}
	if (d->icmp)
		err = nat_rewrite(data, data_end, &p, op, op2);
	else
		err = tc_nat_rewrite(skb, d, op) || (op2 && tc_nat_rewrite(skb, d, op2));
	if (err) {
		count_drop(DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	if (neigh) {
		count_event(EVENT_NEIGH_RESOLVE);
		return bpf_redirect_neigh(ifindex, NULL, 0, 0);
	}
	/* The helpers may have moved the frame. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		count_drop(DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	return bpf_redirect(ifindex, 0);
}

/* tc_nat is xdp_nat for tc: the FIB is asked for every packet, and a next
 * hop the neighbour table lacks is left to the kernel's neighbour layer
 * (bpf_redirect_neigh). */
static __always_inline int tc_nat(struct __sk_buff *skb, const struct decision *d)
{
	struct nat_op op = { .to = &d->b->addr, .port = d->b->port, .dst = 1 };
	struct nat_op src = { .to = &d->b->src, .port = d->sport };
	struct bpf_fib_lookup fib = {};
	int rc;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}
	rc = tun_route(skb, d->b, d->family, &fib, skb->gso_segs > 1 ? 0 : d->ip_len, d->proto);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		tun_drop(rc);
		return TC_ACT_SHOT;
	}
	return tc_nat_send(skb, d, &op, d->sport ? &src : NULL, fib.ifindex, fib.dmac, fib.smac,
			   rc == BPF_FIB_LKUP_RET_NO_NEIGH);
}

/* tc_nat_reply is xdp_nat_reply for tc, with the same caches, which it
 * reads and fills as XDP does (halb_reply_flows, halb_reply_hops): a
 * reply that tc carries costs a FIB lookup once a second for its client,
 * not once a packet, and a flow's replies are translated alike whichever
 * hook meets them. A next hop without a MAC is never kept: it is left to
 * the kernel's neighbour layer (bpf_redirect_neigh), which resolves it,
 * rather than asked of the loader. A GSO packet is checked against the
 * MTU segment by segment where it leaves. */
static __always_inline int tc_nat_reply(struct __sk_buff *skb, const struct decision *d)
{
	struct nat_op op = { .to = &d->rev->vip, .port = d->rev->port };
	struct nat_op dst = { .dst = 1 };
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	const struct nexthop *hop;
	struct reply_scratch *sc;
	int rc, action;

	hop = reply_hop(skb, data, data_end, 0, d, skb->ingress_ifindex, &sc, &rc);
	if (!hop || rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return TC_ACT_UNSPEC;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && skb->gso_segs <= 1 && d->ip_len > hop->mtu)
		rc = BPF_FIB_LKUP_RET_FRAG_NEEDED;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		reply_drop(rc);
		return TC_ACT_SHOT;
	}
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && sc)
		remember_reply(d, sc, skb->ingress_ifindex);
	if (d->fnat) {
		dst.to = &d->fnat->client;
		dst.port = d->fnat->client_port;
	}
	action = tc_nat_send(skb, d, &op, d->fnat ? &dst : NULL, hop->ifindex, hop->dmac, hop->smac,
			     rc == BPF_FIB_LKUP_RET_NO_NEIGH);
	if (action != TC_ACT_SHOT)
		replied(d);
	return action;
}

/* halb_tc_lb is halb_xdp_lb for the tc ingress hook (tcx), where XDP cannot
 * attach: the same maps, the same decisions, and the frame goes out of the
 * backend's interface (bpf_redirect to its egress; the same interface as
 * the ingress is allowed and is how DR hairpins). On the skb path the
 * kernel has usually moved a VLAN tag into the skb's metadata before tc
 * runs, and puts it back on the way out (DR). */
SEC("tc")
int halb_tc_lb(struct __sk_buff *skb)
{
	struct decision d = {};
	void *data, *data_end;
	__u32 linear = skb->data_end - skb->data;
	int action;

	/* Direct packet access reaches the linear part of the skb only: pull
	 * the headers into it. Failure leaves the frame short, and the parser
	 * passes what it cannot read. */
	if (linear < HALB_PARSE_LEN && linear < skb->len)
		bpf_skb_pull_data(skb, skb->len < HALB_PARSE_LEN ? skb->len : HALB_PARSE_LEN);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;

	switch (balance(data, data_end, skb->len, skb->ingress_ifindex,
			skb->vlan_present ? skb->vlan_tci & 0x0fff : 0, &d)) {
	case VERDICT_PASS:
		return TC_ACT_UNSPEC; /* tcx: TCX_NEXT, on to the next program or the stack */
	case VERDICT_DROP:
		return TC_ACT_SHOT;
	case VERDICT_TUNNEL:
		action = tc_tunnel(skb, &d);
		break;
	case VERDICT_NAT:
		action = tc_nat(skb, &d);
		break;
	case VERDICT_REPLY:
		return tc_nat_reply(skb, &d);
	default:
		action = TC_ACT_SHOT;
		if (tc_egress_ok(skb, d.b->ifindex))
			action = bpf_redirect(d.b->ifindex, 0);
	}
	if (action != TC_ACT_SHOT)
		forwarded(&d);
	else
		unserved(&d);
	return action;
}
