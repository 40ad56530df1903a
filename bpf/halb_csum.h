/* halb_csum.h: the Internet checksum (RFC 1071) of the headers halb writes:
 * the outer IPv4 header of a TUN packet (halb_tunnel.h), and the IPv4 and
 * ICMP headers of an ICMP error (halb_icmp.h); and the incremental update
 * (RFC 1624) of the checksums over what NAT rewrites (halb_nat.h).
 */
#ifndef HALB_CSUM_H
#define HALB_CSUM_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

/* csum_fold folds a 32-bit one's complement sum to the 16-bit checksum. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* csum_diff32 is what replacing the 32-bit word from with to adds to a
 * one's complement sum over it: ~m + m' of RFC 1624 §3, unfolded. Both
 * are in the packet's byte order, read as the host reads them: the sum
 * does not mind (RFC 1071 §2 (B)) as long as the checksum is read alike. */
static __always_inline __u32 csum_diff32(__be32 from, __be32 to)
{
	__u32 f = ~(__u32)from, t = to;

	return (f & 0xffff) + (f >> 16) + (t & 0xffff) + (t >> 16);
}

/* csum_diff16 is csum_diff32 for a 16-bit field. */
static __always_inline __u32 csum_diff16(__be16 from, __be16 to)
{
	return (__u16)~from + (__u32)to;
}

/* csum_update is the checksum check after the bytes it covers changed by
 * diff, a sum of csum_diff32 and csum_diff16 terms: HC' = ~(~HC + ~m + m')
 * (RFC 1624 §3, eqn. 3), which keeps a damaged checksum damaged. The
 * program computes it itself rather than with bpf_csum_diff, for the
 * reason csum_ipv4_header gives. */
static __always_inline __sum16 csum_update(__sum16 check, __u32 diff)
{
	return csum_fold((__u16)~check + diff);
}

/* csum_add16 adds n 16-bit words at p to the one's complement sum, without
 * folding it: the words of a header, or of IPv6's pseudo-header. Callers
 * pass a constant n, so the loop unrolls into loads and adds. */
static __always_inline __u32 csum_add16(const void *p, int n, __u32 sum)
{
	const __u16 *w = p;

	for (int i = 0; i < n; i++)
		sum += w[i];
	return sum;
}

/* csum_ipv4_header is the checksum of the IPv4 header at ip (RFC 791
 * §3.1), which has no options and whose check is 0.
 *
 * Summed in the program, not with bpf_csum_diff as Cilium does: that
 * helper, which XDP and tc may both call and the verifier takes, made a
 * TUN packet about 20 ns slower on the development machine (BenchmarkXDP
 * ct-hit-tun, alternating runs), where each return from the kernel costs
 * more (SRSO mitigation), for 20 bytes the program sums in 10 adds. */
static __always_inline __sum16 csum_ipv4_header(const struct iphdr *ip)
{
	return csum_fold(csum_add16(ip, sizeof(*ip) / 2, 0));
}

/* The most bytes halb_xdp_csum sums: an ICMPv6 error of the IPv6 minimum
 * MTU (RFC 8200 §5) without its IPv6 header, the longest ICMP header and
 * quote halb_icmp.h writes. */
#define CSUM_MAX (1280 - 40)

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

#endif /* HALB_CSUM_H */
