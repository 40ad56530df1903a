// Package service is the model of what halb balances: virtual services and
// their backends, as both data paths (eBPF and IPVS) receive them, and the
// interface the daemon drives them through.
//
// It holds no kernel code. The daemon turns configuration plus health into
// a []Service and hands it to a Datapath; it never learns which data path
// it talks to beyond its name.
package service

import (
	"context"
	"fmt"
	"net/netip"
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

// Forward is how packets reach a backend.
type Forward uint8

const (
	DR  Forward = iota // rewrite the MAC; the backend holds the VIP
	TUN                // IPIP / IP6IP6 to the backend
	NAT                // rewrite the destination address and port
)

func (f Forward) String() string {
	return [...]string{"dr", "tun", "nat"}[f]
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

// Service is one virtual service as a data path programs it.
type Service struct {
	Name        string
	Key         Key
	Scheduler   string // mh, rr, wrr, sh; with IPVS also lc, wlc, ...
	Forward     Forward
	Persistence time.Duration // 0 = off
	Backends    []Backend
}

// Backend is one real server. Weight 0 drains it: no new flows, and the
// flows it has stay.
type Backend struct {
	Addr   netip.Addr
	Port   uint16
	Weight uint32
}

func (b Backend) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, b.Port) }

// Datapath is what the daemon drives. Both implementations own only what
// they created: other services in the kernel are left alone.
type Datapath interface {
	// Name is what the daemon logs: "xdp", "tc" or "ipvs".
	Name() string
	// Apply makes the kernel's services exactly these, changing only what
	// differs, so that unchanged services keep their flows.
	Apply(ctx context.Context, services []Service) error
	// Close releases the data path's handles; what is programmed stays,
	// so traffic keeps flowing while halb restarts.
	Close() error
}

// Cleaner is a Datapath that can remove everything it programmed, for
// `halb run --cleanup`: afterwards traffic to the VIPs goes to the kernel.
type Cleaner interface {
	Cleanup() error
}

// FromConfig turns configured services into the model, with every backend
// at its configured weight (health comes later, from the checker).
func FromConfig(cfg []config.Service) []Service {
	out := make([]Service, 0, len(cfg))
	for _, c := range cfg {
		s := Service{
			Name:        c.Name,
			Key:         Key{VIP: c.VIP, Port: uint16(c.Port), Proto: TCP},
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
		}
		for _, b := range c.Backends {
			s.Backends = append(s.Backends, Backend{Addr: b.Address, Port: uint16(b.Port), Weight: uint32(b.Weight)})
		}
		out = append(out, s)
	}
	return out
}
