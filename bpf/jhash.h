/* jhash.h: Bob Jenkins' lookup3 hash over 32-bit words (public domain;
 * the Linux kernel's jhash2() computes the same function).
 *
 * Every halb node must pick the same backend for the same flow, or a flow
 * that moves to the other node on a VRRP failover would move to another
 * backend too. So the seed is a constant, and callers feed words whose value
 * does not depend on the host's byte order. loader's tests carry a Go copy
 * of this function that predicts the program's choices.
 */
#ifndef HALB_JHASH_H
#define HALB_JHASH_H

#include <linux/types.h>

#define JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 jhash_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

/* Mixes three words reversibly; every input bit reaches every output bit. */
#define JHASH_MIX(a, b, c)                                      \
	do {                                                    \
		a -= c; a ^= jhash_rol32(c, 4);  c += b;        \
		b -= a; b ^= jhash_rol32(a, 6);  a += c;        \
		c -= b; c ^= jhash_rol32(b, 8);  b += a;        \
		a -= c; a ^= jhash_rol32(c, 16); c += b;        \
		b -= a; b ^= jhash_rol32(a, 19); a += c;        \
		c -= b; c ^= jhash_rol32(b, 4);  b += a;        \
	} while (0)

/* Folds three words into c. */
#define JHASH_FINAL(a, b, c)                                    \
	do {                                                    \
		c ^= b; c -= jhash_rol32(b, 14);                \
		a ^= c; a -= jhash_rol32(c, 11);                \
		b ^= a; b -= jhash_rol32(a, 25);                \
		c ^= b; c -= jhash_rol32(b, 16);                \
		a ^= c; a -= jhash_rol32(c, 4);                 \
		b ^= a; b -= jhash_rol32(a, 14);                \
		c ^= b; c -= jhash_rol32(b, 24);                \
	} while (0)

/* jhash_words hashes n words. Callers pass a constant n, so the loop
 * unrolls completely and the verifier sees straight-line code. */
static __always_inline __u32 jhash_words(const __u32 *k, __u32 n, __u32 seed)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (n << 2) + seed;
	for (; n > 3; n -= 3, k += 3) {
		a += k[0];
		b += k[1];
		c += k[2];
		JHASH_MIX(a, b, c);
	}
	if (n == 0)
		return c;
	if (n == 3)
		c += k[2];
	if (n >= 2)
		b += k[1];
	a += k[0];
	JHASH_FINAL(a, b, c);
	return c;
}

#endif /* HALB_JHASH_H */
