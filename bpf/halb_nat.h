/* halb_nat.h: what forward: nat does to a packet: the destination of a
 * client's packet rewritten to its backend's address and port, the source
 * of the backend's reply rewritten back to the VIP's, and the ICMP errors
 * about either translated with the packet they quote. Every checksum over
 * a rewritten byte is updated incrementally (RFC 1624), never summed anew:
 * the cost does not grow with the packet.
 *
 * Which packets are translated, and where they go after, is halb_lb.c's
 * (balance, xdp_nat, xdp_nat_reply and their tc twins). A reply finds its
 * service through halb_nat_replies by its source address, port and
 * protocol, without per-flow state (halb.h, struct nat_reply, says why
 * none is needed).
 *
 * forward: fullnat rewrites both ends: a client's packet gets its
 * backend's address and port as destination and the balancer's address
 * and a port of the pool as source (snat_port), a reply the reverse; each
 * is two translations, one per end, that compose (the checksum updates
 * are incremental). Its replies need per-flow state (halb_maps.h,
 * halb_fnat, says why), found by fnat_of.
 *
 * The uapi and libbpf headers only, as halb_lb.c.
 */
#ifndef HALB_NAT_H
#define HALB_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "halb_csum.h"
#include "halb_maps.h"
#include "halb_parse.h"

/* One translation: the address and port that take the place of the
 * packet's destination (dst, a client's packet to its backend) or source
 * (a backend's reply, back to the VIP). */
struct nat_op {
	const union addr *to;
	__u16 port; /* host byte order */
	__u8 dst;
};

/* Where a packet to translate is, as the parser found it. */
struct nat_pkt {
	__u32 ip_len;  /* the IP packet's length */
	__u16 l3_off;  /* the IP header's offset in the frame */
	__u16 l4_off;  /* the TCP, UDP or ICMP header's */
	__u8 family;   /* enum family */
	__u8 proto;    /* TCP or UDP: the packet's, or the quoted one's */
	__u8 icmp;     /* an ICMP error quoting the flow (PKT_ICMP_*) */
};

/* nat_reply_of is the translation of a backend's packet whose flow (as
 * the parser read it: for an ICMP error, the packet it quotes, turned
 * around) starts at a NAT backend's address and port, or NULL. The caller
 * asks only when the byte filter halb_nat_last lets the source through,
 * which spares everyone else the key and the hash lookup. */
static __always_inline struct nat_reply *nat_reply_of(const struct flow *flow)
{
	struct backend_key key = {
		.addr = flow->saddr,
		.port = flow->sport,
		.proto = flow->proto,
		.family = flow->family,
	};

	return bpf_map_lookup_elem(&halb_nat_replies, &key);
}

/* nat_backend_addr tells whether addr is a NAT backend's address: a new
 * flow from there to a NAT service is a backend's own (hairpin). */
static __always_inline int nat_backend_addr(const union addr *addr, enum family family)
{
	struct backend_key key = { .addr = *addr, .family = family };

	return bpf_map_lookup_elem(&halb_nat_replies, &key) != NULL;
}

/* The idle time after which a full NAT flow's source port may go to
 * another flow whose hash meets it: two minutes, as long as a closed TCP
 * connection's 4-tuple may linger in TIME_WAIT (RFC 9293 §3.4.2, 2 MSL)
 * and as Linux's conntrack keeps one. */
#define HALB_SNAT_IDLE_NS (120ULL * 1000000000ULL)

/* How many ports of the pool a new flow tries, from the one its hash
 * names: a few, so that a collision costs a bounded number of lookups. */
#define HALB_SNAT_PROBES 8

/* fnat_of is the full NAT flow that a backend's packet (flow, as the
 * parser read it: for an ICMP error, the packet it quotes, turned around)
 * belongs to, or NULL: then the packet is not a mapped reply, and goes to
 * the kernel as it came (the node's own connections to the backend
 * among them). */
static __always_inline struct fnat_flow *fnat_of(const struct flow *flow)
{
	struct fnat_key key = {
		.backend = flow->saddr,
		.snat = flow->daddr,
		.backend_port = flow->sport,
		.snat_port = flow->dport,
		.proto = flow->proto,
		.family = flow->family,
	};
	struct fnat_flow *f = bpf_map_lookup_elem(&halb_fnat, &key);
	__u64 now;

	if (f) {
		now = coarse_ns();
		if (now - f->seen > 1000000000ULL)
			f->seen = now; /* the replies keep the port the flow's */
	}
	return f;
}

/* fnat_same tells whether f is the flow from client and sport to vip and
 * dport. */
static __always_inline int fnat_same(const struct fnat_flow *f, const struct flow *flow)
{
	const __u32 *c = f->client.words, *v = f->rev.vip.words;
	const __u32 *s = flow->saddr.words, *d = flow->daddr.words;

	return c[0] == s[0] && c[1] == s[1] && c[2] == s[2] && c[3] == s[3] &&
	       v[0] == d[0] && v[1] == d[1] && v[2] == d[2] && v[3] == d[3] &&
	       f->client_port == flow->sport && f->rev.port == flow->dport;
}

/* fnat_forget deletes the halb_ct entry of the flow that held f's port
 * until now, which f is about to go to another: its next packet is then
 * scheduled again and given another port, rather than sent with one
 * that is another flow's. */
static __always_inline void fnat_forget(const struct fnat_flow *f, const struct flow *now)
{
	struct flow old = {
		.saddr = f->client,
		.daddr = f->rev.vip,
		.sport = f->client_port,
		.dport = f->rev.port,
		.proto = now->proto,
		.family = now->family,
	};

	bpf_map_delete_elem(&halb_ct, &old);
}

/* snat_port is the source port of full NAT flow (client to VIP) toward
 * backend b (id), from the pool: the port its hash names, or one of the
 * next HALB_SNAT_PROBES - 1 when a live flow holds that one. A port held
 * by this flow is its own; a free one, or one idle for HALB_SNAT_IDLE_NS,
 * becomes its own when create (a packet that opens or carries the flow,
 * not an ICMP error about it). 0: none. Derived from the hash, not drawn
 * at random, so that the node that takes over after a failover gives the
 * flow the port the backend knows it by; a flow that had to probe may get
 * another one there, and its connection is lost. */
static __always_inline __u16 snat_port(const struct flow *flow, const struct backend *b,
				       __u32 id, __u32 hash, int create)
{
	__u32 first = halb_snat_port_first, n = halb_snat_port_count;
	__u64 now = coarse_ns();
	struct fnat_key key = {
		.backend = b->addr,
		.snat = b->src,
		.backend_port = b->port,
		.proto = flow->proto,
		.family = flow->family,
	};
	struct fnat_flow *f, nf = {
		.rev = {
			.vip = flow->daddr,
			.port = flow->dport,
			.flags = NAT_REPLY_F_FULLNAT,
			.service = b->service,
			.backend_id = id,
		},
		.client = flow->saddr,
		.client_port = flow->sport,
		.seen = now,
	};

	if (n == 0 || n > 65536)
		return 0;
	for (int i = 0; i < HALB_SNAT_PROBES; i++) {
		key.snat_port = first + (hash + i) % n;
		f = bpf_map_lookup_elem(&halb_fnat, &key);
		if (f && fnat_same(f, flow))
			return key.snat_port;
		if (!create || (f && now - f->seen < HALB_SNAT_IDLE_NS))
			continue;
		if (f)
			fnat_forget(f, flow);
		if (!bpf_map_update_elem(&halb_fnat, &key, &nf, f ? BPF_EXIST : BPF_NOEXIST))
			return key.snat_port;
	}
	return 0;
}

/* nat_addr writes to over the address at a, 4 or 16 bytes by family, and
 * returns what that changed of a sum over it. */
static __always_inline __u32 nat_addr(__be32 *a, const union addr *to, __u8 family)
{
	__u32 diff;

	if (family == FAMILY_IPV4) {
		diff = csum_diff32(a[0], to->words[3]);
		a[0] = to->words[3];
		return diff;
	}
	diff = csum_diff32(a[0], to->words[0]) + csum_diff32(a[1], to->words[1]) +
	       csum_diff32(a[2], to->words[2]) + csum_diff32(a[3], to->words[3]);
	a[0] = to->words[0];
	a[1] = to->words[1];
	a[2] = to->words[2];
	a[3] = to->words[3];
	return diff;
}

/* nat_ip rewrites the destination (op->dst) or source address of the IP
 * header at l3 to op->to, and so does op2 (full NAT's other end; NULL:
 * none), and IPv4's header checksum once for both. *pseudo gets what that
 * changed of the transport's pseudo-header (RFC 9293 §3.1, RFC 768, RFC
 * 8200 §8.1), *bytes what it changed of a sum over the header's bytes:
 * an ICMP error's checksum covers a quoted header. */
static __always_inline int nat_ip(void *l3, void *data_end, __u8 family, const struct nat_op *op,
				  const struct nat_op *op2, __u32 *pseudo, __u32 *bytes)
{
	if (family == FAMILY_IPV4) {
		struct iphdr *ip = l3;
		__sum16 old;

		if ((void *)(ip + 1) > data_end)
			return -1;
		*pseudo = nat_addr(op->dst ? &ip->daddr : &ip->saddr, op->to, family);
		if (op2)
			*pseudo += nat_addr(op2->dst ? &ip->daddr : &ip->saddr, op2->to, family);
		old = ip->check;
		ip->check = csum_update(old, *pseudo);
		*bytes += *pseudo + csum_diff16(old, ip->check);
		return 0;
	}
	struct ipv6hdr *ip6 = l3;
	__be32 *daddr = ip6->daddr.in6_u.u6_addr32, *saddr = ip6->saddr.in6_u.u6_addr32;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	*pseudo = nat_addr(op->dst ? daddr : saddr, op->to, family);
	if (op2)
		*pseudo += nat_addr(op2->dst ? daddr : saddr, op2->to, family);
	*bytes += *pseudo;
	return 0;
}

/* nat_port writes port over the destination (dst) or source port of
 * ports, a TCP or UDP header's first two fields, and returns what that
 * changed of a sum over them. */
static __always_inline __u32 nat_port(__be16 *ports, __u8 dst, __u16 port)
{
	__be16 *p = dst ? &ports[1] : &ports[0], to = bpf_htons(port);
	__u32 diff = csum_diff16(*p, to);

	*p = to;
	return diff;
}

/* nat_l4 rewrites the destination (op->dst) or source port of the TCP or
 * UDP header at l4 to op->port, and so does op2 (NULL: none), and its
 * checksum once by the ports and pseudo, the pseudo-header's change;
 * *bytes gets what that changed of a sum over the header. avail is how
 * much of the header there is: an ICMP error may quote only 8 bytes of
 * it, and a TCP checksum out of the quote stays as it is (Linux's NAT
 * does alike). UDP over IPv4 without a checksum (0) keeps none (RFC 768),
 * and a computed 0 goes as all ones. */
static __always_inline int nat_l4(void *l4, void *data_end, __u8 proto, const struct nat_op *op,
				  const struct nat_op *op2, __u32 pseudo, __u32 avail, __u32 *bytes)
{
	__be16 *ports = l4;
	__sum16 *check, old;
	__u32 diff;

	if ((void *)(ports + 2) > data_end)
		return -1;
	diff = nat_port(ports, op->dst, op->port);
	if (op2)
		diff += nat_port(ports, op2->dst, op2->port);
	*bytes += diff;
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || avail < sizeof(*uh))
			return 0;
		check = &uh->check;
		if (*check == 0)
			return 0;
	} else {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || avail < sizeof(*th))
			return 0;
		check = &th->check;
	}
	old = *check;
	*check = csum_update(old, pseudo + diff);
	if (proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	*bytes += csum_diff16(old, *check);
	return 0;
}

/* nat_icmp translates an ICMP error at l4 (its IP header at l3) about a NAT
 * flow: the packet it quotes the opposite way from the error itself, as
 * the quote went the opposite way. A client's error about a reply (op->dst)
 * goes to the backend: the outer destination and the quote's source become
 * the backend's. A backend's error about a client's packet goes to the
 * client: the quote's destination becomes the VIP's, and so does the
 * outer source when the backend sent the error, but not when a router
 * between it and the balancer did. The ICMP checksum follows the quote
 * (RFC 792, RFC 4443 §2.3), and ICMPv6's the pseudo-header too. */
static __always_inline int nat_icmp(void *l3, void *l4, void *data_end, const struct nat_pkt *p,
				    const struct nat_op *op)
{
	__u32 hdr = p->family == FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 pseudo = 0, outer = 0, bytes = 0, quoted, head;
	struct icmp_err *icmp = l4;
	void *inner = icmp + 1;
	int outer_too = op->dst;
	/* The quote went the other way. */
	struct nat_op quote = { .to = op->to, .port = op->port, .dst = !op->dst };

	if ((void *)inner + hdr > data_end)
		return -1;
	if (!op->dst) {
		/* The quote's destination is the backend's address. */
		if (p->family == FAMILY_IPV4) {
			struct iphdr *ip = l3;

			if ((void *)(ip + 1) > data_end)
				return -1;
			outer_too = ip->saddr == ((struct iphdr *)inner)->daddr;
		} else {
			struct ipv6hdr *ip = l3;
			__u32 *a = ip->saddr.in6_u.u6_addr32;
			__u32 *b = ((struct ipv6hdr *)inner)->daddr.in6_u.u6_addr32;

			/* inner's bound again, by its family: the verifier
			 * may not tie hdr to it. */
			if ((void *)(ip + 1) > data_end || (void *)inner + sizeof(*ip) > data_end)
				return -1;
			outer_too = a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
		}
	}
	if (outer_too && nat_ip(l3, data_end, p->family, op, NULL, &pseudo, &outer))
		return -1;
	if (p->family == FAMILY_IPV4)
		pseudo = 0; /* ICMP, unlike ICMPv6, has no pseudo-header */
	if (nat_ip(inner, data_end, p->family, &quote, NULL, &quoted, &bytes))
		return -1;
	/* How much of the quoted transport header the error holds. */
	head = (p->l4_off - p->l3_off) + sizeof(*icmp) + hdr;
	if (nat_l4(inner + hdr, data_end, p->proto, &quote, NULL, quoted,
		   p->ip_len > head ? p->ip_len - head : 0, &bytes))
		return -1;
	if ((void *)(icmp + 1) > data_end)
		return -1;
	icmp->checksum = csum_update(icmp->checksum, pseudo + bytes);
	return 0;
}

/* nat_rewrite translates the packet p in the frame from data to data_end
 * as op says, and op2 (full NAT's other end; NULL: none). A TCP or UDP
 * packet takes both in one pass, each checksum updated once by the sum of
 * their changes; an ICMP error, one after the other. It returns -1 when a
 * header is not where the parser found it, which does not happen; the
 * frame may be half rewritten then. */
static __always_inline int nat_rewrite(void *data, void *data_end, const struct nat_pkt *p,
				       const struct nat_op *op, const struct nat_op *op2)
{
	__u64 l3_off = p->l3_off, l4_off = p->l4_off;
	__u32 pseudo = 0, bytes = 0;
	void *l3, *l4;

	/* Ethernet and one VLAN tag; an IPv4 header with the longest
	 * options. The bounds are for the verifier, and the empty asm makes
	 * the offsets values of their own, which the check bounds and the
	 * pointers are made from: without it, clang may take p's fields
	 * again after the check, and the verifier would not know those
	 * bounded. */
	asm volatile("" : "+r"(l3_off), "+r"(l4_off));
	if (l3_off > ETH_HLEN + sizeof(struct vlan_hdr) || l4_off > l3_off + 60)
		return -1;
	l3 = data + l3_off;
	l4 = data + l4_off;
	if (p->icmp)
		return nat_icmp(l3, l4, data_end, p, op) || (op2 && nat_icmp(l3, l4, data_end, p, op2));
	if (nat_ip(l3, data_end, p->family, op, op2, &pseudo, &bytes))
		return -1;
	return nat_l4(l4, data_end, p->proto, op, op2, pseudo, 0xffff, &bytes);
}

#endif /* HALB_NAT_H */
