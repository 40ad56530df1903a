/* halb_icmp.h: the ICMP "fragmentation needed" and ICMPv6 "packet too big"
 * that XDP sends a client in place of a TUN packet that does not fit the
 * tunnel, so that the client's path MTU discovery learns the tunnel's MTU
 * (RFC 1191, RFC 8201).
 *
 * The other way, such an error to a VIP about a backend's packet is read
 * by halb_parse.h (parse_icmp4, parse_icmp6) and sent on to the flow's
 * backend like any packet of the flow.
 */
#ifndef HALB_ICMP_H
#define HALB_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "halb_csum.h"
#include "halb_parse.h"

/* The IPv6 minimum link MTU (RFC 8200 §5). */
#define IPV6_MIN_MTU 1280
/* The most of the offending packet an ICMP error quotes: all that fits in
 * 576 bytes for IPv4 (RFC 1812 §4.3.2.3), in the minimum MTU for IPv6
 * (RFC 4443 §2.4 (c)). */
#define ICMP4_QUOTE_MAX (576 - sizeof(struct iphdr) - sizeof(struct icmp_err))
#define ICMP6_QUOTE_MAX (IPV6_MIN_MTU - sizeof(struct ipv6hdr) - sizeof(struct icmp_err))
#define ICMP_TTL 64             /* of an ICMP error halb sends */

/* halb_xdp_csum sums the longest ICMP error. */
_Static_assert(sizeof(struct icmp_err) + ICMP6_QUOTE_MAX <= CSUM_MAX,
	       "halb_xdp_csum stops short of the longest ICMPv6 error");

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
 * DROP_TOO_BIG (the caller does not ask about an ICMP error: no error
 * about an error, RFC 1122 §3.2.2, RFC 4443 §2.4 (e.1)):
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
 * len is the frame's length, and the packet of ip_len bytes starts at
 * l3_off in it. It returns 0 when the frame is the answer, -1 when the
 * frame is to be dropped: it may be half rewritten then. */
static __always_inline int xdp_too_big(struct xdp_md *ctx, __u32 len, __u8 family,
				       __u32 l3_off, __u32 ip_len, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 quote = ip_len;
	__u32 room, sum = 0;
	struct ethhdr *eth, *old;
	struct icmp_err *icmp;

	/* The parser takes one VLAN tag at most: l3_off is ETH_HLEN or 4
	 * more. The bound is for the verifier. */
	if (l3_off > ETH_HLEN + sizeof(struct vlan_hdr))
		return -1;
	if (family == FAMILY_IPV4) {
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
		if (ip_len <= mtu)
			return -1;
		room = sizeof(struct ipv6hdr) + sizeof(struct icmp_err);
		if (quote > ICMP6_QUOTE_MAX)
			quote = ICMP6_QUOTE_MAX;
	}

	/* The frame's end: the quote's; Ethernet padding goes with the
	 * rest. The parser has checked that the packet is in the frame. */
	if (bpf_xdp_adjust_tail(ctx, (int)(l3_off + quote) - (int)len))
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

	if (family == FAMILY_IPV4) {
		struct iphdr *ip = data + l3_off;
		struct iphdr *ih = data + l3_off + room;

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
		ip->check = csum_ipv4_header(ip);
		icmp->type = ICMP_DEST_UNREACH;
		icmp->code = ICMP_FRAG_NEEDED;
		icmp->checksum = 0;
		icmp->mtu = bpf_htonl(mtu & 0xffff); /* RFC 1191 §4: the low 16 bits */
	} else {
		struct ipv6hdr *ip = data + l3_off;
		struct ipv6hdr *ih = data + l3_off + room;

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
		sum = csum_add16(&ip->saddr, 16, 0);
		sum += bpf_htons(sizeof(*icmp) + quote);
		sum += bpf_htons(IPPROTO_ICMPV6);
	}
	sum = halb_xdp_csum(ctx, l3_off + room - sizeof(*icmp), sum);
	icmp->checksum = csum_fold(sum);
	return 0;
}

#endif /* HALB_ICMP_H */
