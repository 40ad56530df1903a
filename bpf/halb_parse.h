/* halb_parse.h: what halb_lb.c reads of a frame (struct packet), and the
 * checks of what it reads.
 *
 * parse reads the Ethernet header, one VLAN tag, the IPv4 or IPv6 header
 * and the TCP or UDP ports, or the flow an ICMP "fragmentation needed" or
 * ICMPv6 "packet too big" quotes. It checks each header against the frame
 * and the next where it reads their fields anyway; halb_checks.h says which
 * source addresses no client has. Whether a broken packet is dropped is
 * not the parser's to say: it reports why (PARSE_DROP, pkt->drop), and the
 * caller drops it only when it is to a VIP of this node.
 *
 * It also defines the wire formats that none of the uapi headers halb may
 * include does (the VLAN tag, the ICMP error header), for the parser and
 * for the ICMP errors halb_icmp.h writes.
 */
#ifndef HALB_PARSE_H
#define HALB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "halb_checks.h"

/* unlikely marks a check that only a broken or forged packet fails. */
#define unlikely(x) __builtin_expect(!!(x), 0)

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
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMPV6_DEST_UNREACH 1 /* RFC 4443 §3.1 */
#define ICMPV6_PORT_UNREACH 4
#define ICMPV6_PKT_TOOBIG 2 /* RFC 4443 §3.2 */

/* What kind of ICMP error a packet is (struct packet's icmp). */
#define PKT_ICMP_TOO_BIG 1 /* fragmentation needed, packet too big: every
			    * forward mode sends it to the flow's backend */
#define PKT_ICMP_UNREACH 2 /* port unreachable: only NAT, which must
			    * translate it, takes it; the rest pass it */

#define IPV4_FRAG_OFFSET 0x1fff /* the fragment offset bits of frag_off */
#define IPV4_DF 0x4000          /* don't fragment */
#define TCP_DOFF_BYTE 12        /* the data offset, in its high 4 bits */
#define TCP_FLAGS_BYTE 13       /* CWR ECE URG ACK PSH RST SYN FIN */
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_SYN 0x02

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
	__u16 l4_off;     /* where the TCP, UDP or ICMP header starts */
	__u16 vlan;       /* the VLAN id of the frame's tag, 0 if none */
	__u32 ip_len;     /* the IP packet's length, by its header: IPv6's
			   * header and payload can exceed 16 bits */
	__u8 syn;         /* a TCP SYN without ACK: a connection starts */
	__u8 icmp;        /* an ICMP error about flow (PKT_ICMP_*); flow is
			   * the quoted packet's, turned around */
};

/* eth_proto is where the frame at eth holds its EtherType, as a 16-bit
 * word: uapi's struct ethhdr is packed, and through its member clang
 * reads and writes the field a byte at a time. */
static __always_inline __be16 *eth_proto(struct ethhdr *eth)
{
	return &((__be16 *)eth)[6];
}

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

/* parse_icmp4 reads the flow of an ICMP "fragmentation needed" or "port
 * unreachable" at l4: the packet it quotes went from the error's
 * destination (a VIP, or a client that a NAT backend's reply went to) to
 * somewhere else, and flow becomes that packet turned around: a client's
 * packet to the VIP, or a NAT backend's reply. The IPv4 addresses are in
 * flow already. */
static __always_inline enum parse_result parse_icmp4(void *l4, void *data_end,
						     struct packet *pkt)
{
	struct icmp_err *icmp = l4;
	struct iphdr *inner = (void *)(icmp + 1);
	__u8 version_ihl;

	if ((void *)(inner + 1) > data_end)
		return PARSE_PASS;
	if (icmp->type != ICMP_DEST_UNREACH ||
	    (icmp->code != ICMP_FRAG_NEEDED && icmp->code != ICMP_PORT_UNREACH))
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
	pkt->icmp = icmp->code == ICMP_FRAG_NEEDED ? PKT_ICMP_TOO_BIG : PKT_ICMP_UNREACH;
	return PARSE_OK;
}

/* parse_icmp6 is parse_icmp4 for an ICMPv6 "packet too big" or "port
 * unreachable". */
static __always_inline enum parse_result parse_icmp6(void *l4, void *data_end,
						     struct packet *pkt)
{
	struct icmp_err *icmp = l4;
	struct ipv6hdr *inner = (void *)(icmp + 1);

	if ((void *)(inner + 1) > data_end)
		return PARSE_PASS;
	if (icmp->type != ICMPV6_PKT_TOOBIG &&
	    (icmp->type != ICMPV6_DEST_UNREACH || icmp->code != ICMPV6_PORT_UNREACH))
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
	pkt->icmp = icmp->type == ICMPV6_PKT_TOOBIG ? PKT_ICMP_TOO_BIG : PKT_ICMP_UNREACH;
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
	__be16 proto = *eth_proto(eth);
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
	 * before ip_rcv, which would: DR and TUN change no byte of the IP
	 * packet (DR rewrites the MACs, TUN puts an outer header in front),
	 * NAT updates the checksums incrementally, which keeps a damaged
	 * one damaged (RFC 1624), and the backend's ip_rcv verifies it and
	 * drops a damaged one, counted in
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
		if (unlikely(version_ihl >> 4 != 4 || ihl < 5))
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
		if (unlikely(pkt->ip_len > l3_len || pkt->ip_len < hdr_len + 8))
			return drop_as(pkt, DROP_IP_LENGTH);
		if (unlikely(bad_source4(iph->saddr)))
			return drop_as(pkt, DROP_BAD_SOURCE);
		l4proto = iph->protocol;
		l4 = l3 + hdr_len;
		pkt->l4_off = pkt->l3_off + hdr_len;
		if (l4proto == IPPROTO_ICMP)
			return parse_icmp4(l4, data_end, pkt);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) > data_end)
			return PARSE_PASS;
		pkt->flow.family = FAMILY_IPV6;
		addr_from_ipv6(&pkt->flow.saddr, &ip6h->saddr);
		addr_from_ipv6(&pkt->flow.daddr, &ip6h->daddr);
		if (unlikely(*(__u8 *)ip6h >> 4 != 6))
			return drop_as(pkt, DROP_IP_HEADER);
		hdr_len = sizeof(*ip6h);
		pkt->ip_len = hdr_len + bpf_ntohs(ip6h->payload_len);
		/* As for IPv4. A jumbogram's payload length is 0 (RFC 2675):
		 * not for halb. */
		if (unlikely(pkt->ip_len > l3_len || pkt->ip_len < hdr_len + 8))
			return drop_as(pkt, DROP_IP_LENGTH);
		if (unlikely(bad_source6(pkt->flow.saddr.words)))
			return drop_as(pkt, DROP_BAD_SOURCE);
		l4proto = ip6h->nexthdr;
		l4 = ip6h + 1;
		pkt->l4_off = pkt->l3_off + hdr_len;
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
		if (unlikely(pkt->ip_len < hdr_len + sizeof(*th)))
			return drop_as(pkt, DROP_TCP_HEADER);
		if (unlikely((void *)(th + 1) > data_end))
			return drop_as(pkt, DROP_MALFORMED);
		doff = ((__u8 *)th)[TCP_DOFF_BYTE] >> 4;
		if (unlikely(doff < 5 || doff * 4 > pkt->ip_len - hdr_len))
			return drop_as(pkt, DROP_TCP_HEADER);
		pkt->flow.sport = bpf_ntohs(th->source);
		pkt->flow.dport = bpf_ntohs(th->dest);
		flags = ((__u8 *)th)[TCP_FLAGS_BYTE];
		pkt->syn = (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		__u32 ulen;

		if (unlikely((void *)(uh + 1) > data_end))
			return drop_as(pkt, DROP_MALFORMED);
		/* RFC 768: the length counts the header. A datagram shorter
		 * than the IP payload is allowed (what follows is not UDP's),
		 * a longer one is not there. */
		ulen = bpf_ntohs(uh->len);
		if (unlikely(ulen < sizeof(*uh) || ulen > pkt->ip_len - hdr_len))
			return drop_as(pkt, DROP_UDP_HEADER);
		pkt->flow.sport = bpf_ntohs(uh->source);
		pkt->flow.dport = bpf_ntohs(uh->dest);
	} else {
		return PARSE_PASS;
	}
	pkt->flow.proto = l4proto;
	return PARSE_OK;
}

#endif /* HALB_PARSE_H */
