package maglev

// The two hashes that place a backend's permutation. They are part of halb's
// contract between the two nodes of a pair, like the turn order in
// maglev.go: both must compute the same table from the same backends, in
// different processes, on different architectures (an amd64 server may
// back up an arm Raspberry Pi), and during a rolling upgrade across two
// versions of halb. hash/maphash is seeded per process and so cannot be used;
// this is plain uint64 arithmetic over the key's bytes, which gives the same
// result on every GOARCH whatever its int size or byte order.
//
// The hash is FNV-1a (64-bit) over the eight bytes of a seed, low byte
// first, and then the key, finished by the splitmix64 mixer. FNV-1a alone
// carries a difference near the end of two keys, as between
// "198.51.100.11:80" and "198.51.100.12:80", through only a few
// multiplications, and never into the bits below the lowest one that
// differs; keys like these are the usual case. The mixer makes every input
// bit reach every output bit before the value is reduced modulo M and M-1. The two seeds give the two hashes §3.4 of the paper asks for,
// one for the offset and one for the skip, rather than one hash cut in two.
//
// TestGolden pins the results: if it fails, every table changes and flows
// move when the VIP moves between nodes on different versions.

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211

	offsetSeed = 0x68616c626f666673 // "halboffs": any constant would do, but never change it
	skipSeed   = 0x68616c62736b6970 // "halbskip"
)

// keyHash returns the 64-bit hash of key under seed.
func keyHash(seed uint64, key string) uint64 {
	h := uint64(fnvOffset64)
	for i := range 8 {
		h ^= (seed >> (8 * i)) & 0xff
		h *= fnvPrime64
	}
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime64
	}
	return mix64(h)
}

// mix64 is the finaliser of splitmix64, with David Stafford's "Mix13"
// constants: a bijection on uint64 in which every input bit reaches every
// output bit.
func mix64(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
