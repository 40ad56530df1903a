package ipvs

import (
	"errors"
	"fmt"
	"slices"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/service"
)

// Report reads IPVS's counters for the services of the last Apply, in its
// order, as `ipvsadm -Ln --stats` shows them: packets and bytes in,
// connections scheduled, and each destination's active and inactive
// connections. A service missing from IPVS's table (flushed by someone; the
// next resync restores it) is left out.
func (d *Datapath) Report() ([]service.Report, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.k == nil {
		return nil, fmt.Errorf("ipvs report: %w", service.ErrClosed)
	}
	list, err := d.k.Services()
	switch err = listed(err); {
	case errors.Is(err, ErrEmptyTable):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	have := make(map[service.Key]cfipvs.ServiceExtended, len(list))
	for _, s := range list {
		if k, ok := keyOf(s.Service); ok {
			have[k] = s
		}
	}
	var out []service.Report
	for _, t := range d.want {
		s, ok := have[t.key]
		if !ok {
			continue
		}
		dests, err := d.k.Destinations(s.Service)
		switch err = listed(err); {
		case errors.Is(err, ErrEmptyTable):
		case err != nil:
			return nil, fmt.Errorf("list the destinations of IPVS service %s: %w", t.name, err)
		}
		r := service.Report{Name: t.cfg, Key: t.key, Datapath: d.Name(), Stats: statsOf(s.Stats, s.Stats64)}
		for _, x := range dests {
			st := statsOf(x.Stats, x.Stats64)
			st.Conns = &service.Conns{Active: uint64(x.ActiveConnections), Inactive: uint64(x.InactiveConnections)}
			r.Backends = append(r.Backends, service.BackendReport{Addr: destKey(x.Destination), Weight: x.Weight, Live: x.Weight > 0, Stats: st})
		}
		slices.SortFunc(r.Backends, func(a, b service.BackendReport) int { return a.Addr.Compare(b.Addr) })
		out = append(out, r)
	}
	return out, nil
}

// statsOf prefers the 64-bit counters, which kernels since 4.1 send; the
// 32-bit ones wrap.
func statsOf(s32, s64 cfipvs.Stats) service.Stats {
	s := s64
	if s == (cfipvs.Stats{}) {
		s = s32
	}
	return service.Stats{Packets: s.IncomingPackets, Bytes: s.IncomingBytes, NewFlows: s.Connections}
}

// Hooks is none: IPVS works inside the stack.
func (d *Datapath) Hooks() []string { return nil }

// Counters is none: IPVS counts by service and backend only.
func (d *Datapath) Counters() ([]service.Counter, error) { return nil, nil }
