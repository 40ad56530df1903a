// Package service is the model of what halb balances and of what the
// daemon knows of a data path: virtual services and their backends, as
// both data paths (eBPF and IPVS) receive them; the one interface the
// daemon drives them through (Datapath: apply, resync, report, clean up,
// close); the one status model they report in (Report, Counter), which the
// daemon shows as it is; the flows they hold open (FlowLister, Flow, for
// `halb flows`); Split, the two at once; and the errors a caller acts on
// (ErrUnsupported, ErrClosed).
//
// It holds no kernel code and must never name a data path's
// implementation: the daemon turns configuration plus health into a
// []Service and hands it to a Datapath, and learns nothing about it beyond
// this package. A figure only one data path keeps is optional here (nil
// Conns, a Counter it alone reports), never a branch on its name.
package service

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// Protocol is a layer-4 protocol.
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// parseProtocol reads what String wrote.
func parseProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "proto(%d)", &n); err != nil {
		return 0, fmt.Errorf("protocol %q: want tcp, udp or proto(N)", s)
	}
	return Protocol(n), nil
}

// Forward is how packets reach a backend.
type Forward uint8

const (
	DR      Forward = iota // rewrite the MAC; the backend holds the VIP
	TUN                    // IPIP / IP6IP6 to the backend
	NAT                    // rewrite the destination address and port
	FullNAT                // NAT, and the source rewritten to the balancer's
)

var forwardNames = [...]string{DR: "dr", TUN: "tun", NAT: "nat", FullNAT: "fullnat"}

// String names f; a value it does not know reads "forward(N)", never a
// panic.
func (f Forward) String() string {
	if int(f) < len(forwardNames) {
		return forwardNames[f]
	}
	return fmt.Sprintf("forward(%d)", uint8(f))
}

// Key identifies a service: one (VIP, port, protocol).
type Key struct {
	VIP   netip.Addr
	Port  uint16
	Proto Protocol
}

func (k Key) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// Compare orders keys by VIP (IPv4 first), port, then protocol. It
// formats nothing: sorting a listing of flows compares keys n log n times,
// and formatting both at each made a sort of 65 536 flows take seconds.
func (k Key) Compare(o Key) int {
	if c := k.VIP.Compare(o.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Port, o.Port); c != 0 {
		return c
	}
	return cmp.Compare(k.Proto, o.Proto)
}

// MarshalText is String: a key reads "192.0.2.10:80/tcp" in the status
// JSON.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads what MarshalText wrote, for `halb status`.
func (k *Key) UnmarshalText(b []byte) error {
	addr, proto, ok := strings.Cut(string(b), "/")
	if !ok {
		return fmt.Errorf("service key %q: want address:port/protocol", b)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("service key %q: %w", b, err)
	}
	p, err := parseProtocol(proto)
	if err != nil {
		return fmt.Errorf("service key %q: %w", b, err)
	}
	*k = Key{VIP: ap.Addr(), Port: ap.Port(), Proto: p}
	return nil
}

// Service is one virtual service as a data path programs it.
type Service struct {
	Name        string
	Key         Key
	Scheduler   string // mh, rr, wrr, sh; with IPVS also lc, wlc, ...
	Forward     Forward
	Persistence time.Duration // 0 = off
	// SNAT is FullNAT's source address toward the backends; invalid:
	// the address the kernel would send from toward each.
	SNAT     netip.Addr
	Backends []Backend
}

// Backend is one real server. Weight 0 drains it: no new flows, and the
// flows it has stay.
type Backend struct {
	Addr   netip.Addr
	Port   uint16
	Weight uint32
}

func (b Backend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }

// Datapath is what the daemon drives, and all it knows of a data path:
// the eBPF one (loader), IPVS (ipvs), or both at once (Split). Each owns
// only what it created: other services in the kernel are left alone.
type Datapath interface {
	// Name is what the daemon logs: "xdp", "tc" or "ipvs".
	Name() string
	// Apply makes the kernel's services exactly these, changing only what
	// differs, so that unchanged services keep their flows.
	Apply(ctx context.Context, services []Service) error
	// Resync is how often the daemon calls Apply again with the same
	// services, to restore what others changed behind halb's back (IPVS
	// tells no one); 0 when the data path needs no such call. The daemon
	// looks at it on each of its own ticks, so it resyncs at most that
	// often.
	Resync() time.Duration
	Reporter
	Cleaner
	// Close releases the data path's handles; what is programmed stays,
	// so traffic keeps flowing while halb restarts. Apply and Report
	// after Close fail with an error that errors.Is ErrClosed.
	Close() error
}

// Cleaner is the part of a Datapath that removes everything it
// programmed, for `halb run --cleanup` and a start that failed:
// afterwards traffic to the VIPs goes to the kernel. It closes the
// Datapath too.
type Cleaner interface {
	Cleanup() error
}

// FromConfig turns configured services into the model, with every backend
// at its configured weight (health comes later, from the checker). A
// service group (listen) becomes one Service per VIP:port pair, all of
// the group's name and with the same backends: this is where groups end,
// so that no data path knows of them.
func FromConfig(cfg []config.Service) []Service {
	out := make([]Service, 0, len(cfg))
	for _, c := range cfg {
		for _, p := range c.Pairs() {
			out = append(out, fromConfig(c, p))
		}
	}
	return out
}

// fromConfig is configured service c served on the VIP:port pair p.
func fromConfig(c config.Service, p netip.AddrPort) Service {
	s := Service{
		Name:        c.Name,
		Key:         Key{VIP: p.Addr(), Port: p.Port(), Proto: TCP},
		Scheduler:   c.Scheduler,
		Persistence: c.Persistence,
	}
	if c.Protocol == "udp" {
		s.Key.Proto = UDP
	}
	switch c.Forward {
	case "tun":
		s.Forward = TUN
	case "nat":
		s.Forward = NAT
	case "fullnat":
		s.Forward = FullNAT
		s.SNAT = c.SNATAddress
	}
	for _, b := range c.Backends {
		s.Backends = append(s.Backends, Backend{Addr: b.Address, Port: uint16(b.Port), Weight: uint32(b.Weight)})
	}
	return s
}
