// Package config is halb's configuration contract: the types a YAML file
// decodes into, their defaults, and the validation that knows the protocols
// behind them (VRRP RFC 3768 / RFC 5798, IPVS, Maglev).
//
// Loading is strict: an unknown key is an error, not a silently ignored line,
// and every problem in a file is reported at once with its field path and,
// where it can be known, its line. This package must never change the
// host, open a socket or look at an interface: it reads the file it is
// given, the environment and, to check them, the programs the file names
// (internal/script), so that `halb check` can run anywhere.
package config

import (
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is one complete halb configuration. The `mapstructure` tag of a
// field is its key in the file (the name is that of the decoder halb
// once used; the decoder in decode.go and the tests read it).
type Config struct {
	Log      Log       `mapstructure:"log"`
	Control  Control   `mapstructure:"control"`
	Datapath Datapath  `mapstructure:"datapath"`
	VRRP     VRRP      `mapstructure:"vrrp"`
	Services []Service `mapstructure:"services"`
	// BGP is nil when the file has no bgp: section: nothing is announced
	// and no BGP socket is opened.
	BGP *BGP `mapstructure:"bgp"`
}

// Log sets the daemon's logging; a reload changes the level.
type Log struct {
	Level  string `mapstructure:"level"`  // debug | info | warn | error
	Format string `mapstructure:"format"` // text | json
}

// Control is how a person or a monitoring system reaches the daemon.
type Control struct {
	Socket  string `mapstructure:"socket"`  // unix socket for `halb status`
	Metrics string `mapstructure:"metrics"` // Prometheus host:port; "" = off
}

// Datapath modes.
const (
	ModeAuto = "auto"
	ModeXDP  = "xdp"
	ModeTC   = "tc"
	ModeIPVS = "ipvs"
)

// Datapath chooses and sizes the layer-4 data path.
type Datapath struct {
	Mode             string   `mapstructure:"mode"` // auto | xdp | tc | ipvs
	Interfaces       []string `mapstructure:"interfaces"`
	XDPMode          string   `mapstructure:"xdp_mode"` // auto | native | generic
	BPFFS            string   `mapstructure:"bpffs"`
	ConntrackEntries int      `mapstructure:"conntrack_entries"`
	MaglevTableSize  int      `mapstructure:"maglev_table_size"`
	// MaxBackends sizes the eBPF maps of backends: how many backend
	// records all the services the eBPF data path serves may hold
	// together (IDs 1 to MaxBackends-1).
	MaxBackends int `mapstructure:"max_backends"`
	// SNATPorts is the range of source ports forward: fullnat gives its
	// flows toward each backend, "first-last" (SNATPortRange).
	SNATPorts string `mapstructure:"snat_ports"`
}

// SNATPortRange reads SNATPorts; ok is false when it is not "first-last"
// with 1 <= first <= last <= 65535.
func (d Datapath) SNATPortRange() (first, last int, ok bool) {
	a, b, found := strings.Cut(d.SNATPorts, "-")
	if !found {
		return 0, 0, false
	}
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || first < 1 || last < first || last > 65535 {
		return 0, 0, false
	}
	return first, last, true
}

// VRRP holds the virtual router instances and the groups that move together.
type VRRP struct {
	Instances  []Instance  `mapstructure:"instances"`
	SyncGroups []SyncGroup `mapstructure:"sync_groups"`
}

// Instance is one virtual router: one VRID on one interface for one address
// family (RFC 5798 §2.1: IPv4 and IPv6 virtual routers are separate).
type Instance struct {
	Name              string           `mapstructure:"name"`
	Interface         string           `mapstructure:"interface"`
	VRID              int              `mapstructure:"vrid"`
	Version           int              `mapstructure:"version"`
	Priority          int              `mapstructure:"priority"`
	AdvertInterval    time.Duration    `mapstructure:"advert_interval"`
	Preempt           bool             `mapstructure:"preempt"`
	PreemptDelay      time.Duration    `mapstructure:"preempt_delay"`
	Accept            bool             `mapstructure:"accept"`
	UnicastSrc        netip.Addr       `mapstructure:"unicast_src"`
	UnicastPeers      []netip.Addr     `mapstructure:"unicast_peers"`
	VirtualIPs        []VirtualIP      `mapstructure:"virtual_ips"`
	TrackInterfaces   []TrackInterface `mapstructure:"track_interfaces"`
	TrackScripts      []TrackScript    `mapstructure:"track_scripts"`
	Notify            string           `mapstructure:"notify"`
	UseVMAC           bool             `mapstructure:"use_vmac"`
	VMACXmitBase      bool             `mapstructure:"vmac_xmit_base"`
	AuthPass          string           `mapstructure:"auth_pass"`
	GARPMasterDelay   time.Duration    `mapstructure:"garp_master_delay"`
	GARPMasterRepeat  int              `mapstructure:"garp_master_repeat"`
	GARPMasterRefresh time.Duration    `mapstructure:"garp_master_refresh"`

	// The per-state notify scripts (keepalived's notify_master, ...):
	// argv lists run with no added arguments, each before Notify.
	NotifyMaster   []string       `mapstructure:"notify_master"`
	NotifyBackup   []string       `mapstructure:"notify_backup"`
	NotifyFault    []string       `mapstructure:"notify_fault"`
	NotifyStop     []string       `mapstructure:"notify_stop"`
	TrackFiles     []TrackFile    `mapstructure:"track_files"`
	TrackProcesses []TrackProcess `mapstructure:"track_processes"`

	// Held while MASTER beside the VIPs (vrrp/extras.go): the excluded
	// VIPs are not in the advert, so they may be of the other family
	// (keepalived's virtual_ipaddress_excluded, virtual_routes,
	// virtual_rules).
	VirtualIPsExcluded []VirtualIP    `mapstructure:"virtual_ips_excluded"`
	VirtualRoutes      []VirtualRoute `mapstructure:"virtual_routes"`
	VirtualRules       []VirtualRule  `mapstructure:"virtual_rules"`
}

// IPv6 reports whether the instance is an IPv6 virtual router. The family
// is the family of its virtual addresses.
func (in *Instance) IPv6() bool {
	return len(in.VirtualIPs) > 0 && in.VirtualIPs[0].Address.Addr().Is6()
}

// AdvertPrefixes are the virtual_ips, whose addresses the advert carries
// (the excluded ones are not among them).
func (in *Instance) AdvertPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(in.VirtualIPs))
	for i, v := range in.VirtualIPs {
		out[i] = v.Address
	}
	return out
}

// HeldVIPs are every address the instance holds while MASTER: the
// virtual_ips, then the virtual_ips_excluded.
func (in *Instance) HeldVIPs() []VirtualIP {
	return append(slices.Clip(in.VirtualIPs), in.VirtualIPsExcluded...)
}

// VirtualIP is one virtual address, held while MASTER on the instance's
// interface or, with Interface, on another one (keepalived's `dev`). A
// plain "192.0.2.100/24" in YAML is the address alone.
type VirtualIP struct {
	Address   netip.Prefix `mapstructure:"address"`
	Interface string       `mapstructure:"interface"` // "" = the instance's
}

// VirtualRoute is a route added on entering MASTER and removed on leaving
// it (keepalived's virtual_routes). Blackhole routes have no Via and no
// Interface; the others need at least one of them.
type VirtualRoute struct {
	To        netip.Prefix `mapstructure:"to"`
	Via       netip.Addr   `mapstructure:"via"`
	Interface string       `mapstructure:"interface"`
	Src       netip.Addr   `mapstructure:"src"`
	Table     int          `mapstructure:"table"` // 0 = main
	Metric    int          `mapstructure:"metric"`
	Blackhole bool         `mapstructure:"blackhole"`
}

// VirtualRule is a policy routing rule (`ip rule`) added on entering
// MASTER and removed on leaving it (keepalived's virtual_rules). An unset
// From or To matches every address; Priority 0 lets the kernel choose.
type VirtualRule struct {
	From     netip.Prefix `mapstructure:"from"`
	To       netip.Prefix `mapstructure:"to"`
	Table    int          `mapstructure:"table"`
	Priority int          `mapstructure:"priority"`
	IIF      string       `mapstructure:"iif"`
	OIF      string       `mapstructure:"oif"`
	FWMark   int          `mapstructure:"fwmark"`
}

// TrackInterface lowers the priority by Weight when the interface goes down,
// or puts the instance in FAULT when Weight is 0 (a plain name in YAML).
type TrackInterface struct {
	Name   string `mapstructure:"name"`
	Weight int    `mapstructure:"weight"`
}

// TrackScript runs Command every Interval; after Fall failures it lowers the
// priority by Weight (or faults the instance when Weight is 0), after Rise
// successes it restores it.
type TrackScript struct {
	Command  []string      `mapstructure:"command"`
	Interval time.Duration `mapstructure:"interval"`
	Timeout  time.Duration `mapstructure:"timeout"`
	Rise     int           `mapstructure:"rise"`
	Fall     int           `mapstructure:"fall"`
	Weight   int           `mapstructure:"weight"`
}

// TrackFile reads an integer N from Path (keepalived's track_file): the
// priority moves by N × Weight, or, with Weight 0, a non-zero N faults the
// instance.
type TrackFile struct {
	Path   string `mapstructure:"path"`
	Weight int    `mapstructure:"weight"`
}

// TrackProcess counts the processes named Name (and, when Args is given,
// run with exactly those arguments) in /proc (keepalived's
// track_process): fewer than MinCount for Delay lowers the priority by
// Weight, or faults the instance when Weight is 0; a positive Weight is
// added while there are enough.
type TrackProcess struct {
	Name     string        `mapstructure:"name"`
	Args     []string      `mapstructure:"args"`
	MinCount int           `mapstructure:"min_count"`
	Weight   int           `mapstructure:"weight"`
	Delay    time.Duration `mapstructure:"delay"`
}

// SyncGroup makes its instances change state together. Its notify
// scripts run when the group as a whole changes state.
type SyncGroup struct {
	Name         string   `mapstructure:"name"`
	Instances    []string `mapstructure:"instances"`
	NotifyMaster []string `mapstructure:"notify_master"`
	NotifyBackup []string `mapstructure:"notify_backup"`
	NotifyFault  []string `mapstructure:"notify_fault"`
	NotifyStop   []string `mapstructure:"notify_stop"`
}

// Service is one virtual service: traffic to VIP:Port/Protocol is spread
// over the backends.
type Service struct {
	Name         string         `mapstructure:"name"`
	VIP          netip.Addr     `mapstructure:"vip"`
	Port         int            `mapstructure:"port"`
	Protocol     string         `mapstructure:"protocol"`  // tcp | udp
	Scheduler    string         `mapstructure:"scheduler"` // see schedulers
	Forward      string         `mapstructure:"forward"`   // dr | tun | nat | fullnat
	Persistence  time.Duration  `mapstructure:"persistence"`
	Quorum       int            `mapstructure:"quorum"`
	SorryBackend netip.AddrPort `mapstructure:"sorry_backend"`
	// SNATAddress is forward: fullnat's source address toward the
	// backends; unset, the address the kernel sends from toward each.
	SNATAddress netip.Addr  `mapstructure:"snat_address"`
	Backends    []Backend   `mapstructure:"backends"`
	HealthCheck HealthCheck `mapstructure:"health_check"`
	// Announce says when the VIP is announced over BGP as a host route
	// (bgp.go).
	Announce Announce `mapstructure:"announce"`
	// Listen, in place of VIP and Port, serves the one definition on
	// several VIP:port pairs (keepalived's virtual_server_group): see
	// Pairs.
	Listen []netip.AddrPort `mapstructure:"listen"`
}

// Backend is one real server. Weight 0 drains it: no new flows, existing
// flows stay.
type Backend struct {
	Address netip.Addr `mapstructure:"address"`
	Port    int        `mapstructure:"port"`
	Weight  int        `mapstructure:"weight"`
}

// HealthCheck decides whether a backend takes new flows.
type HealthCheck struct {
	Type         string        `mapstructure:"type"` // tcp | http | https | udp | exec | none
	Interval     time.Duration `mapstructure:"interval"`
	Timeout      time.Duration `mapstructure:"timeout"`
	Rise         int           `mapstructure:"rise"`
	Fall         int           `mapstructure:"fall"`
	Path         string        `mapstructure:"path"`
	ExpectStatus []int         `mapstructure:"expect_status"`
	Command      []string      `mapstructure:"command"`
	// Port is the port the check connects to instead of the backend's
	// (keepalived's connect_port); 0 is the backend's.
	Port int `mapstructure:"port"`
	// Source is the address the check is sent from (keepalived's
	// bindto); unset, the kernel chooses.
	Source netip.Addr `mapstructure:"source"`
	// URLs are an http or https check's requests, all of which must
	// pass; written in place of Path and ExpectStatus (Requests).
	URLs []URLCheck `mapstructure:"urls"`
}

// defaultConfig holds the defaults of the keys that sit outside lists.
// HALB_* environment variables override these keys (envKeys) whether
// the file writes them or not.
var defaultConfig = Config{
	Log:     Log{Level: "info", Format: "text"},
	Control: Control{Socket: "/run/halb/halb.sock"},
	Datapath: Datapath{
		Mode:             ModeAuto,
		Interfaces:       []string{},
		XDPMode:          "auto",
		BPFFS:            "/sys/fs/bpf/halb",
		ConntrackEntries: 65536,
		MaglevTableSize:  65537,
		MaxBackends:      4096,
		SNATPorts:        "1024-32767",
	},
}

// Defaults of list items. keepalived's defaults where halb has the same
// knob (priority 100, advert 1s, preempt on, GARP 5 × after 5s), so that a
// migrated instance behaves as it did. What is derived from other keys
// (an instance's version, a backend's port, a health check's type) is
// filled in as the item is decoded (decoder.end).
var (
	defaultInstance = Instance{
		Priority:         100,
		AdvertInterval:   time.Second,
		Preempt:          true,
		GARPMasterDelay:  5 * time.Second,
		GARPMasterRepeat: 5,
	}
	defaultTrackScript = TrackScript{Interval: 2 * time.Second, Timeout: time.Second, Rise: 1, Fall: 1}

	// keepalived's track_file weight is 1: the file's number is the
	// weight. A process is missed as an interface or a script is: weight
	// 0, FAULT.
	defaultTrackFile    = TrackFile{Weight: 1}
	defaultTrackProcess = TrackProcess{MinCount: 1}

	defaultService     = Service{Protocol: "tcp", Scheduler: "mh", Forward: "dr", Quorum: 1}
	defaultBackend     = Backend{Weight: 1}
	defaultHealthCheck = HealthCheck{
		Interval:     2 * time.Second,
		Timeout:      time.Second,
		Rise:         2,
		Fall:         3,
		Path:         "/",
		ExpectStatus: []int{200},
	}
)

// setDefaults gives v, a Config or a list item about to be decoded, its
// defaults; each gets its own copy of a default list.
func setDefaults(v reflect.Value) {
	switch p := v.Addr().Interface().(type) {
	case *Config:
		*p = defaultConfig
		p.Datapath.Interfaces = slices.Clone(defaultConfig.Datapath.Interfaces)
	case *Instance:
		*p = defaultInstance
	case *TrackScript:
		*p = defaultTrackScript
	case *TrackFile:
		*p = defaultTrackFile
	case *TrackProcess:
		*p = defaultTrackProcess
	case *Service:
		*p = defaultService
		setDefaults(reflect.ValueOf(&p.HealthCheck).Elem())
		setDefaults(reflect.ValueOf(&p.Announce).Elem())
	case *Backend:
		*p = defaultBackend
	case *HealthCheck:
		*p = defaultHealthCheck
		p.ExpectStatus = slices.Clone(defaultHealthCheck.ExpectStatus)
	case *URLCheck:
		*p = URLCheck{ExpectStatus: slices.Clone(defaultHealthCheck.ExpectStatus)}
	case *BGP:
		*p = defaultBGP
	case *BGPPeer:
		*p = defaultBGPPeer
	case *BFD:
		*p = defaultBFD
	case *Announce:
		*p = defaultAnnounce
	}
}

// PlainVIPs are virtual IPs on the instance's interface, as a file's
// plain entries make them.
func PlainVIPs(prefixes ...netip.Prefix) []VirtualIP {
	out := make([]VirtualIP, len(prefixes))
	for i, p := range prefixes {
		out[i] = VirtualIP{Address: p}
	}
	return out
}

// String is the address, and the interface when it is not the
// instance's: "198.51.100.100/24 on eth1".
func (v VirtualIP) String() string {
	if v.Interface == "" {
		return v.Address.String()
	}
	return v.Address.String() + " on " + v.Interface
}
