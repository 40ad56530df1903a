package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// IPProtocol is VRRP's IP protocol number (RFC 3768 §5.2.4, RFC 5798
// §5.1.1.4 and §5.1.2.4). The IPv4 and IPv6 pseudo-headers carry it too.
const IPProtocol = 112

// Values of a VRRPv2 advert's Auth Type octet. RFC 3768 §5.3.6 reserves 1 and
// 2 for RFC 2338 compatibility; keepalived still sends 1 (auth_type PASS) and
// 2 (auth_type AH, which wraps the advert in an IPsec AH header, IP protocol
// 51, that this codec never sees).
const (
	AuthNone   = 0 // RFC 3768 §5.3.6
	AuthSimple = 1 // RFC 2338 §5.3.6.2: an 8-octet clear-text password
)

// Reasons Parse refuses an advert. Each is a separate drop counter: test with
// errors.Is. Marshal returns ErrVersion, ErrFamily and ErrInterval too, and
// plain errors for more than 255 addresses or authentication on VRRPv3: all
// mean an Advert that cannot be put on the wire, which config validation
// rules out before any is built.
var (
	// ErrTruncated: fewer octets than the 8-octet fixed header.
	ErrTruncated = errors.New("vrrp: advert shorter than its header")
	// ErrVersion: the Version nibble is neither 2 nor 3 (RFC 3768 §5.3.1,
	// RFC 5798 §5.2.1).
	ErrVersion = errors.New("vrrp: unknown version")
	// ErrType: the Type nibble is not 1, ADVERTISEMENT (RFC 3768 §5.3.2,
	// RFC 5798 §5.2.2: a packet of unknown type MUST be discarded).
	ErrType = errors.New("vrrp: not an advertisement")
	// ErrFamily: the IP source and destination are not one family, or the
	// family does not fit the version (VRRPv2 is IPv4 only, RFC 3768 §1), or
	// an address to marshal is of the other family (RFC 5798 §5.2.9).
	ErrFamily = errors.New("vrrp: address family mismatch")
	// ErrLength: the length is not the one Count IPvX Addrs implies (RFC 3768
	// §7.1, RFC 5798 §7.1: the packet MUST contain the complete advert;
	// keepalived refuses longer ones as well).
	ErrLength = errors.New("vrrp: length does not match the address count")
	// ErrChecksum: the checksum does not verify (RFC 3768 §5.3.8, RFC 5798
	// §5.2.8).
	ErrChecksum = errors.New("vrrp: bad checksum")
	// ErrInterval: an advertisement interval of zero, or (Marshal) one the
	// version cannot carry.
	ErrInterval = errors.New("vrrp: bad advertisement interval")
)

const (
	headerLen   = 8 // the fixed fields, both versions
	authDataLen = 8 // VRRPv2 Authentication Data (RFC 3768 §5.3.10)
	typeAdvert  = 1 // RFC 3768 §5.3.2, RFC 5798 §5.2.2
	maxAddrs    = 255

	// RFC 3768 §5.3.7: Adver Int is an octet of seconds.
	v2IntervalUnit = time.Second
	v2IntervalMax  = 255
	// RFC 5798 §5.2.7: Max Adver Int is 12 bits of centiseconds.
	v3IntervalUnit = 10 * time.Millisecond
	v3IntervalMax  = 0x0fff
)

// Advert is one VRRP ADVERTISEMENT, version 2 or 3.
//
// The checks RFC 3768 §7.1 and RFC 5798 §7.1 leave to the receiver's
// configuration (the TTL or hop limit is 255, the VRID is configured, the
// auth type and password match, a VRRPv2 interval equals the local one) are
// the caller's: Parse checks only what the bytes and the IP addresses alone
// decide.
type Advert struct {
	Version  int   // 2 (RFC 3768) or 3 (RFC 5798)
	VRID     uint8 // Virtual Rtr ID
	Priority uint8 // 0 means the master is resigning (RFC 5798 §6.4.3)
	// Interval is Adver Int in whole seconds (v2, 1s..255s) or Max Adver
	// Int in centiseconds (v3, 10ms..40.95s).
	Interval time.Duration
	// Addrs are the virtual addresses, all IPv4 or all IPv6 like the IP
	// header carrying the advert. keepalived sends none at all for an
	// instance with only virtual_ipaddress_excluded, so Parse accepts an
	// empty list although RFC 5798 §5.2.5 gives Count IPvX Addr a minimum
	// of 1: RFC 5798 §7.1 does not tell a receiver to check it, and refusing
	// would stop halb interworking with such a keepalived.
	Addrs []netip.Addr
	// AuthType and AuthData are VRRPv2's Auth Type and Authentication Data
	// octets, carried whatever their value: AuthNone with zeros, or
	// AuthSimple with a password zero-padded to 8 octets. VRRPv3 has no
	// authentication (RFC 5798 §9); for it both must be zero.
	AuthType uint8
	AuthData [authDataLen]byte
}

// Marshal appends the advert's VRRP message (header, addresses and, for v2,
// the authentication data) to b and returns the extended slice. b may
// already hold the IP header; the checksum covers only the appended part.
//
// src and dst are the IP header's addresses. A VRRPv3 checksum covers the
// IPv4 or IPv6 pseudo-header (RFC 5798 §5.2.8), so for a unicast advert dst
// is the peer's address; a VRRPv2 checksum covers the message alone (RFC
// 3768 §5.3.8), but src and dst must still be IPv4. Zones are ignored.
func (a *Advert) Marshal(b []byte, src, dst netip.Addr) ([]byte, error) {
	if a.Version != 2 && a.Version != 3 {
		return b, fmt.Errorf("marshal version %d: %w: halb speaks 2 (RFC 3768) and 3 (RFC 5798)", a.Version, ErrVersion)
	}
	ipv6, err := family(a.Version, src, dst)
	if err != nil {
		return b, fmt.Errorf("marshal VRRPv%d from %s to %s: %w", a.Version, src, dst, err)
	}
	if len(a.Addrs) > maxAddrs {
		return b, fmt.Errorf("marshal %d addresses: Count IPvX Addrs is one octet, at most %d", len(a.Addrs), maxAddrs)
	}
	for _, addr := range a.Addrs {
		if !addr.IsValid() || addr.Is4() == ipv6 {
			return b, fmt.Errorf("marshal address %s in an advert from %s: %w", addr, src, ErrFamily)
		}
	}
	interval, err := a.intervalField()
	if err != nil {
		return b, err
	}
	if a.Version == 3 && (a.AuthType != AuthNone || a.AuthData != [authDataLen]byte{}) {
		return b, fmt.Errorf("marshal VRRPv3 with auth type %d: VRRPv3 has no authentication (RFC 5798 §9)", a.AuthType)
	}

	start := len(b)
	b = append(b, make([]byte, msgLen(a.Version, ipv6, len(a.Addrs)))...)
	m := b[start:]
	m[0] = byte(a.Version)<<4 | typeAdvert
	m[1] = a.VRID
	m[2] = a.Priority
	m[3] = byte(len(a.Addrs))
	if a.Version == 2 {
		m[4] = a.AuthType
		m[5] = byte(interval)
	} else {
		// RFC 5798 §5.2.6: the 4 reserved bits are sent as zero.
		binary.BigEndian.PutUint16(m[4:6], interval)
	}
	// m[6:8], the checksum, is zero while it is computed.
	off := headerLen
	for _, addr := range a.Addrs {
		if ipv6 {
			a16 := addr.As16()
			off += copy(m[off:], a16[:])
		} else {
			a4 := addr.As4()
			off += copy(m[off:], a4[:])
		}
	}
	if a.Version == 2 {
		copy(m[off:], a.AuthData[:])
	}
	binary.BigEndian.PutUint16(m[6:8], ^fold(pseudoSum(a.Version, src, dst, len(m))+sum(m)))
	return b, nil
}

// Parse decodes the VRRP message b, the payload of an IP packet from src to
// dst (the IP header already stripped). It verifies the version, the type,
// the address family against the version, the length against Count IPvX
// Addrs, the checksum, and that the interval is not zero; each failure wraps
// one of the Err values. The Advert shares no memory with b. Parse never
// panics, whatever b holds.
func Parse(b []byte, src, dst netip.Addr) (*Advert, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("parse %d octets from %s: %w", len(b), src, ErrTruncated)
	}
	version := int(b[0] >> 4)
	if version != 2 && version != 3 {
		return nil, fmt.Errorf("parse advert from %s: version %d: %w", src, version, ErrVersion)
	}
	if t := b[0] & 0x0f; t != typeAdvert {
		return nil, fmt.Errorf("parse VRRPv%d from %s: type %d: %w", version, src, t, ErrType)
	}
	ipv6, err := family(version, src, dst)
	if err != nil {
		return nil, fmt.Errorf("parse VRRPv%d from %s to %s: %w", version, src, dst, err)
	}
	count := int(b[3])
	if want := msgLen(version, ipv6, count); len(b) != want {
		return nil, fmt.Errorf("parse VRRPv%d from %s: %d octets, but %d addresses make %d: %w", version, src, len(b), count, want, ErrLength)
	}
	// RFC 1071: the sum over the message and its checksum, pseudo-header
	// included, is all ones. Like keepalived, this accepts both encodings
	// of zero (0x0000 and 0xffff) in the checksum field.
	if fold(pseudoSum(version, src, dst, len(b))+sum(b)) != 0xffff {
		return nil, fmt.Errorf("parse VRRPv%d from %s to %s: checksum %#04x: %w", version, src, dst, binary.BigEndian.Uint16(b[6:8]), ErrChecksum)
	}

	a := &Advert{Version: version, VRID: b[1], Priority: b[2]}
	if version == 2 {
		a.AuthType = b[4]
		a.Interval = time.Duration(b[5]) * v2IntervalUnit
		copy(a.AuthData[:], b[len(b)-authDataLen:])
	} else {
		// RFC 5798 §5.2.6: the reserved bits are ignored on reception.
		a.Interval = time.Duration(binary.BigEndian.Uint16(b[4:6])&v3IntervalMax) * v3IntervalUnit
	}
	// Neither RFC bounds the interval from below, but a zero cannot come
	// from a working sender, and believing it would make a backup's
	// Master_Down_Interval (3 × Master_Adver_Interval + Skew_Time, RFC 5798
	// §6.1, where Skew_Time scales with the interval too) zero: the
	// backup would take over at once, every time. Refuse it as malformed.
	if a.Interval == 0 {
		return nil, fmt.Errorf("parse VRRPv%d from %s: interval 0: %w", version, src, ErrInterval)
	}
	if count > 0 {
		a.Addrs = make([]netip.Addr, count)
	}
	for i, off := 0, headerLen; i < count; i++ {
		if ipv6 {
			a.Addrs[i] = netip.AddrFrom16([16]byte(b[off : off+16]))
			off += 16
		} else {
			a.Addrs[i] = netip.AddrFrom4([4]byte(b[off : off+4]))
			off += 4
		}
	}
	return a, nil
}

// family checks that src and dst make a valid IP header for the version, and
// reports whether it is IPv6.
func family(version int, src, dst netip.Addr) (ipv6 bool, err error) {
	switch {
	case !src.IsValid() || !dst.IsValid():
		return false, fmt.Errorf("missing IP address: %w", ErrFamily)
	case src.Is4() != dst.Is4():
		return false, fmt.Errorf("source and destination differ in family: %w", ErrFamily)
	case version == 2 && !src.Is4():
		return false, fmt.Errorf("VRRPv2 carries IPv4 only (RFC 3768), use VRRPv3 for IPv6: %w", ErrFamily)
	}
	return !src.Is4(), nil
}

// msgLen is the length of a VRRP message with count addresses: the header,
// the addresses (RFC 5798 §5.2.9: 16 octets each for IPv6), and VRRPv2's
// Authentication Data, which RFC 3768 §5.1 puts in every advert whatever
// its Auth Type.
func msgLen(version int, ipv6 bool, count int) int {
	n := headerLen + 4*count
	if ipv6 {
		n = headerLen + 16*count
	}
	if version == 2 {
		n += authDataLen
	}
	return n
}

// intervalField encodes a.Interval for the Adver Int octet (v2) or the Max
// Adver Int bits (v3).
func (a *Advert) intervalField() (uint16, error) {
	unit, limit := v2IntervalUnit, time.Duration(v2IntervalMax)
	if a.Version == 3 {
		unit, limit = v3IntervalUnit, v3IntervalMax
	}
	if a.Interval < unit || a.Interval > limit*unit || a.Interval%unit != 0 {
		return 0, fmt.Errorf("marshal VRRPv%d interval %s: it must be a multiple of %s from %s to %s: %w",
			a.Version, a.Interval, unit, unit, limit*unit, ErrInterval)
	}
	return uint16(a.Interval / unit), nil
}

// pseudoSum is the RFC 1071 sum of the pseudo-header under a VRRPv3
// checksum (RFC 5798 §5.2.8): for IPv6 the one of RFC 8200 §8.1 (source,
// destination, 32-bit length, next header 112); for IPv4 the analogue TCP and
// UDP use (source, destination, zero, protocol 112, 16-bit length), which is
// what keepalived computes (keepalived-adverts.txt proves it). VRRPv2's
// checksum has no pseudo-header (RFC 3768 §5.3.8).
//
// keepalived before 1.3.6 put 224.0.0.18 in place of a unicast destination;
// keepalived's old_unicast_checksum option still sends that form, and
// keepalived detects it on receipt. halb sends and accepts only the RFC form.
func pseudoSum(version int, src, dst netip.Addr, length int) uint64 {
	if version != 3 {
		return 0
	}
	var s uint64 = IPProtocol + uint64(length)>>16 + uint64(length)&0xffff
	if src.Is4() {
		s4, d4 := src.As4(), dst.As4()
		return s + sum(s4[:]) + sum(d4[:])
	}
	s16, d16 := src.As16(), dst.As16()
	return s + sum(s16[:]) + sum(d16[:])
}

// sum is the RFC 1071 one's complement sum of b as big-endian 16-bit words,
// an odd last octet padded with zero, its carries not yet folded.
func sum(b []byte) uint64 {
	var s uint64
	for len(b) >= 2 {
		s += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold adds the carries of s back in, end around (RFC 1071).
func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
