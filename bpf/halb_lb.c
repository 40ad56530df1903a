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
 * lookup. Any other packet finds it by those in halb_services. A TCP packet that is not a SYN is scheduled like any other: it
 * belongs to a flow that another halb node was carrying before a VRRP
 * failover, and the same hash over the same table finds the same backend.
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
 * The FIB costs XDP more than the rest of the packet's path, so XDP keeps
 * its answer per CPU and backend (halb_nexthops) until the loader reports
 * a route, neighbour or backend change, or a second has passed. When the
 * neighbour table lacks the next hop's MAC, XDP drops the packet
 * (DROP_NO_NEIGH) while the loader has the kernel resolve it; tc hands it
 * to the kernel's neighbour layer (bpf_redirect_neigh), which resolves the
 * MAC and sends it. Passing it to the stack would not do: the stack drops
 * a packet that arrives with one of its own addresses as the source (a
 * martian), and the original packet, to a VIP the balancer holds, would
 * be answered by the balancer itself.
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
 *    service's VIP. One that quotes something else, or too little to read
 *    the ports, passes.
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
#include "halb_checks.h"
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

/* A TUN backend's next hop as this CPU last had it from the FIB (struct
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

/* How long a cached next hop is trusted without a bump: the bound on a
 * stale one while no loader runs to bump halb_nexthop_gen (halb killed,
 * the program still attached). */
#define NEXTHOP_TTL_NS 1000000000ULL

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

/* No uapi header defines the 802.1Q tag. */
struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* The ICMP and ICMPv6 header as far as the errors need it (linux/icmp.h
 * would pull in libc's headers): type, code, checksum, and a word that
 * holds the MTU (RFC 1191 §4, RFC 4443 §3.2). The quoted packet follows. */
struct icmp_err {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 mtu;
};

#define ICMP_DEST_UNREACH 3 /* RFC 792 */
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_PKT_TOOBIG 2 /* RFC 4443 §3.2 */

/* Nor, for a BPF target, the address families. */
#define HALB_AF_INET 2
#define HALB_AF_INET6 10

#define IPV4_FRAG_OFFSET 0x1fff /* the fragment offset bits of frag_off */
#define IPV4_DF 0x4000          /* don't fragment */
#define TCP_DOFF_BYTE 12        /* the data offset, in its high 4 bits */
#define TCP_FLAGS_BYTE 13       /* CWR ECE URG ACK PSH RST SYN FIN */
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_SYN 0x02
#define TUN_TTL 64              /* of the outer header */

/* What the parser made of a frame. */
enum parse_result {
	PARSE_OK,   /* a TCP/UDP packet, or an ICMP error about one:
		     * pkt->flow is complete */
	PARSE_PASS, /* not ours, or not known to be ours */
	PARSE_DROP, /* broken after the destination address, or from a source
		     * no client has: pkt->flow holds family and addresses
		     * only, pkt->drop says why; dropped when to a VIP */
};

struct packet {
	struct flow flow; /* also the halb_ct key: keep it zeroed before use */
	__u8 drop;        /* PARSE_DROP: the enum drop_reason */
	__u16 l3_off;     /* where the IP header starts in the frame */
	__u16 vlan;       /* the VLAN id of the frame's tag, 0 if none */
	__u32 ip_len;     /* the IP packet's length, by its header: IPv6's
			   * header and payload can exceed 16 bits */
	__u8 syn;         /* a TCP SYN without ACK: a connection starts */
	__u8 icmp;        /* an ICMP error about flow; flow is the quoted
			   * packet's, turned around */
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

/* parse_ports reads the ports of a TCP or UDP header at l4 into flow,
 * turned around when reverse: the header of a packet from the VIP. */
static __always_inline int parse_ports(void *l4, void *data_end, struct flow *flow,
				       int reverse)
{
	__be16 *ports = l4;

	/* The first 8 bytes of the transport header: what an ICMP error
	 * quotes at the least (RFC 792), and more than the ports. */
	if ((void *)(ports + 2) > data_end)
		return -1;
	if (reverse) {
		flow->sport = bpf_ntohs(ports[1]);
		flow->dport = bpf_ntohs(ports[0]);
	} else {
		flow->sport = bpf_ntohs(ports[0]);
		flow->dport = bpf_ntohs(ports[1]);
	}
	return 0;
}

/* parse_icmp4 reads the flow of an ICMP "fragmentation needed" at l4: the
 * packet it quotes went from the VIP to a client, and flow becomes the
 * client's direction. The IPv4 addresses are in flow already. */
static __always_inline enum parse_result parse_icmp4(void *l4, void *data_end,
						     struct packet *pkt)
{
	struct icmp_err *icmp = l4;
	struct iphdr *inner = (void *)(icmp + 1);
	__u8 version_ihl;

	if ((void *)(inner + 1) > data_end)
		return PARSE_PASS;
	if (icmp->type != ICMP_DEST_UNREACH || icmp->code != ICMP_FRAG_NEEDED)
		return PARSE_PASS;
	version_ihl = *(__u8 *)inner;
	if (version_ihl != 0x45) /* options in a quoted header: not worth it */
		return PARSE_PASS;
	if (inner->saddr != pkt->flow.daddr.words[3] ||
	    inner->frag_off & bpf_htons(IPV4_FRAG_OFFSET) ||
	    (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))
		return PARSE_PASS;
	if (parse_ports(inner + 1, data_end, &pkt->flow, 1))
		return PARSE_PASS;
	pkt->flow.saddr.words[3] = inner->daddr;
	pkt->flow.proto = inner->protocol;
	pkt->icmp = 1;
	return PARSE_OK;
}

/* parse_icmp6 is parse_icmp4 for an ICMPv6 "packet too big". */
static __always_inline enum parse_result parse_icmp6(void *l4, void *data_end,
						     struct packet *pkt)
{
	struct icmp_err *icmp = l4;
	struct ipv6hdr *inner = (void *)(icmp + 1);

	if ((void *)(inner + 1) > data_end)
		return PARSE_PASS;
	if (icmp->type != ICMPV6_PKT_TOOBIG)
		return PARSE_PASS;
	if (inner->saddr.in6_u.u6_addr32[0] != pkt->flow.daddr.words[0] ||
	    inner->saddr.in6_u.u6_addr32[1] != pkt->flow.daddr.words[1] ||
	    inner->saddr.in6_u.u6_addr32[2] != pkt->flow.daddr.words[2] ||
	    inner->saddr.in6_u.u6_addr32[3] != pkt->flow.daddr.words[3] ||
	    (inner->nexthdr != IPPROTO_TCP && inner->nexthdr != IPPROTO_UDP))
		return PARSE_PASS;
	if (parse_ports(inner + 1, data_end, &pkt->flow, 1))
		return PARSE_PASS;
	addr_from_ipv6(&pkt->flow.saddr, &inner->daddr);
	pkt->flow.proto = inner->nexthdr;
	pkt->icmp = 1;
	return PARSE_OK;
}

/* drop_as sets why pkt is to be dropped. */
static __always_inline enum parse_result drop_as(struct packet *pkt, enum drop_reason reason)
{
	pkt->drop = reason;
	return PARSE_DROP;
}

/* parse fills pkt from the frame that starts with eth, len bytes long; the
 * program can read up to data_end (tc: the skb's head, which may end
 * before the frame does). The caller has checked that the Ethernet header
 * is there.
 *
 * It checks what the packet's path to a backend would trust: the IP
 * header's version and length against the frame, the source address, and
 * the transport header against the IP length, each where its fields are
 * read anyway. The checks of the IP header come before the protocol is
 * known, so that they hold for whatever reaches a VIP; a later IPv4
 * fragment carries no transport header and goes to the kernel before the
 * length check, as it always did. */
static __always_inline enum parse_result parse(struct ethhdr *eth, void *data_end, __u32 len,
					       struct packet *pkt)
{
	void *l3 = eth + 1;
	void *l4;
	__be16 proto = eth->h_proto;
	__u32 l3_len, hdr_len;
	__u8 l4proto;

	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return PARSE_PASS;
		pkt->vlan = bpf_ntohs(vlan->tci) & 0x0fff;
		proto = vlan->proto;
		l3 = vlan + 1;
	}
	pkt->l3_off = l3 - (void *)eth;
	/* What the frame holds from the IP header on. The caller's len
	 * covers at least the Ethernet header, and the parser returns before
	 * it compares against l3_len when the frame ends inside a VLAN tag. */
	l3_len = len - pkt->l3_off;

	/* The IPv4 header checksum is not verified here, though XDP runs
	 * before ip_rcv, which would: halb changes no byte of the IP packet
	 * (DR rewrites the MACs, TUN puts an outer header in front), and the
	 * backend's ip_rcv verifies it and drops a damaged one, counted in
	 * its InHdrErrors. A damaged header at worst opens a halb_ct entry
	 * for a flow that does not exist, as any forged SYN does, while the
	 * sum would cost every packet. */
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
			return drop_as(pkt, DROP_IP_HEADER);
		if (iph->frag_off & bpf_htons(IPV4_FRAG_OFFSET))
			return PARSE_PASS;
		pkt->ip_len = bpf_ntohs(iph->tot_len);
		hdr_len = ihl * 4;
		/* A length past the frame: a backend would read what is not
		 * there, or (TUN) the outer header would claim it. One short
		 * of the headers (RFC 1812 §5.2.2): the packet would go on
		 * with its real bytes as padding, which a backend drops. A
		 * frame longer than the length is fine: Ethernet pads short
		 * frames to 60 bytes, and the padding goes along. */
		if (pkt->ip_len > l3_len || pkt->ip_len < hdr_len + 8)
			return drop_as(pkt, DROP_IP_LENGTH);
		if (bad_source4(iph->saddr))
			return drop_as(pkt, DROP_BAD_SOURCE);
		l4proto = iph->protocol;
		l4 = l3 + hdr_len;
		if (l4proto == IPPROTO_ICMP)
			return parse_icmp4(l4, data_end, pkt);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) > data_end)
			return PARSE_PASS;
		pkt->flow.family = FAMILY_IPV6;
		addr_from_ipv6(&pkt->flow.saddr, &ip6h->saddr);
		addr_from_ipv6(&pkt->flow.daddr, &ip6h->daddr);
		if (*(__u8 *)ip6h >> 4 != 6)
			return drop_as(pkt, DROP_IP_HEADER);
		hdr_len = sizeof(*ip6h);
		pkt->ip_len = hdr_len + bpf_ntohs(ip6h->payload_len);
		/* As for IPv4. A jumbogram's payload length is 0 (RFC 2675):
		 * not for halb. */
		if (pkt->ip_len > l3_len || pkt->ip_len < hdr_len + 8)
			return drop_as(pkt, DROP_IP_LENGTH);
		if (bad_source6(pkt->flow.saddr.words))
			return drop_as(pkt, DROP_BAD_SOURCE);
		l4proto = ip6h->nexthdr;
		l4 = ip6h + 1;
		if (l4proto == IPPROTO_ICMPV6)
			return parse_icmp6(l4, data_end, pkt);
	} else {
		return PARSE_PASS;
	}

	if (l4proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;
		__u8 flags;

		/* The segment holds the fixed header, and the data offset
		 * counts it and stays inside the segment (RFC 9293 §3.1): a
		 * backend's TCP drops anything else, and halb would have
		 * balanced, and remembered, a flow for nothing. */
		if (pkt->ip_len < hdr_len + sizeof(*th))
			return drop_as(pkt, DROP_TCP_HEADER);
		if ((void *)(th + 1) > data_end)
			return drop_as(pkt, DROP_MALFORMED);
		doff = ((__u8 *)th)[TCP_DOFF_BYTE] >> 4;
		if (doff < 5 || doff * 4 > pkt->ip_len - hdr_len)
			return drop_as(pkt, DROP_TCP_HEADER);
		pkt->flow.sport = bpf_ntohs(th->source);
		pkt->flow.dport = bpf_ntohs(th->dest);
		flags = ((__u8 *)th)[TCP_FLAGS_BYTE];
		pkt->syn = (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		__u32 ulen;

		if ((void *)(uh + 1) > data_end)
			return drop_as(pkt, DROP_MALFORMED);
		/* RFC 768: the length counts the header. A datagram shorter
		 * than the IP payload is allowed (what follows is not UDP's),
		 * a longer one is not there. */
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || ulen > pkt->ip_len - hdr_len)
			return drop_as(pkt, DROP_UDP_HEADER);
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

/* count_event is count_drop for halb_events. */
static __noinline void count_event(enum event event)
{
	__u32 key = event;
	__u64 *count = bpf_map_lookup_elem(&halb_events, &key);

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

/* is_vip tells whether addr, of the flow's family, is a VIP in halb_vips. */
static __always_inline int is_vip(const union addr *addr, enum family family)
{
	struct vip_key key = {
		.addr = *addr,
		.family = family,
	};

	return bpf_map_lookup_elem(&halb_vips, &key) != NULL;
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
	struct local_mac key = { .ifindex = ifindex, .vlan = vlan };
	struct local_mac_cache *c;
	/* The generation is read before the map: a change after it moves
	 * the generation past what the cache is filled with. */
	__u32 gen = halb_local_macs_gen, zero = 0;

	/* The MAC is compared in place, 4 bytes and 2. */
	c = bpf_map_lookup_elem(&halb_mac_cache, &zero);
	if (c && c->gen == gen && c->key.ifindex == ifindex && c->key.vlan == vlan &&
	    *(__u32 *)c->key.mac == *(const __u32 *)eth->h_dest &&
	    *(__u16 *)&c->key.mac[4] == *(const __u16 *)&eth->h_dest[4])
		return 1;
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
	__u32 *id;
	void *table;

	table = bpf_map_lookup_elem(&halb_maglev, &svc->id);
	if (!table)
		return 0;
	id = bpf_map_lookup_elem(table, &slot);
	return id ? *id : 0;
}

/* schedule finds the backend for pkt: the one halb_ct remembers (ct, which
 * the caller looked up, or NULL), or else the Maglev choice, which it then
 * remembers. A SYN always takes the Maglev choice: it starts a new
 * connection, perhaps on a reused 5-tuple whose old backend has since been
 * drained. A remembered backend that no longer serves this service (its
 * id was freed and handed to another service's backend) does not count: a
 * flow only ever goes to its own service's backends. An ICMP error goes
 * where its flow goes, and is not a flow to remember. */
static __always_inline struct backend *schedule(const struct service *svc,
						const struct packet *pkt,
						const struct ct_entry *ct,
						__u32 *id, int *new_flow)
{
	struct ct_entry entry;
	struct backend *b;

	*new_flow = 0;
	if (ct) {
		b = active_backend(ct->backend_id);
		if (b && b->service == svc->id) {
			*id = ct->backend_id;
			return b;
		}
	}

	*id = maglev_pick(svc, flow_hash(&pkt->flow, svc->flags & SERVICE_F_SOURCE_HASH));
	b = active_backend(*id);
	if (!b || pkt->icmp)
		return b;
	entry.backend_id = *id;
	/* If the table is full the LRU evicts its oldest flow; if the update
	 * fails anyway the next packet is scheduled again, to the same place
	 * while the table holds still. */
	bpf_map_update_elem(&halb_ct, &pkt->flow, &entry, BPF_ANY);
	*new_flow = 1;
	return b;
}

/* known_service is the service of a flow halb_ct knows, through the
 * backend it names and halb_service_ids, when that service is the one at
 * key: what halb_services holds at key, without the hash lookup. NULL
 * sends the packet the long way. The keys are compared as five words, as
 * the hash map compares them byte for byte: a service_key is 20 bytes
 * without a hole (halb.h), 4-aligned, and first in a service_slot. */
_Static_assert(sizeof(struct service_key) == 5 * sizeof(__u32) &&
		       _Alignof(struct service_key) == sizeof(__u32) &&
		       __builtin_offsetof(struct service_slot, key) == 0,
	       "known_service compares a service_key as five aligned words");
static __always_inline struct service *known_service(const struct ct_entry *ct,
						      const struct service_key *key)
{
	const __u32 *want = (const __u32 *)key;
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
	if (have[0] != want[0] || have[1] != want[1] || have[2] != want[2] ||
	    have[3] != want[3] || have[4] != want[4])
		return NULL;
	return &slot->svc;
}

/* What balance made of a frame. */
enum verdict {
	VERDICT_PASS,    /* not for a service: on to the kernel */
	VERDICT_DROP,    /* for a service, dropped and counted */
	VERDICT_FORWARD, /* DR to backend d->b; the MACs are rewritten */
	VERDICT_TUNNEL,  /* TUN to backend d->b; the frame is as it came */
};

/* A forwarding decision, for the hook to carry out and then count. */
struct decision {
	struct backend *b;
	struct stats *svc_stats;
	__u32 backend_id;
	__u32 len;      /* frame length, for the byte counters */
	int new_flow;   /* scheduled by Maglev, not found in halb_ct */
	__u16 l3_off;   /* where the IP header starts */
	__u32 ip_len;   /* the IP packet's length */
	__u8 family;    /* enum family of the packet */
	__u8 icmp;      /* an ICMP error about a flow */
	__u8 answered;  /* XDP: too big for the tunnel; the client was sent
			 * an ICMP error in the frame's place */
};

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
	struct service_key skey = {};
	struct ct_entry *ct = NULL;
	struct service *svc = NULL;

	if ((void *)(eth + 1) > data_end)
		return VERDICT_PASS;

	switch (parse(eth, data_end, len, &pkt)) {
	case PARSE_OK:
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

	skey.vip = pkt.flow.daddr;
	skey.port = pkt.flow.dport;
	skey.proto = pkt.flow.proto;
	skey.family = pkt.flow.family;
	/* A flow halb_ct knows finds its service through its backend; any
	 * other packet, and a SYN, by the service's key. */
	if (!pkt.syn) {
		ct = bpf_map_lookup_elem(&halb_ct, &pkt.flow);
		if (ct)
			svc = known_service(ct, &skey);
	}
	if (!svc)
		svc = bpf_map_lookup_elem(&halb_services, &skey);
	/* tc: a tag the NIC took out of the frame is the frame's VLAN. */
	if (vlan_meta)
		pkt.vlan = vlan_meta;
	if (!svc || !for_this_node(eth, ifindex, pkt.vlan))
		return VERDICT_PASS;

	d->len = len;
	d->svc_stats = count(&halb_service_stats, svc->id, len);

	if (svc->forward != FORWARD_DR && svc->forward != FORWARD_TUN) {
		count_drop(DROP_UNSUPPORTED);
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
		return VERDICT_DROP;
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
	d->b = schedule(svc, &pkt, ct, &d->backend_id, &d->new_flow);
	if (!d->b) {
		count_drop(DROP_NO_BACKEND);
		return VERDICT_DROP;
	}
	d->icmp = pkt.icmp;
	if (svc->forward == FORWARD_TUN) {
		d->l3_off = pkt.l3_off;
		d->ip_len = pkt.ip_len;
		d->family = pkt.flow.family;
		return VERDICT_TUNNEL;
	}
	__builtin_memcpy(eth->h_dest, d->b->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, d->b->src_mac, ETH_ALEN);
	return VERDICT_FORWARD;
}

/* forwarded counts a frame that went to its backend. */
static __always_inline void forwarded(const struct decision *d)
{
	struct stats *be_stats = count(&halb_backend_stats, d->backend_id, d->len);

	if (d->icmp)
		count_event(EVENT_ICMP_TOO_BIG);
	if (d->new_flow) {
		if (d->svc_stats)
			d->svc_stats->new_flows++;
		if (be_stats)
			be_stats->new_flows++;
	}
}

/* The outer header of a TUN packet, by family. */
static __always_inline __u32 outer_len(const struct decision *d)
{
	return d->family == FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

/* tun_route asks the FIB for the next hop from the balancer's address to
 * backend d->b, as the balancer's own packet would go (tot_len 0: the
 * caller checks the MTU itself). On success fib names the egress
 * interface and the MACs. */
static __always_inline int tun_route(void *ctx, const struct decision *d,
				     struct bpf_fib_lookup *fib, __u16 tot_len)
{
	const struct backend *b = d->b;

	fib->ifindex = b->ifindex;
	fib->tot_len = tot_len;
	if (d->family == FAMILY_IPV4) {
		fib->family = HALB_AF_INET;
		fib->l4_protocol = IPPROTO_IPIP;
		fib->ipv4_src = b->src.words[3];
		fib->ipv4_dst = b->addr.words[3];
	} else {
		fib->family = HALB_AF_INET6;
		fib->l4_protocol = IPPROTO_IPV6;
		__builtin_memcpy(fib->ipv6_src, b->src.words, 16);
		__builtin_memcpy(fib->ipv6_dst, b->addr.words, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
}

/* tun_nexthop finds the next hop toward d's backend for XDP: from this
 * CPU's halb_nexthops while it is fresh, else from the FIB, which it then
 * caches. It returns a BPF_FIB_LKUP_RET_ code; on success *out is the
 * entry. The route's MTU comes from a first lookup for the longest packet
 * (FRAG_NEEDED answers with it; success means any length fits), the MACs
 * from a second one that no length can fail; a next hop without a MAC yet
 * (NO_NEIGH) is not cached. */
static __always_inline int tun_nexthop(struct xdp_md *ctx, const struct decision *d,
				       struct nexthop **out)
{
	__u32 gen = halb_nexthop_gen;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct bpf_fib_lookup fib = {};
	struct nexthop *nh;
	__u16 mtu = 0xffff;
	int rc;

	nh = bpf_map_lookup_elem(&halb_nexthops, &d->backend_id);
	if (!nh)
		return BPF_FIB_LKUP_RET_NOT_FWDED;
	*out = nh;
	if (nh->ifindex && nh->gen == gen && now - nh->stamp < NEXTHOP_TTL_NS)
		return BPF_FIB_LKUP_RET_SUCCESS;

	nh->ifindex = 0;
	rc = tun_route(ctx, d, &fib, 0xffff);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		mtu = fib.mtu_result;
		__builtin_memset(&fib, 0, sizeof(fib));
		rc = tun_route(ctx, d, &fib, 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return rc;
	nh->stamp = now;
	nh->gen = gen;
	nh->mtu = mtu;
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	nh->ifindex = fib.ifindex;
	return rc;
}

/* tun_drop counts a TUN packet the FIB gave no next hop for. */
static __always_inline void tun_drop(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		count_drop(DROP_NO_NEIGH);
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		count_drop(DROP_TOO_BIG);
		break;
	default:
		count_drop(DROP_NO_ROUTE);
	}
}

/* tun_overflows tells whether d's packet is too long for the outer
 * header's 16-bit length: IPv4's counts itself, IPv6's only its payload,
 * the inner packet. Only a GSO packet on the skb path comes near. */
static __always_inline int tun_overflows(const struct decision *d)
{
	__u32 limit = d->family == FAMILY_IPV4 ? 0xffff - sizeof(struct iphdr) : 0xffff;

	return d->ip_len > limit;
}

/* csum_fold folds a 32-bit one's complement sum to the 16-bit checksum. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* encap writes the outer IP header at outer for the inner packet that
 * follows it, from the balancer's address to backend b. The outer header
 * takes the inner one's DSCP and ECN (RFC 2003 §3.1, RFC 2473 §5.1: the
 * traffic class and, for IPv6, the flow label, so that ECMP spreads the
 * flows), IPv4's DF bit and identification, and a TTL or hop limit of
 * TUN_TTL. data_end bounds the frame. */
static __always_inline int encap(void *outer, void *data_end, const struct decision *d)
{
	const struct backend *b = d->b;

	if (d->family == FAMILY_IPV4) {
		struct iphdr *oh = outer;
		struct iphdr *ih = (void *)(oh + 1);
		__u16 *w = outer;
		__u32 sum = 0;

		if ((void *)(ih + 1) > data_end)
			return -1;
		*(__u8 *)oh = 0x45;
		oh->tos = ih->tos;
		oh->tot_len = bpf_htons(sizeof(*oh) + d->ip_len);
		oh->id = ih->id;
		oh->frag_off = ih->frag_off & bpf_htons(IPV4_DF);
		oh->ttl = TUN_TTL;
		oh->protocol = IPPROTO_IPIP;
		oh->check = 0;
		oh->saddr = b->src.words[3];
		oh->daddr = b->addr.words[3];
		for (int i = 0; i < (int)(sizeof(*oh) / 2); i++)
			sum += w[i];
		oh->check = csum_fold(sum);
	} else {
		struct ipv6hdr *oh = outer;
		struct ipv6hdr *ih = (void *)(oh + 1);

		if ((void *)(ih + 1) > data_end)
			return -1;
		/* Version, traffic class and flow label: the inner's. */
		*(__be32 *)oh = *(__be32 *)ih;
		oh->payload_len = bpf_htons(d->ip_len);
		oh->nexthdr = IPPROTO_IPV6;
		oh->hop_limit = TUN_TTL;
		__builtin_memcpy(&oh->saddr, b->src.words, 16);
		__builtin_memcpy(&oh->daddr, b->addr.words, 16);
	}
	return 0;
}

/* xdp_xmit sends the frame out of ifindex: back out (XDP_TX) when it is
 * the ingress interface, else through halb_tx_ports. */
static __always_inline int xdp_xmit(struct xdp_md *ctx, __u32 ifindex)
{
	int action;

	if (ifindex == ctx->ingress_ifindex)
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

/* The IPv6 minimum link MTU (RFC 8200 §5). */
#define IPV6_MIN_MTU 1280
/* The most of the offending packet an ICMP error quotes: all that fits in
 * 576 bytes for IPv4 (RFC 1812 §4.3.2.3), in the minimum MTU for IPv6
 * (RFC 4443 §2.4 (c)). */
#define ICMP4_QUOTE_MAX (576 - sizeof(struct iphdr) - sizeof(struct icmp_err))
#define ICMP6_QUOTE_MAX (IPV6_MIN_MTU - sizeof(struct ipv6hdr) - sizeof(struct icmp_err))
#define ICMP_TTL 64             /* of an ICMP error halb sends */

/* halb_xdp_csum adds the bytes of the frame of ctx from off to its end to
 * the one's complement sum (RFC 1071), as 16-bit words with an odd last
 * byte padded with a zero, and returns it folded to 32 bits for csum_fold:
 * an ICMP error's ICMP header and quote, CSUM_MAX bytes at the most. It
 * reads four bytes at a time, in the host's byte order, which the sum does
 * not mind (RFC 1071 §2 (B), (C)).
 *
 * A global function: the verifier checks it once, not once for every way
 * the program comes to it, which with a loop of hundreds of passes would
 * cost it more than the rest of the program. */
#define CSUM_MAX (sizeof(struct icmp_err) + ICMP6_QUOTE_MAX)
__noinline __u32 halb_xdp_csum(struct xdp_md *ctx, __u32 off, __u32 sum)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 acc = sum;
	__u16 last = 0;
	__u32 *w;
	__u16 *h;

	/* The caller's offset is under 128; the bound is for the verifier. */
	if (off > 128)
		return sum;
	w = data + off;
	for (int i = 0; i < (int)(CSUM_MAX / 4); i++) {
		if ((void *)(w + 1) > data_end)
			break;
		acc += *w++;
	}
	h = (__u16 *)w;
	if ((void *)(h + 1) <= data_end)
		acc += *h++;
	if ((void *)h + 1 <= data_end) {
		*(__u8 *)&last = *(__u8 *)h;
		acc += last;
	}
	acc = (acc & 0xffffffff) + (acc >> 32);
	acc = (acc & 0xffffffff) + (acc >> 32);
	return acc;
}

/* xdp_too_big answers a TUN packet that does not fit the path to its
 * backend, mtu bytes with the outer header, as IPVS does: with an ICMP
 * "fragmentation needed" (RFC 792, RFC 1191 §4) or ICMPv6 "packet too big"
 * (RFC 4443 §3.2) from the VIP to the client, built in place of the packet
 * and sent back out of the interface it came in on (XDP_TX), so that the
 * client's path MTU discovery learns the tunnel's MTU. The Ethernet header
 * and VLAN tag stay, the MACs swapped; a new IP and ICMP header go in
 * front of the packet, which becomes the error's quote, cut to length.
 *
 * It does not answer, and the caller drops the packet and counts it as
 * DROP_TOO_BIG:
 *  - an ICMP error: no error about an error (RFC 1122 §3.2.2, RFC 4443
 *    §2.4 (e.1)).
 *  - IPv4 without DF. IPVS fragments such a packet's outer header (RFC
 *    2003 §5.1 allows it); XDP cannot fragment, and without DF the
 *    client may not do path MTU discovery at all. TCP stacks set DF.
 *  - IPv6 that fits the minimum MTU of 1280 bytes, which only a tunnel
 *    MTU under 1320 leaves too big: RFC 2473 §7.1 has the tunnel entry
 *    point fragment the outer packet, and a "packet too big" cannot name
 *    an MTU under 1280 (RFC 8201 §4). A larger packet is told the tunnel
 *    MTU or 1280, whichever is larger (RFC 2473 §7.1 (c)).
 *
 * There is no rate limit, which RFC 4443 §2.4 (f) asks of a node that
 * originates ICMPv6 errors: each answer takes the place of a larger packet
 * from the one client it goes to, and costs less than forwarding that
 * packet would have.
 *
 * It returns 0 when the frame is the answer, -1 when the frame is to be
 * dropped: it may be half rewritten then. */
static __always_inline int xdp_too_big(struct xdp_md *ctx, const struct decision *d, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off = d->l3_off;
	__u32 quote = d->ip_len;
	__u32 room, sum = 0;
	struct ethhdr *eth, *old;
	struct icmp_err *icmp;

	if (d->icmp)
		return -1;
	/* The parser takes one VLAN tag at most: l3_off is ETH_HLEN or 4
	 * more. The bound is for the verifier. */
	if (l3_off > ETH_HLEN + sizeof(struct vlan_hdr))
		return -1;
	if (d->family == FAMILY_IPV4) {
		struct iphdr *ih = data + l3_off;

		if ((void *)(ih + 1) > data_end || !(ih->frag_off & bpf_htons(IPV4_DF)))
			return -1;
		mtu -= sizeof(struct iphdr);
		room = sizeof(struct iphdr) + sizeof(struct icmp_err);
		if (quote > ICMP4_QUOTE_MAX)
			quote = ICMP4_QUOTE_MAX;
	} else {
		mtu -= sizeof(struct ipv6hdr);
		if (mtu < IPV6_MIN_MTU)
			mtu = IPV6_MIN_MTU;
		if (d->ip_len <= mtu)
			return -1;
		room = sizeof(struct ipv6hdr) + sizeof(struct icmp_err);
		if (quote > ICMP6_QUOTE_MAX)
			quote = ICMP6_QUOTE_MAX;
	}

	/* The frame's end: the quote's; Ethernet padding goes with the
	 * rest. The parser has checked that the packet is in the frame. */
	if (bpf_xdp_adjust_tail(ctx, (int)(l3_off + quote) - (int)d->len))
		return -1;
	if (bpf_xdp_adjust_head(ctx, -(int)room))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	old = data + room;
	if ((void *)old + ETH_HLEN + sizeof(struct vlan_hdr) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, old->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old->h_dest, ETH_ALEN);
	eth->h_proto = old->h_proto;
	if (l3_off != ETH_HLEN)
		__builtin_memcpy(eth + 1, old + 1, sizeof(struct vlan_hdr));

	if (d->family == FAMILY_IPV4) {
		struct iphdr *ip = data + l3_off;
		struct iphdr *ih = data + l3_off + room;
		__u16 *w = (__u16 *)ip;
		__u32 ipsum = 0;

		if ((void *)(ih + 1) > data_end)
			return -1;
		icmp = (void *)(ip + 1);
		*(__u8 *)ip = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(room + quote);
		/* DF and no identification: an atomic datagram (RFC 6864
		 * §4.1), of 576 bytes at the most. */
		ip->id = 0;
		ip->frag_off = bpf_htons(IPV4_DF);
		ip->ttl = ICMP_TTL;
		ip->protocol = IPPROTO_ICMP;
		ip->check = 0;
		ip->saddr = ih->daddr;
		ip->daddr = ih->saddr;
		for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
			ipsum += w[i];
		ip->check = csum_fold(ipsum);
		icmp->type = ICMP_DEST_UNREACH;
		icmp->code = ICMP_FRAG_NEEDED;
		icmp->checksum = 0;
		icmp->mtu = bpf_htonl(mtu & 0xffff); /* RFC 1191 §4: the low 16 bits */
	} else {
		struct ipv6hdr *ip = data + l3_off;
		struct ipv6hdr *ih = data + l3_off + room;
		__u16 *w = (__u16 *)&ip->saddr;

		if ((void *)(ih + 1) > data_end)
			return -1;
		icmp = (void *)(ip + 1);
		*(__be32 *)ip = bpf_htonl(0x60000000);
		ip->payload_len = bpf_htons(sizeof(*icmp) + quote);
		ip->nexthdr = IPPROTO_ICMPV6;
		ip->hop_limit = ICMP_TTL;
		ip->saddr = ih->daddr;
		ip->daddr = ih->saddr;
		icmp->type = ICMPV6_PKT_TOOBIG;
		icmp->code = 0;
		icmp->checksum = 0;
		icmp->mtu = bpf_htonl(mtu);
		/* The pseudo-header (RFC 8200 §8.1, RFC 4443 §2.3): the
		 * addresses, the length and the next header. */
		for (int i = 0; i < 16; i++)
			sum += w[i];
		sum += bpf_htons(sizeof(*icmp) + quote);
		sum += bpf_htons(IPPROTO_ICMPV6);
	}
	sum = halb_xdp_csum(ctx, l3_off + room - sizeof(*icmp), sum);
	icmp->checksum = csum_fold(sum);
	return 0;
}

/* xdp_tunnel encapsulates the frame for TUN and sends it to the next hop.
 * The next hop and the egress port come first, so that a frame that cannot go
 * is dropped as it came. */
static __always_inline int xdp_tunnel(struct xdp_md *ctx, struct decision *d)
{
	struct nexthop *nh = NULL;
	__u32 outer = outer_len(d);
	void *data, *data_end;
	struct ethhdr *eth;
	int rc, action;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return XDP_DROP;
	}
	if (tun_overflows(d)) {
		count_drop(DROP_TOO_BIG);
		return XDP_DROP;
	}
	rc = tun_nexthop(ctx, d, &nh);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || !nh) {
		tun_drop(rc);
		return XDP_DROP;
	}
	if (outer + d->ip_len > nh->mtu) {
		if (!xdp_too_big(ctx, d, nh->mtu)) {
			count_drop(DROP_TOO_BIG_ANSWERED);
			d->answered = 1;
			return XDP_TX;
		}
		count_drop(DROP_TOO_BIG);
		return XDP_DROP;
	}
	/* A redirect happens after the program returns: the frame can
	 * change until then. */
	action = xdp_xmit(ctx, nh->ifindex);
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
	if ((void *)(eth + 1) > data_end || encap(eth + 1, data_end, d)) {
		count_drop(DROP_ENCAP);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	eth->h_proto = d->family == FAMILY_IPV4 ? bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);
	return action;
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

	switch (balance(data, data_end, data_end - data, ctx->ingress_ifindex, 0, &d)) {
	case VERDICT_PASS:
		return XDP_PASS;
	case VERDICT_DROP:
		return XDP_DROP;
	case VERDICT_TUNNEL:
		action = xdp_tunnel(ctx, &d);
		break;
	default:
		action = xdp_xmit(ctx, d.b->ifindex);
	}
	if (action != XDP_DROP && !d.answered)
		forwarded(&d);
	return action;
}

/* The most of a frame the parser reads: Ethernet, a VLAN tag, IPv4 with
 * the longest options, and an ICMP header quoting an IPv4 header and 8
 * bytes of TCP or UDP (a TCP header alone is shorter). */
#define HALB_PARSE_LEN (ETH_HLEN + 4 + 60 + 8 + 20 + 8)

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
	if (d->l3_off != ETH_HLEN || bpf_skb_adjust_room(skb, outer_len(d), BPF_ADJ_ROOM_MAC, flags))
		goto fail;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end || encap(eth + 1, data_end, d))
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
	__u32 outer = outer_len(d);
	void *data, *data_end;
	struct ethhdr *eth;
	int rc;

	if (d->b->family != d->family) {
		count_drop(DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}
	if (tun_overflows(d)) {
		count_drop(DROP_TOO_BIG);
		return TC_ACT_SHOT;
	}
	/* A GSO packet is checked against the MTU segment by segment where
	 * it leaves (tot_len 0 lets it through); any other by its length
	 * with the outer header. */
	rc = tun_route(skb, d, &fib, skb->gso_segs > 1 ? 0 : outer + d->ip_len);
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
	default:
		if (!tc_egress_ok(skb, d.b->ifindex))
			return TC_ACT_SHOT;
		action = bpf_redirect(d.b->ifindex, 0);
	}
	if (action != TC_ACT_SHOT)
		forwarded(&d);
	return action;
}
