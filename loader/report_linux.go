package loader

import (
	"slices"
	"time"

	"github.com/halb-lb/halb/service"
)

// Resync is 0: the daemon does not apply the services again while
// nothing changed. The eBPF data path follows the kernel by itself (link,
// address, route and neighbour events, retryPending while a backend cannot
// be served, the pin check) and looks at everything again every
// safetyInterval (neigh_linux.go).
func (d *Datapath) Resync() time.Duration { return 0 }

// Report is Status less what only the eBPF data path knows (ids, MACs,
// next hops).
func (d *Datapath) Report() ([]service.Report, error) {
	status, err := d.Status()
	if err != nil {
		return nil, err
	}
	out := make([]service.Report, 0, len(status))
	for _, s := range status {
		r := s.Report
		for _, b := range s.Backends {
			r.Backends = append(r.Backends, b.BackendReport)
		}
		out = append(out, r)
	}
	return out, nil
}

func (s Stats) report() service.Stats {
	return service.Stats{Packets: s.Packets, Bytes: s.Bytes, NewFlows: s.NewFlows}
}

// Counters are the drops, by reason (DropReason's names), and, while
// forward: nat services are served, the replies their backends sent back
// through the data path, by backend.
func (d *Datapath) Counters() ([]service.Counter, error) {
	drops, err := d.Drops()
	if err != nil {
		return nil, err
	}
	values := make(map[string]uint64, len(drops))
	for r, n := range drops {
		values[r.String()] = n
	}
	counters := []service.Counter{DropsCounter(values)}
	d.mu.Lock()
	replies, err := d.natRepliesCounter()
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if len(replies.Values) > 0 {
		counters = append(counters, replies)
	}
	return counters, nil
}

// DropsCounter is the counter family of the drops, values by reason
// name: its name, label and help are what the daemon shows, and the
// daemon's golden metrics build theirs with it, so that a change here
// shows there.
func DropsCounter(values map[string]uint64) service.Counter {
	return service.Counter{Name: "drops", Help: "Packets the eBPF data path dropped, by reason.", Label: "reason", Values: values}
}

// NATRepliesCounter is the counter family of the replies of forward: nat
// and fullnat backends translated back, values by backend
// ("198.51.100.11:8080/tcp"), as DropsCounter is the drops'.
func NATRepliesCounter(values map[string]uint64) service.Counter {
	return service.Counter{Name: "nat_replies", Help: "Replies of forward: nat and fullnat backends the eBPF data path translated back to their clients, by backend.", Label: "backend", Values: values}
}

// Hooks says where the programs are attached and how, "eth0: xdp
// native", and which of datapath.interfaces halb waits for, "eth1:
// missing, waiting for it", in datapath.interfaces order.
func (d *Datapath) Hooks() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, name := range d.cfg.Interfaces {
		i := slices.IndexFunc(d.ifaces, func(a *attachment) bool { return a.Interface == name })
		if i < 0 {
			out = append(out, name+": missing, waiting for it")
			continue
		}
		out = append(out, name+": "+string(d.ifaces[i].Hook))
	}
	return out
}
