/* halb_checks.h: the source addresses that no client of a VIP can have.
 *
 * A packet from one of them is forged or has leaked from where it belongs,
 * and a backend would answer it to an address that is not the sender's:
 * halb_lb.c drops such a packet to a VIP (DROP_BAD_SOURCE) rather than
 * hand it to a backend. Each test costs a few instructions on words the
 * parser has loaded already.
 *
 * What is left out, on purpose:
 *  - private, shared (100.64.0.0/10), link-local (169.254.0.0/16,
 *    fe80::/10) and unique local (fc00::/7) addresses: clients on the
 *    balancer's own networks have them.
 *  - 240.0.0.0/4 but its last address: reserved (RFC 1112 §4), yet some
 *    networks number hosts from it, and the kernel routes it.
 *  - the directed broadcast address of a subnet: only the routing table
 *    knows it, and a host that sends to a VIP from it is as unlikely as a
 *    router that forwards it (RFC 2644).
 *  - 64:ff9b::/96 (RFC 6052) and other translated or tunnelled forms:
 *    real clients behind a translator.
 *
 * The uapi and libbpf headers only, as halb_lb.c.
 */
#ifndef HALB_CHECKS_H
#define HALB_CHECKS_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* bad_source4 tells whether an IPv4 source can be no client's:
 *  - 0.0.0.0/8, "this network": a source only while a host learns its
 *    address, to a broadcast (RFC 1122 §3.2.1.3 (a), (b); RFC 2131 §4.1).
 *  - 127.0.0.0/8, loopback: never outside a host (RFC 1122 §3.2.1.3 (g)).
 *  - 224.0.0.0/4, multicast, and 255.255.255.255, the limited broadcast:
 *    never a source (RFC 1122 §3.2.1.3, §3.3.6; RFC 1812 §5.3.7).
 * The kernel drops all of these as martians, but only after halb would
 * have sent them on. */
static __always_inline int bad_source4(__be32 saddr)
{
	__u32 a = bpf_ntohl(saddr);
	__u32 first = a >> 24;

	if (first == 0 || first == 127)
		return 1;
	if (first >= 224 && first < 240)
		return 1;
	return a == 0xffffffff;
}

/* bad_source6 tells whether an IPv6 source, as four big-endian words, can
 * be no client's:
 *  - ff00::/8, multicast: never a source (RFC 4291 §2.7).
 *  - ::/96: the unspecified address, a source only for duplicate address
 *    detection, never of a packet to a unicast address (RFC 4291 §2.5.2,
 *    RFC 4862 §5.4.2); the loopback address, never outside a host (RFC
 *    4291 §2.5.3); and the deprecated IPv4-compatible addresses (RFC 4291
 *    §2.5.5.1), which no stack sends from any more.
 *  - ::ffff:0:0/96, IPv4-mapped: the form in which a program names an
 *    IPv4 peer, never an address on the wire (RFC 4291 §2.5.5.2; RFC 4942
 *    §2.2 on the attacks it allows); the kernel's TCP refuses a SYN from
 *    one. */
static __always_inline int bad_source6(const __be32 *w)
{
	if ((w[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000))
		return 1;
	return w[0] == 0 && w[1] == 0 && (w[2] == 0 || w[2] == bpf_htonl(0x0000ffff));
}

#endif /* HALB_CHECKS_H */
