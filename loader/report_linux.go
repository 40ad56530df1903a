package loader

import "github.com/halb-lb/halb/service"

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

// Hooks says where the programs are attached and how: "eth0: xdp native".
func (d *Datapath) Hooks() []string {
	var out []string
	for _, a := range d.Attachments() {
		out = append(out, a.Interface+": "+string(a.Hook))
	}
	return out
}
