//go:build ignore

/* decap.c: the backends' end of TestTUN's tunnels, in place of the ipip and
 * ip6tnl devices the test kernel may lack. It sits on a backend's eth0 as
 * an XDP program (halbtest_decap), and
 *  - strips the outer header of an IPIP (RFC 2003) packet to tunnel_end4,
 *    or of an IP6IP6 (RFC 2473) one to tunnel_end6, and passes the inner
 *    packet to the stack, which finds the VIP on lo;
 *  - drops a packet that reaches the VIP without a tunnel around it, so
 *    that no connection to the VIP works unless the balancer tunnelled it;
 *  - passes everything else.
 * It counts each in decap_counts for the test to read. It is a test
 * fixture: it trusts the balancer's outer header (no options, IPv6 without
 * extension headers) and does nothing a real decapsulator must, such as
 * checking the outer source or applying RFC 6040's ECN rules.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The backend's address at the ends of the tunnels, and the VIPs, as they
 * are on the wire. The test sets them before it loads the program. */
volatile const __u32 tunnel_end4;
volatile const __u32 tunnel_end6[4];
volatile const __u32 vip4;
volatile const __u32 vip6[4];

enum decap_counter {
	DECAP_IPIP,      /* IPIP packets decapsulated */
	DECAP_IP6IP6,    /* IP6IP6 packets decapsulated */
	DECAP_PLAIN_VIP, /* packets to a VIP without a tunnel, dropped */
	DECAP_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DECAP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} decap_counts SEC(".maps");

static __always_inline void count(__u32 counter)
{
	__u64 *n = bpf_map_lookup_elem(&decap_counts, &counter);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int is6(const struct in6_addr *a, const volatile __u32 *want)
{
	return a->in6_u.u6_addr32[0] == want[0] && a->in6_u.u6_addr32[1] == want[1] &&
	       a->in6_u.u6_addr32[2] == want[2] && a->in6_u.u6_addr32[3] == want[3];
}

/* strip removes outer bytes of outer header after the Ethernet header: the
 * MACs move up over them, and the EtherType becomes proto. */
static __always_inline int strip(struct xdp_md *ctx, int outer, __u16 proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data, *moved;

	if (data + outer + sizeof(*eth) > data_end)
		return XDP_DROP;
	moved = data + outer;
	__builtin_memmove(moved->h_source, eth->h_source, ETH_ALEN);
	__builtin_memmove(moved->h_dest, eth->h_dest, ETH_ALEN);
	moved->h_proto = bpf_htons(proto);
	if (bpf_xdp_adjust_head(ctx, outer))
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int halbtest_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		if (ip->protocol == IPPROTO_IPIP && ip->daddr == tunnel_end4 && ip->ihl == 5) {
			count(DECAP_IPIP);
			return strip(ctx, sizeof(*ip), ETH_P_IP);
		}
		if (ip->daddr == vip4) {
			count(DECAP_PLAIN_VIP);
			return XDP_DROP;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		if (ip6->nexthdr == IPPROTO_IPV6 && is6(&ip6->daddr, tunnel_end6)) {
			count(DECAP_IP6IP6);
			return strip(ctx, sizeof(*ip6), ETH_P_IPV6);
		}
		if (is6(&ip6->daddr, vip6)) {
			count(DECAP_PLAIN_VIP);
			return XDP_DROP;
		}
	}
	return XDP_PASS;
}
