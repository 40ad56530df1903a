package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/service"
	"github.com/halb-lb/halb/vrrp"
)

// Status is what `halb status` shows: the VRRP instances, the data path
// and the backends' health. Its JSON is the control socket's contract.
type Status struct {
	Datapath string `json:"datapath"`
	// Hooks: where and how the eBPF programs are attached ("eth0: xdp
	// native"); none for IPVS.
	Hooks     []string         `json:"hooks"`
	Instances []InstanceStatus `json:"instances"`
	Backends  []BackendStatus  `json:"backends"`
	// Services is what the data path serves, with its counters.
	Services []service.Report `json:"services"`
	// BGP is the speaker's sessions and announcements; absent without a
	// bgp: section.
	BGP *BGPStatus `json:"bgp,omitempty"`
}

// InstanceStatus is one VRRP instance.
type InstanceStatus struct {
	Name       string            `json:"name"`
	Interface  string            `json:"interface"`
	VRID       int               `json:"vrid"`
	State      string            `json:"state"`
	Priority   int               `json:"priority"`
	Since      time.Time         `json:"since"`
	Reason     string            `json:"reason"`
	Faults     []string          `json:"faults"`
	VirtualIPs []string          `json:"virtual_ips"`
	Sent       uint64            `json:"adverts_sent"`
	Received   uint64            `json:"adverts_received"`
	Dropped    map[string]uint64 `json:"adverts_dropped"`
	// Conflicts counts, by VIP, ARP / NA claims on a VIP held as Master
	// from another MAC (each answered, rate-limited, with an announcement).
	Conflicts map[string]uint64 `json:"address_conflicts"`
	// Tracking is each tracker's state (interface, script, file,
	// process), in configuration order.
	Tracking []string `json:"tracking,omitempty"`
	// Released: `halb vrrp release` holds it in BACKUP until resume.
	Released bool `json:"released,omitempty"`
}

// ShownState is the state as `halb status` and the status page show it:
// a released instance's BACKUP says that `halb vrrp release` holds it
// there, or its VIPs' absence would read as an ordinary failover.
func (s InstanceStatus) ShownState() string {
	if s.Released {
		return s.State + " (released)"
	}
	return s.State
}

// BackendStatus is one backend's health.
type BackendStatus struct {
	Service   string `json:"service"`
	Backend   string `json:"backend"`
	Check     string `json:"check"`
	Health    string `json:"health"`
	Confirmed bool   `json:"confirmed"`
	LastError string `json:"last_error,omitempty"`
	// Override is the run-time override (`halb backend drain|weight`), if
	// any; a backend without a health check has a row only with one.
	Override *Override `json:"override,omitempty"`
}

// observed is what `halb status` and /metrics read from the running
// daemon, each part at the moment it is asked. The daemon is one; the
// golden test (golden_test.go) gives fixed parts, so that what an operator
// reads is compared byte for byte across changes.
type observed interface {
	// servingDatapath is the data path's name as it opened, "" before,
	// and the data path itself, nil before.
	servingDatapath() (string, service.Datapath)
	instances() []vrrp.Status
	backends() []health.Status
	// acceptDrops is, by VIP, what the Accept_Mode filter dropped.
	acceptDrops() map[netip.Addr]uint64
	// bgpState is the BGP speaker's sessions and announcements; nil
	// without a bgp: section.
	bgpState() *BGPStatus
	// backendOverrides are the backends' run-time overrides.
	backendOverrides() map[health.Key]Override
}

func (d *Daemon) servingDatapath() (string, service.Datapath) {
	var name string
	var dp service.Datapath
	if n := d.datapathName.Load(); n != nil {
		name = *n
	}
	if p := d.datapath.Load(); p != nil {
		dp = *p
	}
	return name, dp
}

func (d *Daemon) instances() []vrrp.Status {
	if d.vrrp == nil {
		return nil
	}
	var out []vrrp.Status
	for _, in := range d.vrrp.instances() {
		out = append(out, in.Status())
	}
	return out
}

func (d *Daemon) backends() []health.Status {
	if d.health == nil {
		return nil
	}
	return d.health.Snapshot()
}

func (d *Daemon) acceptDrops() map[netip.Addr]uint64 {
	if d.accept == nil {
		return nil
	}
	return d.accept.dropped()
}

func (d *Daemon) bgpState() *BGPStatus {
	if r := d.bgp.Load(); r != nil {
		return r.status()
	}
	return nil
}

func (d *Daemon) backendOverrides() map[health.Key]Override { return d.overrides.snapshot() }

func (d *Daemon) status() Status { return statusOf(d, d.log) }

// statusOf is what `halb status` shows of o.
func statusOf(o observed, log *slog.Logger) Status {
	s := Status{Datapath: "none", Hooks: []string{}, Instances: []InstanceStatus{}, Backends: []BackendStatus{}, Services: []service.Report{}}
	name, dp := o.servingDatapath()
	if name != "" {
		s.Datapath = name
	}
	for _, st := range o.instances() {
		is := InstanceStatus{Name: st.Name, Interface: st.Interface, VRID: st.VRID, State: st.State.String(),
			Priority: int(st.Priority), Since: st.Since, Reason: st.Reason, Faults: st.Faults,
			Sent: st.Sent, Received: st.Received, Dropped: st.Drops, Conflicts: st.Conflicts, Tracking: st.Tracking, Released: st.Released}
		for _, p := range st.VirtualIPs {
			is.VirtualIPs = append(is.VirtualIPs, p.String())
		}
		s.Instances = append(s.Instances, is)
	}
	for _, b := range o.backends() {
		bs := BackendStatus{Service: b.Service, Backend: b.Backend.String(), Check: b.Check,
			Health: b.State.String(), Confirmed: b.Confirmed}
		if b.Last.Err != nil {
			bs.LastError = b.Last.Err.Error()
		}
		s.Backends = append(s.Backends, bs)
	}
	s.Backends = overrideStatus(s.Backends, o.backendOverrides())
	s.BGP = o.bgpState()
	if dp != nil {
		s.Hooks = append(s.Hooks, dp.Hooks()...)
		reports, err := dp.Report()
		if err != nil {
			log.Warn("status: reading the data path's counters", "err", err)
		}
		for _, r := range reports {
			if r.Backends == nil {
				r.Backends = []service.BackendReport{} // [] in the JSON, not null
			}
			s.Services = append(s.Services, r)
		}
	}
	return s
}

// listenControl makes the control socket, root only (mode 0600). The
// caller holds the socket's lock, so a socket there is one that a killed
// halb left behind, and only that is removed: anything else at the path
// (a file the path names by mistake) is refused and left as it is, and so
// is a socket that something still answers on.
func listenControl(path string) (net.Listener, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, fmt.Errorf("control.socket: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control.socket: %s is answered by a process that holds no halb lock on it (an older halb?); stop it, or give this halb a control.socket of its own", path)
		}
		// Between the look and the remove only root (or halb's user)
		// could swap the socket: checkPrivateDir holds for its directory.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("control socket %s: remove the one a killed halb left: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// controlHandler answers `halb status`, `halb drain`, `halb undrain`,
// `halb backend`, `halb vrrp` and `halb flows`.
func (d *Daemon) controlHandler() http.Handler {
	mux := statusHandler(d, d.log)
	mux.HandleFunc("POST /v1/bgp/drain", d.serveDrain)
	mux.HandleFunc("POST /v1/bgp/undrain", d.serveUndrain)
	mux.HandleFunc("POST /v1/backend/{action}", d.serveOverride)
	mux.HandleFunc("POST /v1/vrrp/{action}", d.serveVRRP)
	mux.HandleFunc("GET /v1/flows", d.serveFlows)
	return mux
}

func statusHandler(o observed, log *slog.Logger) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(statusOf(o, log))
	})
	return mux
}
