package vrrp

import (
	"crypto/subtle"
	"errors"
	"net/netip"
	"slices"
	"time"
)

// Reasons an advert that parsed is still dropped (RFC 5798 §7.1, RFC 3768
// §7.1). Parse's own errors (ErrChecksum, ErrLength, ...) are the others.
var (
	// ErrTTL: the TTL or hop limit of a multicast advert is not 255, so
	// it crossed a router (RFC 5798 §5.1.1.3, §5.1.2.3).
	ErrTTL = errors.New("vrrp: TTL/hop limit is not 255")
	// ErrOtherVRID: the advert is for another virtual router on the link.
	ErrOtherVRID = errors.New("vrrp: advert for another VRID")
	// ErrWrongVersion: a VRRP version other than the instance's.
	ErrWrongVersion = errors.New("vrrp: advert of the other VRRP version")
	// ErrAuth: VRRPv2 authentication type or password mismatch (RFC 2338
	// §5.3.6).
	ErrAuth = errors.New("vrrp: authentication mismatch")
	// ErrIntervalMismatch: a VRRPv2 advert interval other than ours
	// (RFC 3768 §7.1).
	ErrIntervalMismatch = errors.New("vrrp: advert interval differs from ours")
	// ErrNotPeer: in unicast mode, an advert from an address that is not
	// one of unicast_peers.
	ErrNotPeer = errors.New("vrrp: advert from an address that is not a unicast peer")
)

// receiveRules are what an instance checks of each advert it receives.
type receiveRules struct {
	version  int
	vrid     uint8
	interval time.Duration // v2 only
	authType uint8
	authData [8]byte
	peers    []netip.Addr // unicast mode; empty = multicast
}

// accept parses and checks one received advert; the error says why it was
// dropped.
func (r *receiveRules) accept(payload []byte, src, dst netip.Addr, ttl int) (*Advert, error) {
	// Unicast adverts are exempt, as in keepalived ("MUST verify that the
	// IPv4 TTL/IPv6 HL is 255 (but not if unicast)"): unicast mode exists
	// to cross routers, the source is checked against unicast_peers
	// instead, and keepalived sends IPv6 unicast adverts with the default
	// hop limit (64), setting only the multicast one to 255.
	if len(r.peers) == 0 && ttl != 255 {
		return nil, ErrTTL
	}
	a, err := Parse(payload, src, dst)
	if err != nil {
		return nil, err
	}
	if a.VRID != r.vrid {
		return nil, ErrOtherVRID
	}
	if a.Version != r.version {
		return nil, ErrWrongVersion
	}
	if len(r.peers) > 0 && !slices.Contains(r.peers, src) {
		return nil, ErrNotPeer
	}
	if a.Version == 2 {
		if a.AuthType != r.authType || subtle.ConstantTimeCompare(a.AuthData[:], r.authData[:]) != 1 {
			return nil, ErrAuth
		}
		if a.Interval != r.interval {
			return nil, ErrIntervalMismatch
		}
	}
	return a, nil
}

// dropReason names an error for counters and logs.
func dropReason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrTTL, "ttl"}, {ErrOtherVRID, "other_vrid"}, {ErrWrongVersion, "version"}, {ErrAuth, "auth"},
		{ErrIntervalMismatch, "interval"}, {ErrNotPeer, "not_peer"}, {ErrTruncated, "truncated"},
		{ErrVersion, "version"}, {ErrType, "type"}, {ErrFamily, "family"}, {ErrLength, "length"},
		{ErrChecksum, "checksum"}, {ErrInterval, "interval"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}
