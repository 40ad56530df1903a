package loader

import (
	"slices"

	"github.com/halb-lb/halb/service"
)

var _ service.Reporter = (*Datapath)(nil)

// Report is Status in the data-path-neutral form the daemon shows.
func (d *Datapath) Report() ([]service.Report, error) {
	status, err := d.Status()
	if err != nil {
		return nil, err
	}
	name := d.Name()
	out := make([]service.Report, 0, len(status))
	for _, s := range status {
		r := service.Report{Name: s.Name, Key: s.Key, Datapath: name, Stats: s.Stats.report()}
		for _, b := range s.Backends {
			r.Backends = append(r.Backends, service.BackendReport{Addr: b.Addr, Weight: b.Weight, Live: b.Live, Stats: b.Stats.report(), Problem: b.Problem})
		}
		out = append(out, r)
	}
	return out, nil
}

func (s Stats) report() service.Stats {
	return service.Stats{Packets: s.Packets, Bytes: s.Bytes, NewFlows: s.NewFlows}
}

var _ service.Hooker = (*Datapath)(nil)

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
