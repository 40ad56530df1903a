package loader

import (
	"net/netip"
	"slices"

	"github.com/halb-lb/halb/service"
)

// desiredServices are the services of the last Apply, kept for as long as
// the daemon runs: a netlink event applies some of them again, and the
// next Apply is compared with them (unchanged). An IPv4 backend whose
// weight fits 16 bits, as every configured one does, is packed in 8 bytes
// (packedBackend) where a service.Backend takes 32: 1000 services of 100
// backends keep 0.9 MB, not 3.3. The other backends (IPv6, 4in6, heavier)
// are kept as given.
type desiredServices struct {
	// list is the services as given, but for the backends of those
	// packed, which are in packed.
	list   []service.Service
	spans  []packedSpan // list's, one each
	packed []packedBackend
}

// packedSpan is where a service's backends are in desiredServices.packed,
// when they are.
type packedSpan struct {
	from, to int32
	packed   bool
}

// packedBackend is a service.Backend of an IPv4 address and a weight
// under 1<<16.
type packedBackend struct {
	addr   [4]byte
	port   uint16
	weight uint16
}

// packs reports whether b has a packedBackend of its own.
func packs(b service.Backend) bool { return b.Addr.Is4() && b.Weight <= 0xffff }

func (p packedBackend) is(b service.Backend) bool {
	return p.backend() == b
}

func (p packedBackend) backend() service.Backend {
	return service.Backend{Addr: netip.AddrFrom4(p.addr), Port: p.port, Weight: uint32(p.weight)}
}

// newDesired keeps services, which the caller may change after Apply
// returns; nil for nil. The services' backends kept as given go in one
// slice, and the packed ones in another: kept as long as the services
// are, 1000 slices of their own would share the heap's spans with what an
// Apply allocates and frees, and hold their pages.
func newDesired(services []service.Service) *desiredServices {
	if services == nil {
		return nil
	}
	d := &desiredServices{list: slices.Clone(services), spans: make([]packedSpan, len(services))}
	npacked, nkept := 0, 0
	for _, s := range services {
		if slices.ContainsFunc(s.Backends, func(b service.Backend) bool { return !packs(b) }) {
			nkept += len(s.Backends)
		} else {
			npacked += len(s.Backends)
		}
	}
	d.packed = make([]packedBackend, 0, npacked)
	kept := make([]service.Backend, 0, nkept)
	for i := range d.list {
		s := &d.list[i]
		if slices.ContainsFunc(s.Backends, func(b service.Backend) bool { return !packs(b) }) {
			at := len(kept)
			kept = append(kept, s.Backends...)
			s.Backends = kept[at:len(kept):len(kept)]
			continue
		}
		span := packedSpan{from: int32(len(d.packed)), packed: true}
		for _, b := range s.Backends {
			d.packed = append(d.packed, packedBackend{addr: b.Addr.As4(), port: b.Port, weight: uint16(b.Weight)})
		}
		span.to = int32(len(d.packed))
		d.spans[i], s.Backends = span, nil
	}
	return d
}

// same reports whether services are the ones kept, in the same order, each
// with the same backends in the same order (Apply keeps VIPs unmapped).
func (d *desiredServices) same(services []service.Service) bool {
	if len(services) != len(d.list) {
		return false
	}
	for i := range services {
		a, b := &d.list[i], &services[i]
		if a.Name != b.Name || a.Key.VIP.Unmap() != b.Key.VIP.Unmap() || a.Key.Port != b.Key.Port ||
			a.Key.Proto != b.Key.Proto || a.Scheduler != b.Scheduler || a.Forward != b.Forward ||
			a.Persistence != b.Persistence || a.SNAT != b.SNAT {
			return false
		}
		span := d.spans[i]
		if !span.packed {
			if !slices.Equal(a.Backends, b.Backends) {
				return false
			}
			continue
		}
		if !slices.EqualFunc(d.packed[span.from:span.to], b.Backends, packedBackend.is) {
			return false
		}
	}
	return true
}

// services are the services kept, each with its backends when only is nil
// or holds its key (its VIP unmapped), else with none (nil when there are
// none): a netlink event
// applies a few services again, and unpacking all 100 000 backends for it
// would leave 3 MB to collect.
func (d *desiredServices) services(only map[service.Key]bool) []service.Service {
	if d == nil {
		return nil
	}
	out := slices.Clone(d.list)
	wanted := func(s service.Service) bool {
		k := s.Key
		k.VIP = k.VIP.Unmap()
		return only == nil || only[k]
	}
	n := 0
	for i, s := range out {
		if d.spans[i].packed && wanted(s) {
			n += int(d.spans[i].to - d.spans[i].from)
		}
	}
	all := make([]service.Backend, 0, n)
	for i := range out {
		span := d.spans[i]
		if !span.packed || !wanted(out[i]) {
			continue
		}
		at := len(all)
		for _, p := range d.packed[span.from:span.to] {
			all = append(all, p.backend())
		}
		out[i].Backends = all[at:len(all):len(all)]
	}
	return out
}
