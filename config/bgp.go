package config

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// BGP is the bgp: section: the speaker that announces the services' VIPs
// as host routes to routers (package bgp), so that routers spread flows
// over many halb nodes with ECMP. Routes the peers send are never used.
type BGP struct {
	ASN ASN `mapstructure:"asn"`
	// RouterID is the BGP identifier (an IPv4 address by convention, RFC
	// 6286 allows any unique 32-bit number written as one). Invalid (not
	// written): the source_address of the first IPv4 peer, else this
	// host's first global IPv4 address, found at start.
	RouterID netip.Addr `mapstructure:"router_id"`
	// ListenPort is the TCP port on which sessions the peers open are
	// accepted; 0 (the default) listens on none: halb opens every
	// session itself.
	ListenPort int `mapstructure:"listen_port"`
	// DrainTime is how long a drain (SIGTERM, `halb drain`) waits after
	// withdrawing the routes, still serving, before halb stops.
	DrainTime time.Duration `mapstructure:"drain_time"`
	Peers     []BGPPeer     `mapstructure:"peers"`
}

// ASN is an autonomous system number; 4-byte ASNs (RFC 6793) are allowed.
type ASN uint32

// BGPPeer is one router halb opens a session to.
type BGPPeer struct {
	Address netip.Addr `mapstructure:"address"`
	ASN     ASN        `mapstructure:"asn"` // the peer's; equal to bgp.asn makes it iBGP
	Port    int        `mapstructure:"port"`
	// Password turns on TCP MD5 signatures (RFC 2385) with this key.
	Password string `mapstructure:"password"`
	// HoldTime is proposed in the OPEN (RFC 4271 §4.2): 3s..65535s in
	// whole seconds; the session uses the lower of both sides'.
	HoldTime time.Duration `mapstructure:"hold_time"`
	// KeepaliveInterval 0 (the default) is a third of the hold time.
	KeepaliveInterval time.Duration `mapstructure:"keepalive_interval"`
	// EBGPMultihop is the TTL of the session's packets for a peer more
	// than one hop away; 0 (the default) is directly connected (TTL 1).
	EBGPMultihop int `mapstructure:"ebgp_multihop"`
	// SourceAddress is the local address of the session; invalid: the
	// kernel's choice for the route to the peer.
	SourceAddress netip.Addr `mapstructure:"source_address"`
	// BFD, when written, runs single-hop BFD (RFC 5880/5881, asynchronous
	// mode) towards the peer, and the session drops when BFD goes down.
	BFD *BFD `mapstructure:"bfd"`
	// GracefulRestart advertises the capability (RFC 4724), so that the
	// peer keeps halb's routes over a restart of halb.
	GracefulRestart bool `mapstructure:"graceful_restart"`
}

// BFD sets a peer's BFD session.
type BFD struct {
	MinRx      time.Duration `mapstructure:"min_rx"`
	MinTx      time.Duration `mapstructure:"min_tx"`
	Multiplier int           `mapstructure:"multiplier"`
}

// Announce modes: when a service's VIP is announced over BGP.
const (
	AnnounceNever  = "never"  // the default: nothing is announced
	AnnounceAlways = "always" // active-active: while this node serves the service within its quorum
	AnnounceMaster = "master" // while the VRRP instance holding the VIP is MASTER
)

// Announce says when and with which attributes a service's VIP is
// announced as a host route (/32, /128). In YAML it is the mode alone
// (`announce: always`) or a mapping (`announce: {when: always,
// communities: ["65000:100"]}`).
type Announce struct {
	When             string   `mapstructure:"when"`
	Communities      []string `mapstructure:"communities"`       // "ASN:VALUE" or a well-known name (RFC 1997)
	LargeCommunities []string `mapstructure:"large_communities"` // "ASN:VALUE1:VALUE2" (RFC 8092)
	LocalPref        uint32   `mapstructure:"local_pref"`        // sent to iBGP peers only (RFC 4271 §5.1.5)
	MED              uint32   `mapstructure:"med"`
}

var (
	defaultBGP      = BGP{DrainTime: 10 * time.Second}
	defaultBGPPeer  = BGPPeer{Port: 179, HoldTime: 90 * time.Second}
	defaultBFD      = BFD{MinRx: 300 * time.Millisecond, MinTx: 300 * time.Millisecond, Multiplier: 3}
	defaultAnnounce = Announce{When: AnnounceNever, LocalPref: 100}
)

// Limits of the bgp section.
const (
	// maxMD5Key is TCP_MD5SIG_MAXKEYLEN: the kernel refuses a longer key.
	maxMD5Key     = 80
	minHoldTime   = 3 * time.Second // RFC 4271 §4.2 (its 0, no keepalives at all, is not offered)
	maxHoldTime   = math.MaxUint16 * time.Second
	maxDrainTime  = 10 * time.Minute
	minBFDTimer   = 10 * time.Millisecond // below this a busy host misses its own packets
	maxBFDTimer   = time.Minute
	asTrans       = 23456 // RFC 6793: stands for a 4-byte ASN to 2-byte speakers
	reservedASN16 = 65535 // RFC 7300
)

// wellKnownCommunities are the communities named in RFC 1997 and RFC
// 7999, by the names routers print.
var wellKnownCommunities = map[string]uint32{
	"no-export":           0xFFFFFF01,
	"no-advertise":        0xFFFFFF02,
	"no-export-subconfed": 0xFFFFFF03,
	"local-as":            0xFFFFFF03,
	"no-peer":             0xFFFFFF04, // RFC 3765
	"blackhole":           0xFFFF029A, // RFC 7999
	"graceful-shutdown":   0xFFFF0000, // RFC 8326
}

// ParseCommunity reads a standard community (RFC 1997): "ASN:VALUE" with
// two 16-bit numbers, or a well-known name such as "no-export".
func ParseCommunity(s string) (uint32, error) {
	if c, ok := wellKnownCommunities[strings.ToLower(s)]; ok {
		return c, nil
	}
	hi, lo, ok := strings.Cut(s, ":")
	a, errA := strconv.ParseUint(hi, 10, 16)
	b, errB := strconv.ParseUint(lo, 10, 16)
	if !ok || errA != nil || errB != nil {
		return 0, fmt.Errorf("%q is not a community: write ASN:VALUE with two numbers 0..65535 (like \"65000:100\"), or no-export, no-advertise, no-peer, blackhole, graceful-shutdown", s)
	}
	return uint32(a)<<16 | uint32(b), nil
}

// ParseLargeCommunity reads a large community (RFC 8092):
// "ASN:VALUE1:VALUE2", three 32-bit numbers.
func ParseLargeCommunity(s string) ([3]uint32, error) {
	var c [3]uint32
	parts := strings.Split(s, ":")
	bad := fmt.Errorf("%q is not a large community: write ASN:VALUE1:VALUE2 with three numbers 0..4294967295 (like \"65000:1:2\")", s)
	if len(parts) != 3 {
		return c, bad
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return c, bad
		}
		c[i] = uint32(n)
	}
	return c, nil
}

// IBGP reports whether the session to p is internal BGP: both ends in
// the same AS.
func (b *BGP) IBGP(p *BGPPeer) bool { return p.ASN == b.ASN }

// bgp checks the bgp section and what the services ask of it.
func (v *validator) bgp(c *Config) {
	v.announces(c)
	b := c.BGP
	if b == nil {
		return
	}
	v.asn("bgp.asn", b.ASN, "this node's")
	if b.RouterID.IsValid() && (!b.RouterID.Is4() || b.RouterID.IsUnspecified()) {
		v.errf("bgp.router_id", "%s is not a router ID: write an IPv4 address (any unique 32-bit ID written as one, like 192.0.2.1)", b.RouterID)
	}
	if b.ListenPort != 0 {
		v.intRange("bgp.listen_port", b.ListenPort, 1, 65535)
	}
	v.duration("bgp.drain_time", b.DrainTime, time.Second, maxDrainTime, "stop at once")
	if len(b.Peers) == 0 {
		v.errf("bgp.peers", "at least one peer is required, like [{address: 192.0.2.254, asn: 65000}]")
	}
	own := ownAddresses(c)
	seen := map[netip.Addr]int{}
	for i := range b.Peers {
		path := fmt.Sprintf("bgp.peers[%d]", i)
		p := &b.Peers[i]
		v.bgpPeer(path, b, p, own)
		if first, dup := seen[p.Address]; dup && p.Address.IsValid() {
			v.errf(path+".address", "%s is already bgp.peers[%d]: one session per peer address", p.Address, first)
		} else {
			seen[p.Address] = i
		}
	}
}

// asn checks an AS number that must name one AS.
func (v *validator) asn(path string, a ASN, whose string) {
	switch a {
	case 0:
		v.errf(path, "%s AS number is required: 1..4294967294 (4-byte ASNs are fine; private ones are 64512..65534 and 4200000000..4294967294)", whose)
	case asTrans:
		v.errf(path, "23456 is AS_TRANS, which only stands for a 4-byte ASN (RFC 6793): write the real AS number")
	case reservedASN16, math.MaxUint32:
		v.errf(path, "%d is reserved (RFC 7300): use 1..4294967294 other than 23456 and 65535", a)
	}
}

func (v *validator) bgpPeer(path string, b *BGP, p *BGPPeer, own map[netip.Addr]string) {
	v.unicast(path+".address", p.Address)
	if what, ok := own[p.Address.WithZone("")]; ok && p.Address.IsValid() {
		v.errf(path+".address", "%s is %s, an address of this node: name the router's own address", p.Address, what)
	}
	v.asn(path+".asn", p.ASN, "the peer's")
	v.intRange(path+".port", p.Port, 1, 65535)
	if len(p.Password) > maxMD5Key {
		v.errf(path+".password", "is %d bytes; a TCP MD5 key is at most %d bytes (the kernel refuses longer ones): shorten it on both ends", len(p.Password), maxMD5Key)
	}
	holdOK := v.duration(path+".hold_time", p.HoldTime, minHoldTime, maxHoldTime, "")
	if holdOK && p.HoldTime%time.Second != 0 {
		v.errf(path+".hold_time", "%s is not whole seconds: BGP carries the hold time in seconds (RFC 4271 §4.2)", p.HoldTime)
	}
	if v.duration(path+".keepalive_interval", p.KeepaliveInterval, time.Second, maxHoldTime, "a third of hold_time") {
		switch {
		case p.KeepaliveInterval%time.Second != 0:
			v.errf(path+".keepalive_interval", "%s is not whole seconds: use 1s or more in whole seconds", p.KeepaliveInterval)
		case p.KeepaliveInterval != 0 && holdOK && p.KeepaliveInterval >= p.HoldTime:
			v.errf(path+".keepalive_interval", "%s is not shorter than hold_time %s: the session would expire between keepalives; use at most a third of it", p.KeepaliveInterval, p.HoldTime)
		}
	}
	if v.intRange(path+".ebgp_multihop", p.EBGPMultihop, 0, 255) && p.EBGPMultihop > 0 && p.ASN == b.ASN && b.ASN != 0 {
		v.errf(path+".ebgp_multihop", "is for eBGP peers, and this peer's asn is bgp.asn (iBGP, which is not limited to one hop): remove it")
	}
	if p.SourceAddress.IsValid() {
		v.unicast(path+".source_address", p.SourceAddress)
		switch {
		case p.Address.IsValid() && p.SourceAddress.Is6() != p.Address.Is6():
			v.errf(path+".source_address", "%s is %s but the peer is %s: a session runs over one family", p.SourceAddress, family(p.SourceAddress.Is6()), family(p.Address.Is6()))
		case p.SourceAddress == p.Address:
			v.errf(path+".source_address", "%s is the peer's own address: name this node's address on the link to it", p.SourceAddress)
		}
	}
	if p.BFD != nil {
		v.bfd(path+".bfd", p)
	}
}

// bfd checks a peer's BFD timers: GoBGP's BFD is single-hop only (RFC
// 5881), so a multihop peer cannot have it.
func (v *validator) bfd(path string, p *BGPPeer) {
	if p.EBGPMultihop > 0 {
		v.errf(path, "BFD here is single-hop only (RFC 5881) and this peer has ebgp_multihop %d: remove bfd, or peer with a directly connected router", p.EBGPMultihop)
	}
	v.duration(path+".min_rx", p.BFD.MinRx, minBFDTimer, maxBFDTimer, "")
	v.duration(path+".min_tx", p.BFD.MinTx, minBFDTimer, maxBFDTimer, "")
	v.intRange(path+".multiplier", p.BFD.Multiplier, 1, 255) // RFC 5880 §4.1: Detect Mult, one octet
}

// ownAddresses are the addresses this configuration says belong to this
// node, each with the field that says so: a peer at one of them would be
// a session to itself.
func ownAddresses(c *Config) map[netip.Addr]string {
	own := map[netip.Addr]string{}
	add := func(a netip.Addr, what string) {
		if a.IsValid() {
			if _, ok := own[a.WithZone("")]; !ok {
				own[a.WithZone("")] = what
			}
		}
	}
	if c.BGP != nil {
		add(c.BGP.RouterID, "bgp.router_id")
		for i, p := range c.BGP.Peers {
			add(p.SourceAddress, fmt.Sprintf("bgp.peers[%d].source_address", i))
		}
	}
	for i, in := range c.VRRP.Instances {
		add(in.UnicastSrc, fmt.Sprintf("vrrp.instances[%d].unicast_src", i))
		for j, p := range in.HeldVIPs() {
			add(p.Address.Addr(), vipPath(fmt.Sprintf("vrrp.instances[%d]", i), &in, j))
		}
	}
	for i, s := range c.Services {
		add(s.VIP, fmt.Sprintf("services[%d].vip", i))
		for j, p := range s.Listen {
			add(p.Addr(), fmt.Sprintf("services[%d].listen[%d]", i, j))
		}
	}
	return own
}

// announces checks each service's announce key against the bgp section
// and the VRRP instances.
func (v *validator) announces(c *Config) {
	held := map[netip.Addr]bool{}
	for _, in := range c.VRRP.Instances {
		for _, p := range in.HeldVIPs() {
			held[p.Address.Addr()] = true
		}
	}
	for i := range c.Services {
		s := &c.Services[i]
		path := fmt.Sprintf("services[%d].announce", i)
		a := &s.Announce
		v.oneOf(path+".when", a.When, AnnounceNever, AnnounceAlways, AnnounceMaster)
		for j, cm := range a.Communities {
			if _, err := ParseCommunity(cm); err != nil {
				v.errf(fmt.Sprintf("%s.communities[%d]", path, j), "%v", err)
			}
		}
		for j, cm := range a.LargeCommunities {
			if _, err := ParseLargeCommunity(cm); err != nil {
				v.errf(fmt.Sprintf("%s.large_communities[%d]", path, j), "%v", err)
			}
		}
		if a.When == AnnounceNever || (a.When != AnnounceAlways && a.When != AnnounceMaster) {
			continue
		}
		if c.BGP == nil {
			v.errf(path, "announce: %s needs a bgp: section with this node's asn and its peers; add one, or use announce: never", a.When)
		}
		for _, p := range s.Pairs() {
			if a.When == AnnounceMaster && p.Addr().IsValid() && !held[p.Addr()] {
				v.errf(path, "announce: master follows the VRRP instance holding the vip, and no instance has %s in its virtual_ips: add it to one, or use announce: always", p.Addr())
			}
		}
	}
}
