package service

import (
	"errors"
	"net/netip"
)

// Report is one service as a data path serves it, with what the kernel
// counted for it: the eBPF data path's per-CPU counters, or IPVS's stats.
type Report struct {
	Name     string
	Key      Key
	Datapath string // the Name of the data path serving it
	Stats    Stats
	Backends []BackendReport
}

// BackendReport is one backend of a reported service.
type BackendReport struct {
	Addr   netip.AddrPort
	Weight uint32
	// Live: it takes new flows. One that is not (weight 0, or a DR
	// backend whose MAC is not known yet) keeps the flows it has.
	Live  bool
	Stats Stats
	// Problem is why the data path cannot serve the backend now, or not
	// fully: no route to it, routed through an interface the data path
	// is not on, no neighbour entry, its interface missing. "" when
	// nothing is wrong. The data path tries again by itself.
	Problem string
}

// Stats are a data path's counters for a service or a backend, since the
// service was programmed.
type Stats struct {
	Packets  uint64 // toward the backends (IPVS: incoming)
	Bytes    uint64 // of those packets
	NewFlows uint64 // flows (IPVS: connections) scheduled
	// Connections the kernel tracks now: IPVS only. The eBPF data path's
	// flows live in an LRU that is not counted per backend.
	Active   uint64
	Inactive uint64
}

// A Reporter is a Datapath that can say what it serves and what it
// counted. Both the eBPF and the IPVS data paths are.
type Reporter interface {
	Report() ([]Report, error)
}

// Report is what both halves report, the first's services first.
func (s *Split) Report() ([]Report, error) {
	var out []Report
	var errs []error
	for _, dp := range s.halves() {
		if r, ok := dp.(Reporter); ok {
			rep, err := r.Report()
			out = append(out, rep...)
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// A Hooker is a Datapath that hooks into network interfaces, and says
// where and how: "eth0: xdp native". IPVS, inside the stack, is not one.
type Hooker interface {
	Hooks() []string
}

// Hooks are the hooks of both halves.
func (s *Split) Hooks() []string {
	var out []string
	for _, dp := range s.halves() {
		if h, ok := dp.(Hooker); ok {
			out = append(out, h.Hooks()...)
		}
	}
	return out
}
