package daemon

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/halb-lb/halb/bgp"
	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/service"
	"github.com/halb-lb/halb/vrrp"
)

// Metric descriptions. Counters the kernel or the instances keep are read
// at scrape time, so a scrape always sees the same figures halb status
// does.
var (
	descState       = prometheus.NewDesc("halb_vrrp_state", "1 for the state each VRRP instance is in, 0 for the others.", vrrpLabels("state"), nil)
	descPriority    = prometheus.NewDesc("halb_vrrp_priority", "Current priority, tracking included.", vrrpLabels(), nil)
	descTransitions = prometheus.NewDesc("halb_vrrp_transitions_total", "State changes.", vrrpLabels(), nil)
	descSent        = prometheus.NewDesc("halb_vrrp_adverts_sent_total", "Adverts sent.", vrrpLabels(), nil)
	descReceived    = prometheus.NewDesc("halb_vrrp_adverts_received_total", "Adverts received and accepted.", vrrpLabels(), nil)
	descDropped     = prometheus.NewDesc("halb_vrrp_adverts_dropped_total", "Adverts dropped, by reason.", vrrpLabels("reason"), nil)
	descConflicts   = prometheus.NewDesc("halb_vrrp_address_conflicts_total", "ARP / NA claims on a VIP held as Master from another MAC.", vrrpLabels("vip"), nil)
	descHealthy     = prometheus.NewDesc("halb_backend_healthy", "1 when the backend passes its health check.", []string{"service", "backend"}, nil)
	// The backends' and the services' figures are separate families, so
	// that sum by (service) of a backend family counts each packet once.
	descPackets        = prometheus.NewDesc("halb_datapath_packets_total", "Packets the data path forwarded to a backend (IPVS: incoming packets).", []string{"service", "backend"}, nil)
	descBytes          = prometheus.NewDesc("halb_datapath_bytes_total", "Bytes, as packets.", []string{"service", "backend"}, nil)
	descFlows          = prometheus.NewDesc("halb_datapath_new_flows_total", "New flows (IPVS: connections) scheduled to a backend.", []string{"service", "backend"}, nil)
	descServicePackets = prometheus.NewDesc("halb_datapath_service_packets_total", "Packets the data path matched to a service, whether or not a backend took them.", []string{"service"}, nil)
	descServiceBytes   = prometheus.NewDesc("halb_datapath_service_bytes_total", "Bytes, as service packets.", []string{"service"}, nil)
	descServiceFlows   = prometheus.NewDesc("halb_datapath_service_new_flows_total", "New flows (IPVS: connections) to a service.", []string{"service"}, nil)
	descActive         = prometheus.NewDesc("halb_datapath_active_connections", "Connections IPVS holds for a backend now, by state (active, inactive).", []string{"service", "backend", "state"}, nil)
	descAcceptDrops    = prometheus.NewDesc("halb_vrrp_accept_dropped_total", "Packets to a VIP the v3 Accept_Mode filter dropped (accept: false).", []string{"vip"}, nil)
	descBGPUp          = prometheus.NewDesc("halb_bgp_session_up", "1 while the BGP session to the peer is established.", []string{"peer"}, nil)
	descBGPPrefixes    = prometheus.NewDesc("halb_bgp_announced_prefixes", "Host routes (VIPs) this node announces over BGP now.", nil, nil)
	descBGPUpdates     = prometheus.NewDesc("halb_bgp_updates_total", "BGP UPDATE messages exchanged with the peer since it was added, by direction (sent, received).", []string{"peer", "direction"}, nil)
	descBuildInfo      = prometheus.NewDesc("halb_build_info", "Always 1; the labels say which halb runs.", []string{"version", "commit", "goversion"}, nil)
	descReloadOK       = prometheus.NewDesc("halb_config_last_reload_successful", "1 when the last read of the config file (at start or on reload) was applied, 0 when it was refused.", nil, nil)
	descReloadTime     = prometheus.NewDesc("halb_config_last_reload_success_timestamp_seconds", "When the config in force was applied (Unix time).", nil, nil)
)

// vrrpLabels are an instance's labels, as keepalived's exporters have
// them, then the series' own.
func vrrpLabels(own ...string) []string {
	return append([]string{"instance", "vrid", "interface"}, own...)
}

var vrrpStates = []vrrp.State{vrrp.Initialize, vrrp.Backup, vrrp.Master, vrrp.Fault}

// collector reads the daemon's state at scrape time.
type collector struct{ o observed }

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.o.instances() {
		collectInstance(ch, st)
	}
	for _, b := range c.o.backends() {
		v := 0.0
		if b.State == health.Healthy {
			v = 1
		}
		// Key.Backend is the backend's address and port, whichever port
		// its check reaches.
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, v, b.Service, b.Backend.String())
	}
	for vip, n := range c.o.acceptDrops() {
		ch <- prometheus.MustNewConstMetric(descAcceptDrops, prometheus.CounterValue, float64(n), vip.String())
	}
	if _, dp := c.o.servingDatapath(); dp != nil {
		c.collectDatapath(ch, dp)
	}
	if b := c.o.bgpState(); b != nil {
		collectBGP(ch, b)
	}
}

// collectInstance sends one VRRP instance's figures, each counter from
// the start: a drop reason or a VIP's conflicts at zero until they count.
func collectInstance(ch chan<- prometheus.Metric, st vrrp.Status) {
	labels := func(own ...string) []string {
		return append([]string{st.Name, strconv.Itoa(st.VRID), st.Interface}, own...)
	}
	for _, s := range vrrpStates {
		v := 0.0
		if st.State == s {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, labels(s.String())...)
	}
	ch <- prometheus.MustNewConstMetric(descPriority, prometheus.GaugeValue, float64(st.Priority), labels()...)
	ch <- prometheus.MustNewConstMetric(descTransitions, prometheus.CounterValue, float64(st.Transitions), labels()...)
	ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(st.Sent), labels()...)
	ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(st.Received), labels()...)
	for _, reason := range withKeys(vrrp.DropReasons(), st.Drops) {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Drops[reason]), labels(reason)...)
	}
	var vips []string
	for _, p := range slices.Concat(st.VirtualIPs, st.Excluded) {
		vips = append(vips, p.Addr().String())
	}
	for _, vip := range withKeys(vips, st.Conflicts) {
		ch <- prometheus.MustNewConstMetric(descConflicts, prometheus.CounterValue, float64(st.Conflicts[vip]), labels(vip)...)
	}
}

// withKeys is names and the keys of m, sorted, each once.
func withKeys(names []string, m map[string]uint64) []string {
	all := slices.Collect(maps.Keys(m))
	all = append(all, names...)
	slices.Sort(all)
	return slices.Compact(all)
}

// collectBGP sends the BGP figures, every one of them from the start
// (0 before the first session), so that a dashboard has a series to draw.
func collectBGP(ch chan<- prometheus.Metric, b *BGPStatus) {
	for _, p := range b.Peers {
		up := 0.0
		if p.State == bgp.StateEstablished {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descBGPUp, prometheus.GaugeValue, up, p.Address)
		ch <- prometheus.MustNewConstMetric(descBGPUpdates, prometheus.CounterValue, float64(p.UpdatesSent), p.Address, "sent")
		ch <- prometheus.MustNewConstMetric(descBGPUpdates, prometheus.CounterValue, float64(p.UpdatesReceived), p.Address, "received")
	}
	ch <- prometheus.MustNewConstMetric(descBGPPrefixes, prometheus.GaugeValue, float64(len(b.Routes)))
}

// byService merges the reports of a service group's VIP:port pairs,
// which share the group's name and backends, into one with their sums,
// so that each (service, backend) series is sent once (a registry
// refuses a scrape that sends one twice).
func byService(reports []service.Report) []service.Report {
	out := make([]service.Report, 0, len(reports))
	index := map[string]int{}
	for _, r := range reports {
		i, seen := index[r.Name]
		if !seen {
			index[r.Name] = len(out)
			r.Backends = slices.Clone(r.Backends)
			out = append(out, r)
			continue
		}
		into := &out[i]
		into.Stats = addStats(into.Stats, r.Stats)
		for _, b := range r.Backends {
			j := slices.IndexFunc(into.Backends, func(have service.BackendReport) bool { return have.Addr == b.Addr })
			if j < 0 {
				into.Backends = append(into.Backends, b)
				continue
			}
			into.Backends[j].Stats = addStats(into.Backends[j].Stats, b.Stats)
		}
	}
	return out
}

func addStats(a, b service.Stats) service.Stats {
	sum := service.Stats{Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes, NewFlows: a.NewFlows + b.NewFlows, Conns: a.Conns}
	if b.Conns != nil {
		c := service.Conns{Active: b.Active, Inactive: b.Inactive}
		if a.Conns != nil {
			c.Active += a.Active
			c.Inactive += a.Inactive
		}
		sum.Conns = &c
	}
	return sum
}

// collectDatapath sends what the data path counted. A failed read leaves
// its figures out of this scrape; the others' still go out.
func (c collector) collectDatapath(ch chan<- prometheus.Metric, dp service.Datapath) {
	reports, _ := dp.Report()
	for _, s := range byService(reports) {
		ch <- prometheus.MustNewConstMetric(descServicePackets, prometheus.CounterValue, float64(s.Stats.Packets), s.Name)
		ch <- prometheus.MustNewConstMetric(descServiceBytes, prometheus.CounterValue, float64(s.Stats.Bytes), s.Name)
		ch <- prometheus.MustNewConstMetric(descServiceFlows, prometheus.CounterValue, float64(s.Stats.NewFlows), s.Name)
		for _, b := range s.Backends {
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(b.Stats.Packets), s.Name, b.Addr.String())
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(b.Stats.Bytes), s.Name, b.Addr.String())
			ch <- prometheus.MustNewConstMetric(descFlows, prometheus.CounterValue, float64(b.Stats.NewFlows), s.Name, b.Addr.String())
			if b.Conns != nil {
				ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(b.Conns.Active), s.Name, b.Addr.String(), "active")
				ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(b.Conns.Inactive), s.Name, b.Addr.String(), "inactive")
			}
		}
	}
	counters, _ := dp.Counters()
	for _, c := range counters {
		desc := prometheus.NewDesc("halb_datapath_"+c.Name+"_total", c.Help, []string{c.Label}, nil)
		for value, n := range c.Values {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(n), value)
		}
	}
}

// newCheckLatency is the histogram of health-check latencies.
func newCheckLatency() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "halb_health_check_seconds",
		Help:    "Time a health check took, by service and check type.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
	}, []string{"service", "check"})
}

// listenMetrics opens the control.metrics listener; it is served once
// the daemon runs.
func listenMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("control.metrics %s: %w; free the port or configure another", addr, err)
	}
	return ln, nil
}

// primeCheckLatency makes each checked service's histogram series, so
// that a scrape has them (at zero) before the first check ends.
func primeCheckLatency(latency *prometheus.HistogramVec, services []config.Service) {
	for _, s := range services {
		if s.HealthCheck.Type != "" && s.HealthCheck.Type != health.TypeNone {
			latency.WithLabelValues(s.Name, s.HealthCheck.Type)
		}
	}
}

// BuildInfo is what halb_build_info says of the binary.
type BuildInfo struct{ Version, Commit, GoVersion string }

// Build is set by the command from what the Makefile linked in.
var Build = BuildInfo{Version: "dev", Commit: "unknown", GoVersion: runtime.Version()}

// lastReload is what became of the last read of the config file.
type lastReload struct {
	mu      sync.Mutex
	ok      bool
	applied time.Time // when the config in force was applied
}

func (r *lastReload) record(ok bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ok = ok
	if ok {
		r.applied = now
	}
}

func (r *lastReload) read() (bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok, r.applied
}

// selfCollector says which halb runs and how its last reload went.
type selfCollector struct {
	build  BuildInfo
	reload *lastReload
}

func (c selfCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c selfCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuildInfo, prometheus.GaugeValue, 1, c.build.Version, c.build.Commit, c.build.GoVersion)
	ok, at := c.reload.read()
	v := 0.0
	if ok {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(descReloadOK, prometheus.GaugeValue, v)
	ch <- prometheus.MustNewConstMetric(descReloadTime, prometheus.GaugeValue, float64(at.UnixMilli())/1000)
}

// metricsHandler serves /metrics and the status page (page.go).
func (d *Daemon) metricsHandler(latency *prometheus.HistogramVec) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, selfCollector{Build, &d.reloaded}, latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/{$}", pageHandler(d, &rateKeeper{}, d.log))
	return mux
}
