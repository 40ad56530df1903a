/* halb_tunnel.h: what forward: tun adds to a packet's path, the next hop
 * toward its backend and the outer header.
 *
 * A TUN packet goes, unchanged, inside an outer IPv4 (IPIP, RFC 2003) or
 * IPv6 (IP6IP6, RFC 2473) header from the balancer's address to the
 * backend's, to the next hop the kernel's FIB names (bpf_fib_lookup): the
 * backend may be routed, off the balancer's links. The FIB costs XDP more
 * than the rest of the packet's path, so XDP keeps its answer per CPU and
 * backend (halb_nexthops) until the loader reports a route, neighbour or
 * backend change, or a second has passed. When the neighbour table lacks
 * the next hop's MAC, XDP drops the packet (DROP_NO_NEIGH) while the
 * loader has the kernel resolve it; tc asks the FIB every time and hands
 * such a packet to the kernel's neighbour layer (bpf_redirect_neigh),
 * which resolves the MAC and sends it. Passing it to the stack would not
 * do: the stack drops a packet that arrives with one of its own addresses
 * as the source (a martian), and the original packet, to a VIP the
 * balancer holds, would be answered by the balancer itself.
 *
 * halb_lb.c's xdp_tunnel and tc_tunnel put these together for each hook.
 */
#ifndef HALB_TUNNEL_H
#define HALB_TUNNEL_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "halb.h"
#include "halb_csum.h"
#include "halb_maps.h"
#include "halb_parse.h"

/* No uapi header a BPF target can include defines the address families. */
#define HALB_AF_INET 2
#define HALB_AF_INET6 10

#define TUN_TTL 64 /* of the outer header */

/* How long a cached next hop is trusted without a bump: the bound on a
 * stale one while no loader runs to bump halb_nexthop_gen (halb killed,
 * the program still attached). */
#define NEXTHOP_TTL_NS 1000000000ULL

/* outer_len is the length of a TUN packet's outer header, by family. */
static __always_inline __u32 outer_len(__u8 family)
{
	return family == FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

/* tun_overflows tells whether a packet of ip_len bytes is too long for the
 * outer header's 16-bit length: IPv4's counts itself, IPv6's only its
 * payload, the inner packet. Only a GSO packet on the skb path comes near. */
static __always_inline int tun_overflows(__u8 family, __u32 ip_len)
{
	__u32 limit = family == FAMILY_IPV4 ? 0xffff - sizeof(struct iphdr) : 0xffff;

	return ip_len > limit;
}

/* tun_route asks the FIB for the next hop from the balancer's address to
 * backend b, for a packet of family, as the balancer's own packet would go
 * (tot_len 0: the caller checks the MTU itself). On success fib names the
 * egress interface and the MACs. A NAT backend's next hop is found alike,
 * for its transport protocol (nat, IPPROTO_TCP or IPPROTO_UDP) rather than the tunnel's. */
static __always_inline int tun_route(void *ctx, const struct backend *b, __u8 family,
				     struct bpf_fib_lookup *fib, __u16 tot_len, __u8 nat)
{
	fib->ifindex = b->ifindex;
	fib->tot_len = tot_len;
	if (family == FAMILY_IPV4) {
		fib->family = HALB_AF_INET;
		fib->l4_protocol = nat ? nat : IPPROTO_IPIP;
		fib->ipv4_src = b->src.words[3];
		fib->ipv4_dst = b->addr.words[3];
	} else {
		fib->family = HALB_AF_INET6;
		fib->l4_protocol = nat ? nat : IPPROTO_IPV6;
		__builtin_memcpy(fib->ipv6_src, b->src.words, 16);
		__builtin_memcpy(fib->ipv6_dst, b->addr.words, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
}

/* tun_refill asks the FIB for the next hop of backend b (as
 * tun_nexthop) and keeps it in nh, this CPU's entry, stamped with gen and
 * now: the cold half of tun_nexthop, apart so that a fresh entry's
 * packets do not zero a bpf_fib_lookup they never use. */
static __always_inline int tun_refill(struct xdp_md *ctx, const struct backend *b, __u8 family,
				      __u8 nat, struct nexthop *nh, __u32 gen, __u64 now)
{
	struct bpf_fib_lookup fib = {};
	__u16 mtu = 0xffff;
	int rc;

	nh->ifindex = 0;
	rc = tun_route(ctx, b, family, &fib, 0xffff, nat);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		mtu = fib.mtu_result;
		__builtin_memset(&fib, 0, sizeof(fib));
		rc = tun_route(ctx, b, family, &fib, 0, nat);
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

/* tun_nexthop finds the next hop toward backend id, whose record is b, for
 * XDP (nat: for a NAT backend, as tun_route): from this CPU's halb_nexthops while it is fresh, else from the FIB,
 * which it then caches. It returns a BPF_FIB_LKUP_RET_ code; on success
 * *out is the entry. The route's MTU comes from a first lookup for the
 * longest packet (FRAG_NEEDED answers with it; success means any length
 * fits), the MACs from a second one that no length can fail; a next hop
 * without a MAC yet (NO_NEIGH) is not cached. */
static __always_inline int tun_nexthop(struct xdp_md *ctx, const struct backend *b, __u32 id,
				       __u8 family, __u8 nat, struct nexthop **out)
{
	__u32 gen = halb_nexthop_gen;
	__u64 now = coarse_ns();
	struct nexthop *nh;

	nh = bpf_map_lookup_elem(&halb_nexthops, &id);
	if (!nh)
		return BPF_FIB_LKUP_RET_NOT_FWDED;
	*out = nh;
	if (nh->ifindex && nh->gen == gen && now - nh->stamp < NEXTHOP_TTL_NS)
		return BPF_FIB_LKUP_RET_SUCCESS;
	return tun_refill(ctx, b, family, nat, nh, gen, now);
}

/* tun_drop counts a TUN or NAT packet the FIB gave no next hop for. */
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

/* encap writes the outer IP header at outer for the inner packet of
 * ip_len bytes that follows it, from the balancer's address to backend b.
 * The outer header takes the inner one's DSCP and ECN (RFC 2003 §3.1, RFC
 * 2473 §5.1: the traffic class and, for IPv6, the flow label, so that ECMP
 * spreads the flows), IPv4's DF bit and identification, and a TTL or hop
 * limit of TUN_TTL. data_end bounds the frame. */
static __always_inline int encap(void *outer, void *data_end, const struct backend *b,
				 __u8 family, __u32 ip_len)
{
	if (family == FAMILY_IPV4) {
		struct iphdr *oh = outer;
		struct iphdr *ih = (void *)(oh + 1);

		if ((void *)(ih + 1) > data_end)
			return -1;
		*(__u8 *)oh = 0x45;
		oh->tos = ih->tos;
		oh->tot_len = bpf_htons(sizeof(*oh) + ip_len);
		oh->id = ih->id;
		oh->frag_off = ih->frag_off & bpf_htons(IPV4_DF);
		oh->ttl = TUN_TTL;
		oh->protocol = IPPROTO_IPIP;
		oh->check = 0;
		oh->saddr = b->src.words[3];
		oh->daddr = b->addr.words[3];
		oh->check = csum_ipv4_header(oh);
	} else {
		struct ipv6hdr *oh = outer;
		struct ipv6hdr *ih = (void *)(oh + 1);

		if ((void *)(ih + 1) > data_end)
			return -1;
		/* Version, traffic class and flow label: the inner's. */
		*(__be32 *)oh = *(__be32 *)ih;
		oh->payload_len = bpf_htons(ip_len);
		oh->nexthdr = IPPROTO_IPV6;
		oh->hop_limit = TUN_TTL;
		__builtin_memcpy(&oh->saddr, b->src.words, 16);
		__builtin_memcpy(&oh->daddr, b->addr.words, 16);
	}
	return 0;
}

#endif /* HALB_TUNNEL_H */
