package service

import (
	"net/netip"
	"slices"
)

// Reporter is the part of a Datapath that says what it serves and what
// it counted: the one status model, which the data paths make, Split
// merges, and the daemon shows as it is (`halb status`, its JSON, and
// /metrics). Nothing in it names a data path: a figure one data path does
// not keep is absent (nil Conns, no Counter), not zero.
type Reporter interface {
	// Report is each service the data path holds, with its backends.
	Report() ([]Report, error)
	// Hooks says where and how the data path hooks into network
	// interfaces ("eth0: xdp native"); none for one inside the stack
	// (IPVS).
	Hooks() []string
	// Counters are the data path's own counters beside its services'
	// (the eBPF data path's drops, by reason); none when it keeps none.
	Counters() ([]Counter, error)
}

// Report is one service as a data path serves it, with what the kernel
// counted for it: the eBPF data path's per-CPU counters, or IPVS's stats.
// Its JSON is part of the control socket's contract (`halb status
// --json`).
type Report struct {
	Name     string `json:"name"`
	Key      Key    `json:"key"`
	Datapath string `json:"datapath"` // the Name of the data path serving it
	Stats
	Backends []BackendReport `json:"backends"`
}

// BackendReport is one backend of a reported service.
type BackendReport struct {
	Addr   netip.AddrPort `json:"backend"`
	Weight uint32         `json:"weight"`
	// Live: it takes new flows. One that is not (weight 0, or a DR
	// backend whose MAC is not known yet) keeps the flows it has.
	Live bool `json:"live"`
	Stats
	// Replies are the packets and bytes of the backend's replies that
	// the data path translated back to the clients (the eBPF data
	// path's forward: nat and fullnat); nil where it translates none.
	Replies *Stats `json:"replies,omitempty"`
	// Problem is why the data path cannot serve the backend now, or not
	// fully: no route to it, routed through an interface the data path
	// is not on, no neighbour entry, its interface missing. "" when
	// nothing is wrong. The data path tries again by itself.
	Problem string `json:"problem,omitempty"`
}

// Stats are a data path's counters for a service or a backend, since the
// service was programmed.
type Stats struct {
	Packets  uint64 `json:"packets"`   // toward the backends (IPVS: incoming)
	Bytes    uint64 `json:"bytes"`     // of those packets
	NewFlows uint64 `json:"new_flows"` // flows (IPVS: connections) scheduled
	*Conns
}

// Conns are the connections a data path tracks for a backend now: gauges,
// kept by IPVS. The eBPF data path's flows live in an LRU that is not
// counted per backend, so its backends have none (nil).
type Conns struct {
	Active   uint64 `json:"active_connections"`
	Inactive uint64 `json:"inactive_connections"`
}

// Counter is a family of counters a data path keeps beside its services',
// one figure per value of a label: the eBPF data path's drops, by reason.
// /metrics shows it as halb_datapath_<Name>_total{<Label>="<value>"}.
type Counter struct {
	Name   string // "drops"
	Help   string // the metric's help text
	Label  string // "reason"
	Values map[string]uint64
}

// mergeCounters adds the families of more to those of into, summing the
// figures of a family both have.
func mergeCounters(into, more []Counter) []Counter {
	for _, c := range more {
		i := slices.IndexFunc(into, func(have Counter) bool { return have.Name == c.Name })
		if i < 0 {
			into = append(into, c)
			continue
		}
		sum := make(map[string]uint64, len(into[i].Values))
		for _, values := range []map[string]uint64{into[i].Values, c.Values} {
			for k, n := range values {
				sum[k] += n
			}
		}
		into[i].Values = sum
	}
	return into
}
