package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The schedulers each data path implements, as services.scheduler names
// them: the one list that the validation here, the eBPF loader, the IPVS
// data path and the split between them all read. Other packages get
// copies (BPFSchedulers, IPVSSchedulers), so none can change the list
// another reads.
var (
	// bpfSchedulers are those of the eBPF data path (all of them Maglev
	// there); IPVS has them too.
	bpfSchedulers = []string{"mh", "rr", "wrr", "sh"}
	// ipvsOnlySchedulers are those IPVS alone has.
	ipvsOnlySchedulers = []string{"lc", "wlc", "sed", "nq", "dh", "lblc", "lblcr", "fo", "ovf", "twos"}
)

// BPFSchedulers returns the schedulers of the eBPF data path (all of them
// Maglev there); IPVS has them too. The slice is the caller's own.
func BPFSchedulers() []string { return slices.Clone(bpfSchedulers) }

// IPVSSchedulers returns IPVS's schedulers, BPFSchedulers first; each is
// the kernel module ip_vs_<name>. The slice is the caller's own.
func IPVSSchedulers() []string { return slices.Concat(bpfSchedulers, ipvsOnlySchedulers) }

// Limits that come from the protocols and the kernel.
const (
	maxIfNameLen   = 15 // IFNAMSIZ less the NUL
	maxAuthPass    = 8  // RFC 2338 §5.3.7: simple text password, 8 octets
	maxTrackWeight = 254
	maxTableSize   = 1 << 24
	maxAdvertSize  = 1280 // the IPv6 minimum MTU: an advert that fits goes everywhere
)

// Bounds of the durations, so that no value can make halb spin a core or
// flood the link: each is named in configs/halb.yaml. Time-out floors are
// what a check on a LAN needs to answer at all; interval floors keep a
// check to at most 20 runs a second; the ceilings keep the arithmetic that
// spreads the runs over an interval inside int64.
const (
	minCheckInterval = 50 * time.Millisecond // health checks, track scripts
	minCheckTimeout  = 10 * time.Millisecond
	maxCheckInterval = 24 * time.Hour
	minPreemptDelay  = 10 * time.Millisecond // VRRPv3's advert unit: less cannot be told from 0
	maxPreemptDelay  = 1000 * time.Second    // keepalived's limit
	minGARPInterval  = time.Second           // garp_master_delay and garp_master_refresh, when not 0
	maxGARPInterval  = 24 * time.Hour
	// IPVS keeps a persistence time-out in milliseconds in 32 bits.
	maxPersistence = math.MaxUint32 / 1000 * time.Second
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Validate checks a decoded configuration as a whole and returns every
// problem it finds.
func Validate(c *Config) []Problem {
	v := &validator{}
	v.log(c.Log)
	v.control(c.Control)
	v.datapath(c)
	v.vrrp(&c.VRRP)
	v.services(c)
	v.bgp(c)
	v.addressClashes(c)
	v.natBackends(c)
	return v.problems
}

type validator struct{ problems []Problem }

func (v *validator) errf(path, format string, args ...any) {
	v.problems = append(v.problems, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(path, value string, allowed ...string) {
	if !slices.Contains(allowed, value) {
		v.errf(path, "%q is not one of %s", value, strings.Join(allowed, ", "))
	}
}

func (v *validator) intRange(path string, n, lo, hi int) bool {
	if n < lo || n > hi {
		v.errf(path, "%d is out of range: use %d..%d", n, lo, hi)
		return false
	}
	return true
}

func (v *validator) absPath(path, value, what string) {
	if !filepath.IsAbs(value) {
		v.errf(path, "%q must be an absolute path to %s", value, what)
	}
}

func (v *validator) ifName(path, name string) {
	switch {
	case name == "":
		v.errf(path, "an interface name is required")
	case len(name) > maxIfNameLen:
		v.errf(path, "%q is longer than the kernel's %d-character limit for interface names", name, maxIfNameLen)
	case strings.ContainsAny(name, "/: \t") || name == "." || name == "..":
		v.errf(path, "%q is not a valid interface name", name)
	}
}

func (v *validator) name(path, name, what string) {
	if !nameRE.MatchString(name) {
		v.errf(path, "%q is not a valid %s name: use 1 to 64 letters, digits, '_', '.' or '-'", name, what)
	}
}

// unicast checks an address that must name one host.
func (v *validator) unicast(path string, a netip.Addr) {
	switch {
	case !a.IsValid():
		v.errf(path, "an address is required")
	case a.IsUnspecified():
		v.errf(path, "%s is the unspecified address: name a real one", a)
	case a.IsMulticast():
		v.errf(path, "%s is a multicast address: a unicast one is needed", a)
	case a.IsLoopback():
		v.errf(path, "%s is a loopback address: it cannot be reached from the network", a)
	case a.Is4In6():
		v.errf(path, "%s is an IPv4-mapped IPv6 address: write it as %s", a, a.Unmap())
	}
}

// duration checks that d lies in lo..hi; off, when not "", is what 0
// means, and makes 0 valid too.
func (v *validator) duration(path string, d, lo, hi time.Duration, off string) bool {
	switch {
	case d == 0 && off != "":
		return true
	case d < 0:
		v.errf(path, "%s must not be negative", d)
		return false
	case d < lo || d > hi:
		if off != "" {
			v.errf(path, "%s is out of range: use 0 (%s) or %s..%s", d, off, lo, hi)
		} else {
			v.errf(path, "%s is out of range: use %s..%s", d, lo, hi)
		}
		return false
	}
	return true
}

// checkTiming checks the interval and time-out of a periodic check: the
// time-out ends a run before the next one is due.
func (v *validator) checkTiming(path string, interval, timeout time.Duration) {
	iok := v.duration(path+".interval", interval, minCheckInterval, maxCheckInterval, "")
	tok := v.duration(path+".timeout", timeout, minCheckTimeout, maxCheckInterval, "")
	if iok && tok && timeout >= interval {
		than := "longer than"
		if timeout == interval {
			than = "as long as"
		}
		v.errf(path+".timeout", "%s is %s the interval %s: a run must end before the next is due; lower the timeout or raise the interval", timeout, than, interval)
	}
}

func (v *validator) log(l Log) {
	v.oneOf("log.level", l.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", l.Format, "text", "json")
}

func (v *validator) control(c Control) {
	if c.Socket == "" {
		v.errf("control.socket", "a socket path is required (default /run/halb/halb.sock)")
	} else {
		v.absPath("control.socket", c.Socket, "the control socket")
	}
	if c.Metrics != "" {
		host, port, err := net.SplitHostPort(c.Metrics)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil || perr != nil || n < 1 || n > 65535:
			v.errf("control.metrics", "%q is not HOST:PORT (like 127.0.0.1:9130); leave it empty to turn metrics off", c.Metrics)
		case host != "" && net.ParseIP(host) == nil && host != "localhost":
			v.errf("control.metrics", "%q: listen on an IP address (or localhost), not a host name", c.Metrics)
		}
	}
}

func (v *validator) datapath(c *Config) {
	d := c.Datapath
	v.oneOf("datapath.mode", d.Mode, ModeAuto, ModeXDP, ModeTC, ModeIPVS)
	v.oneOf("datapath.xdp_mode", d.XDPMode, "auto", "native", "generic")
	seen := map[string]bool{}
	for i, name := range d.Interfaces {
		path := fmt.Sprintf("datapath.interfaces[%d]", i)
		v.ifName(path, name)
		if seen[name] {
			v.errf(path, "%q is listed twice", name)
		}
		seen[name] = true
	}
	if len(c.Services) > 0 && len(d.Interfaces) == 0 && d.Mode != ModeIPVS {
		v.errf("datapath.interfaces", "services need at least one interface where VIP traffic arrives, like [eth0]")
	}
	if d.BPFFS == "" {
		v.errf("datapath.bpffs", "a directory on a bpf filesystem is required (default /sys/fs/bpf/halb)")
	} else {
		v.absPath("datapath.bpffs", d.BPFFS, "a directory on a bpf filesystem")
	}
	v.intRange("datapath.conntrack_entries", d.ConntrackEntries, 1, maxTableSize)
	if _, _, ok := d.SNATPortRange(); !ok {
		v.errf("datapath.snat_ports", "%q is not a range of ports: write first-last, from 1 to 65535, like 1024-32767 (the default, below Linux's ip_local_port_range)", d.SNATPorts)
	}
	if v.intRange("datapath.maglev_table_size", d.MaglevTableSize, 3, maxTableSize) && !isPrime(d.MaglevTableSize) {
		v.errf("datapath.maglev_table_size", "%d is not prime: Maglev needs a prime table size, like 65537 or 251", d.MaglevTableSize)
	}
	if v.intRange("datapath.max_backends", d.MaxBackends, 2, maxTableSize) && d.Mode != ModeIPVS {
		// Every backend of a service the eBPF data path may serve takes
		// one record, and ID 0 is "no backend". Services with an
		// IPVS-only scheduler go to IPVS (auto) or are refused (xdp, tc)
		// elsewhere.
		n := 0
		for _, s := range c.Services {
			if ServiceDatapath(d.Mode, "", s) != "ipvs" {
				m := len(s.Backends)
				if s.SorryBackend.IsValid() {
					m++
				}
				n += m * len(s.Pairs()) // each pair is a service of its own there
			}
		}
		if n > d.MaxBackends-1 {
			v.errf("datapath.max_backends", "the services have %d backends (sorry backends included), and the eBPF maps hold %d: raise datapath.max_backends to at least %d", n, d.MaxBackends-1, n+1)
		}
	}
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for i := 2; i*i <= n; i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}

func (v *validator) vrrp(r *VRRP) {
	names := map[string]int{}
	type routerKey struct {
		ifname string
		v6     bool
		vrid   int
	}
	routers := map[routerKey]int{}
	vipOwner := map[netip.Addr]string{}
	for i := range r.Instances {
		in := &r.Instances[i]
		path := fmt.Sprintf("vrrp.instances[%d]", i)
		v.instance(path, in)
		if first, dup := names[in.Name]; dup && in.Name != "" {
			v.errf(path+".name", "%q is already the name of vrrp.instances[%d]", in.Name, first)
		} else {
			names[in.Name] = i
		}
		// RFC 5798 §5.2.3: the VRID identifies the virtual router on its
		// LAN, separately for IPv4 and IPv6.
		k := routerKey{in.Interface, in.IPv6(), in.VRID}
		if first, dup := routers[k]; dup {
			v.errf(path+".vrid", "vrid %d is already used on %s for %s by vrrp.instances[%d]", in.VRID, in.Interface, family(in.IPv6()), first)
		} else {
			routers[k] = i
		}
		for j, p := range in.HeldVIPs() {
			if owner, dup := vipOwner[p.Address.Addr()]; dup && owner != in.Name {
				v.errf(vipPath(path, in, j), "%s is already a virtual IP of instance %q: two instances would fight over it", p.Address.Addr(), owner)
			}
			vipOwner[p.Address.Addr()] = in.Name
		}
	}

	grouped := map[string]string{}
	groupNames := map[string]bool{}
	for i, g := range r.SyncGroups {
		path := fmt.Sprintf("vrrp.sync_groups[%d]", i)
		v.name(path+".name", g.Name, "sync group")
		if groupNames[g.Name] {
			v.errf(path+".name", "%q names two sync groups", g.Name)
		}
		groupNames[g.Name] = true
		if len(g.Instances) < 2 {
			v.errf(path+".instances", "a sync group needs at least two instances to move together, it has %d", len(g.Instances))
		}
		for j, name := range g.Instances {
			ipath := fmt.Sprintf("%s.instances[%d]", path, j)
			if _, ok := names[name]; !ok {
				v.errf(ipath, "no instance is named %q", name)
				continue
			}
			if other, dup := grouped[name]; dup {
				v.errf(ipath, "instance %q is already in sync group %q: an instance can be in one group only", name, other)
				continue
			}
			grouped[name] = g.Name
		}
		v.stateNotify(path, g.StateScripts())
	}
}

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

func (v *validator) instance(path string, in *Instance) {
	v.name(path+".name", in.Name, "instance")
	v.ifName(path+".interface", in.Interface)
	v.intRange(path+".vrid", in.VRID, 1, 255)
	v.intRange(path+".priority", in.Priority, 1, 255)
	versionOK := in.Version == 2 || in.Version == 3
	if !versionOK {
		v.errf(path+".version", "%d is not a VRRP version: use 2 (RFC 3768) or 3 (RFC 5798)", in.Version)
	}

	switch {
	case in.Version == 2:
		// RFC 3768 §5.3.7: Adver Int is an 8-bit count of seconds.
		if in.AdvertInterval < time.Second || in.AdvertInterval > 255*time.Second || in.AdvertInterval%time.Second != 0 {
			v.errf(path+".advert_interval", "%s does not fit VRRPv2, which counts whole seconds from 1s to 255s; use version: 3 for sub-second adverts", in.AdvertInterval)
		}
	case in.Version == 3:
		// RFC 5798 §5.2.7: Max Adver Int is a 12-bit count of centiseconds.
		if in.AdvertInterval < 10*time.Millisecond || in.AdvertInterval > 4095*10*time.Millisecond || in.AdvertInterval%(10*time.Millisecond) != 0 {
			v.errf(path+".advert_interval", "%s does not fit VRRPv3, which counts centiseconds: use 10ms..40.95s in steps of 10ms", in.AdvertInterval)
		}
	}
	v.duration(path+".preempt_delay", in.PreemptDelay, minPreemptDelay, maxPreemptDelay, "pre-empt at once")

	v6 := in.IPv6()
	v.virtualIPs(path, in)
	v.virtualRoutes(path, in)
	v.virtualRules(path, in)
	if v6 && in.Version == 2 {
		v.errf(path+".version", "IPv6 virtual IPs need VRRP version 3: VRRPv2 carries IPv4 only (RFC 3768)")
	}
	if n := len(in.VirtualIPs); n > 0 {
		addrLen, ipHdr := 4, 20
		if v6 {
			addrLen, ipHdr = 16, 40
		}
		// The advert's count field is one octet (RFC 5798 §5.2.5), and the
		// advert must not need fragmenting.
		if size := ipHdr + 8 + n*addrLen; n > 255 || size > maxAdvertSize {
			v.errf(path+".virtual_ips", "%d addresses make a %d-byte advert: keep it within 255 addresses and %d bytes, or split them over several instances", n, size, maxAdvertSize)
		}
	}

	if in.UnicastSrc.IsValid() {
		v.unicast(path+".unicast_src", in.UnicastSrc)
		if in.UnicastSrc.Is6() != v6 && len(in.VirtualIPs) > 0 {
			v.errf(path+".unicast_src", "%s is %s but the instance is %s", in.UnicastSrc, family(in.UnicastSrc.Is6()), family(v6))
		}
	}
	peers := map[netip.Addr]bool{}
	for j, peer := range in.UnicastPeers {
		ppath := fmt.Sprintf("%s.unicast_peers[%d]", path, j)
		v.unicast(ppath, peer)
		switch {
		case peer.Is6() != v6 && len(in.VirtualIPs) > 0:
			v.errf(ppath, "%s is %s but the instance is %s", peer, family(peer.Is6()), family(v6))
		case peers[peer]:
			v.errf(ppath, "%s is listed twice", peer)
		case peer == in.UnicastSrc:
			v.errf(ppath, "%s is this node's own unicast_src: list only the other nodes", peer)
		}
		peers[peer] = true
	}

	if in.AuthPass != "" {
		if in.Version == 3 {
			v.errf(path+".auth_pass", "VRRPv3 has no authentication (RFC 5798 §9): remove auth_pass or use version: 2")
		}
		if len(in.AuthPass) > maxAuthPass {
			v.errf(path+".auth_pass", "is %d bytes; VRRPv2 simple passwords are at most %d bytes", len(in.AuthPass), maxAuthPass)
		}
	}

	tracked := map[string]bool{}
	for j, ti := range in.TrackInterfaces {
		tpath := fmt.Sprintf("%s.track_interfaces[%d]", path, j)
		v.ifName(tpath+".name", ti.Name)
		v.intRange(tpath+".weight", ti.Weight, -maxTrackWeight, maxTrackWeight)
		if tracked[ti.Name] {
			v.errf(tpath+".name", "%q is tracked twice", ti.Name)
		}
		tracked[ti.Name] = true
	}
	for j, ts := range in.TrackScripts {
		tpath := fmt.Sprintf("%s.track_scripts[%d]", path, j)
		v.command(tpath+".command", ts.Command)
		v.checkTiming(tpath, ts.Interval, ts.Timeout)
		v.intRange(tpath+".rise", ts.Rise, 1, 1000)
		v.intRange(tpath+".fall", ts.Fall, 1, 1000)
		v.intRange(tpath+".weight", ts.Weight, -maxTrackWeight, maxTrackWeight)
	}
	if in.Notify != "" {
		v.absPath(path+".notify", in.Notify, "an executable")
	}
	v.stateNotify(path, in.StateScripts())
	v.trackFiles(path, in.TrackFiles)
	v.trackProcesses(path, in.TrackProcesses)
	if in.VMACXmitBase && !in.UseVMAC {
		v.errf(path+".vmac_xmit_base", "only means something with use_vmac: true")
	}
	// A second burst or a refresh more often than once a second would
	// flood the LAN with ARP for nothing: switches and neighbours learn
	// from the first.
	v.duration(path+".garp_master_delay", in.GARPMasterDelay, minGARPInterval, maxGARPInterval, "no second burst")
	v.intRange(path+".garp_master_repeat", in.GARPMasterRepeat, 1, 255)
	v.duration(path+".garp_master_refresh", in.GARPMasterRefresh, minGARPInterval, maxGARPInterval, "no refresh")
}

// command checks an argv that halb runs without a shell.
func (v *validator) command(path string, argv []string) {
	if len(argv) == 0 {
		v.errf(path, "a command is required, as a list: [/usr/local/bin/check, --flag]")
		return
	}
	switch {
	case strings.ContainsAny(argv[0], " \t") && len(argv) == 1:
		v.errf(path+"[0]", "%q contains spaces: commands run without a shell, so write each argument as its own list item", argv[0])
	case !filepath.IsAbs(argv[0]):
		v.errf(path+"[0]", "%q must be an absolute path to the program", argv[0])
	}
}

func (v *validator) services(c *Config) {
	type serviceKey struct {
		vip   netip.Addr
		port  int
		proto string
	}
	keys := map[serviceKey]int{}
	names := map[string]int{}
	for i := range c.Services {
		s := &c.Services[i]
		path := fmt.Sprintf("services[%d]", i)
		v.service(path, s, c.Datapath)
		if first, dup := names[s.Name]; dup && s.Name != "" {
			v.errf(path+".name", "%q is already the name of services[%d]", s.Name, first)
		} else {
			names[s.Name] = i
		}
		for _, p := range s.Pairs() {
			k := serviceKey{p.Addr(), int(p.Port()), s.Protocol}
			if first, dup := keys[k]; dup && first != i {
				v.errf(path, "%s port %d/%s is already services[%d]: a (vip, port, protocol) can be served once", p.Addr(), p.Port(), s.Protocol, first)
			} else {
				keys[k] = i
			}
		}
	}
}

func (v *validator) service(path string, s *Service, d Datapath) {
	v.name(path+".name", s.Name, "service")
	portOK := v.serviceAddress(path, s)
	v.oneOf(path+".protocol", s.Protocol, "tcp", "udp")
	bpfOnly := d.Mode == ModeXDP || d.Mode == ModeTC
	switch {
	case slices.Contains(bpfSchedulers, s.Scheduler):
	case slices.Contains(ipvsOnlySchedulers, s.Scheduler):
		if bpfOnly {
			v.errf(path+".scheduler", "%q is an IPVS scheduler and datapath.mode is %s: use one of %s, or datapath.mode: ipvs", s.Scheduler, d.Mode, strings.Join(bpfSchedulers, ", "))
		}
	default:
		v.errf(path+".scheduler", "%q is not a scheduler: use one of %s (or with IPVS: %s)", s.Scheduler, strings.Join(bpfSchedulers, ", "), strings.Join(ipvsOnlySchedulers, ", "))
	}
	v.oneOf(path+".forward", s.Forward, "dr", "tun", "nat", "fullnat")
	v.fullNAT(path, s, d)
	if v.duration(path+".persistence", s.Persistence, time.Second, maxPersistence, "off") && s.Persistence%time.Second != 0 {
		v.errf(path+".persistence", "%s is not whole seconds: client affinity is kept in seconds", s.Persistence)
	}
	v.intRange(path+".quorum", s.Quorum, 1, max(1, len(s.Backends)))

	if s.SorryBackend.IsValid() {
		v.unicast(path+".sorry_backend", s.SorryBackend.Addr())
		if s.SorryBackend.Port() == 0 {
			v.errf(path+".sorry_backend", "%s needs a port from 1 to 65535", s.SorryBackend)
		}
		if vip := s.firstVIP(); vip.IsValid() && s.SorryBackend.Addr().Is6() != vip.Is6() {
			v.errf(path+".sorry_backend", "%s is %s but the vip is %s", s.SorryBackend, family(s.SorryBackend.Addr().Is6()), family(vip.Is6()))
		}
	}

	if len(s.Backends) == 0 {
		v.errf(path+".backends", "at least one backend is required")
	}
	if s.Scheduler == "mh" && len(s.Backends) >= d.MaglevTableSize && d.MaglevTableSize > 0 {
		v.errf(path+".backends", "%d backends do not fit a Maglev table of %d: raise datapath.maglev_table_size", len(s.Backends), d.MaglevTableSize)
	}
	seen := make(map[netip.AddrPort]bool, len(s.Backends))
	for j, b := range s.Backends {
		// Each backend is checked without its path first: a large site's
		// 100 000 backends would otherwise make half a million path
		// strings to name no problem. One with a problem is checked again
		// to name its fields.
		n := len(v.problems)
		v.backend("", b, s, portOK)
		if len(v.problems) > n {
			v.problems = v.problems[:n]
			v.backend(fmt.Sprintf("%s.backends[%d]", path, j), b, s, portOK)
		}
		ap := netip.AddrPortFrom(b.Address, uint16(b.Port))
		if seen[ap] {
			v.errf(fmt.Sprintf("%s.backends[%d]", path, j), "%s is listed twice", ap)
		}
		seen[ap] = true
	}
	v.healthCheck(path+".health_check", s)
}

// backend checks backend b of service s; portOK says the service's port
// is valid.
func (v *validator) backend(bpath string, b Backend, s *Service, portOK bool) {
	v.unicast(bpath+".address", b.Address)
	if vip := s.firstVIP(); b.Address.IsValid() && vip.IsValid() {
		if b.Address.Is6() != vip.Is6() {
			v.errf(bpath+".address", "%s is %s but the vip is %s", b.Address, family(b.Address.Is6()), family(vip.Is6()))
		}
	}
	v.backendPort(bpath, b, s, portOK)
	v.intRange(bpath+".weight", b.Weight, 0, 65535)
}

func (v *validator) healthCheck(path string, s *Service) {
	h := s.HealthCheck
	v.oneOf(path+".type", h.Type, "tcp", "http", "https", "udp", "exec", "none")
	if h.Type == "none" {
		return
	}
	v.checkTiming(path, h.Interval, h.Timeout)
	v.intRange(path+".rise", h.Rise, 1, 1000)
	v.intRange(path+".fall", h.Fall, 1, 1000)
	switch h.Type {
	case "tcp", "http", "https":
		if s.Protocol == "udp" {
			v.errf(path+".type", "%s cannot check a UDP service: use udp, exec or none", h.Type)
		}
	case "udp":
		if s.Protocol == "tcp" {
			v.errf(path+".type", "udp cannot check a TCP service: use tcp, http, https, exec or none")
		}
	}
	v.checkTarget(path, s)
	if h.Type == "exec" {
		v.command(path+".command", h.Command)
	} else if len(h.Command) > 0 {
		v.errf(path+".command", "is only used with type: exec")
	}
}

// addressClashes refuses an address that is both one this node takes over
// (a virtual IP, or a service's vip) and the address of a host: the node's
// own unicast_src, a peer, a backend or a sorry backend, across all
// instances and services. Each problem names both fields.
func (v *validator) addressClashes(c *Config) {
	// A virtual IP moves to whichever node is MASTER, so one that is also
	// a host's address would be claimed by a node that is not that host.
	type host struct{ path, what string }
	hosts := map[netip.Addr][]host{}
	for i, in := range c.VRRP.Instances {
		path := fmt.Sprintf("vrrp.instances[%d]", i)
		if in.UnicastSrc.IsValid() {
			a := in.UnicastSrc.WithZone("")
			hosts[a] = append(hosts[a], host{path + ".unicast_src", "this node's own address: a virtual IP moves to whichever node is MASTER, and while the peer holds it, it answers for this node's address too (ssh to it included)"})
		}
		for j, peer := range in.UnicastPeers {
			a := peer.WithZone("")
			hosts[a] = append(hosts[a], host{fmt.Sprintf("%s.unicast_peers[%d]", path, j), "a peer's own address, which this node would claim as MASTER"})
		}
	}
	held := map[netip.Addr]string{} // address -> the first field that holds it
	for i, in := range c.VRRP.Instances {
		for j, vip := range in.HeldVIPs() {
			p := vip.Address
			vpath := vipPath(fmt.Sprintf("vrrp.instances[%d]", i), &in, j)
			for _, h := range hosts[p.Addr()] {
				v.errf(vpath, "%s is also %s, %s; give the virtual IP an address of its own", p.Addr(), h.path, h.what)
			}
			if _, ok := held[p.Addr()]; !ok {
				held[p.Addr()] = vpath
			}
		}
	}
	for i, s := range c.Services {
		for j, p := range s.Pairs() {
			if _, ok := held[p.Addr()]; !ok && p.Addr().IsValid() {
				held[p.Addr()] = fmt.Sprintf("services[%d].vip", i)
				if len(s.Listen) > 0 {
					held[p.Addr()] = fmt.Sprintf("services[%d].listen[%d]", i, j)
				}
			}
		}
	}

	// A backend at an address this node answers for is this node: what is
	// balanced to it comes back here instead of reaching a server.
	// The path is made only for a problem: a large site has 100 000
	// backends.
	backend := func(path func() string, a netip.Addr, s Service) {
		a = a.WithZone("")
		switch {
		case !a.IsValid():
		case s.HasVIP(a):
			v.errf(path(), "%s is the service's own vip: name the backend's own address", a)
		case held[a] != "":
			v.errf(path(), "%s is also %s, an address this node takes over: traffic sent to it would come back to this node; name the backend's own address", a, held[a])
		}
	}
	for i, s := range c.Services {
		for j, b := range s.Backends {
			backend(func() string { return fmt.Sprintf("services[%d].backends[%d].address", i, j) }, b.Address, s)
		}
		if s.SorryBackend.IsValid() {
			backend(func() string { return fmt.Sprintf("services[%d].sorry_backend", i) }, s.SorryBackend.Addr(), s)
		}
	}
}

// fullNAT checks what forward: fullnat needs of service s at path: a
// data path that can carry it (the eBPF one: IPVS has no full NAT), and
// a snat_address, when set, that is an address of the VIP's family.
// Whether the address is this node's is a host fact (halb check warns).
func (v *validator) fullNAT(path string, s *Service, d Datapath) {
	if s.SNATAddress.IsValid() {
		switch {
		case s.Forward != "fullnat":
			v.errf(path+".snat_address", "only forward: fullnat rewrites the source address; remove snat_address or use forward: fullnat")
		case !s.SNATAddress.IsGlobalUnicast() || s.SNATAddress.Zone() != "":
			v.errf(path+".snat_address", "%s is not a unicast address this node can send from: give one of its addresses (or a VIP it holds)", s.SNATAddress)
		case s.firstVIP().IsValid() && s.SNATAddress.Is6() != s.firstVIP().Is6():
			v.errf(path+".snat_address", "%s is %s but the vip is %s: give an address of the vip's family", s.SNATAddress, family(s.SNATAddress.Is6()), family(s.firstVIP().Is6()))
		}
	}
	if s.Forward != "fullnat" {
		return
	}
	switch {
	case d.Mode == ModeIPVS:
		v.errf(path+".forward", "fullnat runs on the eBPF data path only (IPVS has no full NAT) and datapath.mode is ipvs: use datapath.mode: auto, xdp or tc, or forward: nat")
	case slices.Contains(ipvsOnlySchedulers, s.Scheduler):
		v.errf(path+".scheduler", "%q is an IPVS scheduler, and forward: fullnat runs on the eBPF data path only: use one of %s", s.Scheduler, strings.Join(bpfSchedulers, ", "))
	}
}

// ServiceDatapath is the data path that carries s, "ebpf" or "ipvs", when
// datapath.mode is mode and the probe chose chosen (xdp, tc or ipvs; ""
// before probing, when auto's choice is not known yet and is taken to be
// the eBPF data path, as on any kernel with BTF). With mode auto an
// IPVS-only scheduler runs on IPVS beside the eBPF data path; every
// forward kind (dr, tun, nat, fullnat) runs on eBPF.
func ServiceDatapath(mode, chosen string, s Service) string {
	switch {
	case mode == ModeIPVS || chosen == ModeIPVS:
		return "ipvs"
	case mode == ModeAuto && slices.Contains(ipvsOnlySchedulers, s.Scheduler):
		return "ipvs"
	}
	return "ebpf"
}

// natBackends refuses a backend address and port in two NAT services of
// one protocol that the eBPF data path carries: it knows a NAT backend's
// replies by their source address, port and protocol alone, with no
// state per flow (so that they are translated on whichever node is
// MASTER), and such a reply could go back as either VIP. A sorry backend
// counts, as it takes a backend's place. IPVS tracks each connection and
// needs no such rule.
func (v *validator) natBackends(c *Config) {
	type key struct {
		addr  netip.AddrPort
		proto string
	}
	type owner struct {
		name string
		i    int
	}
	first := map[key]owner{}
	note := func(path func() string, i int, s Service, a netip.Addr, port int) {
		if !a.IsValid() {
			return
		}
		if port == 0 {
			port = s.Port
		}
		k := key{netip.AddrPortFrom(a.WithZone(""), uint16(port)), s.Protocol}
		other, ok := first[k]
		if ok && other.i == i {
			return // listed twice in one service: services() says so
		}
		if ok {
			v.errf(path(), "%s/%s is also a backend of the NAT service %q: the eBPF data path knows a NAT backend's replies by "+
				"their source address, port and protocol, and could not tell which VIP they go back as; give it another port "+
				"in one of the two services (or use datapath.mode: ipvs)", k.addr, k.proto, other.name)
			return
		}
		first[k] = owner{s.Name, i}
	}
	// The network each VIP is held on, where a VRRP instance names it.
	nets := map[netip.Addr]netip.Prefix{}
	for _, in := range c.VRRP.Instances {
		for _, vip := range in.HeldVIPs() {
			if p := vip.Address; p.Bits() < p.Addr().BitLen() {
				nets[p.Addr()] = p.Masked()
			}
		}
	}
	for i, s := range c.Services {
		if (s.Forward != "nat" && s.Forward != "fullnat") || ServiceDatapath(c.Datapath.Mode, "", s) != "ebpf" {
			continue
		}
		if v.natGroup(fmt.Sprintf("services[%d]", i), s) {
			continue
		}
		vip := s.firstVIP()
		for j, b := range s.Backends {
			note(func() string { return fmt.Sprintf("services[%d].backends[%d]", i, j) }, i, s, b.Address, b.Port)
			// A full NAT backend answers the balancer, wherever it is.
			if n, ok := nets[vip]; ok && s.Forward == "nat" && n.Contains(b.Address.WithZone("")) {
				v.errf(fmt.Sprintf("services[%d].backends[%d].address", i, j), "%s is on %s, the network of the VIP %s: "+
					"a NAT backend answers the clients there directly, from its own address, and their connections never open; "+
					"put the backends on a network of their own, routed through the balancer", b.Address, n, vip)
			}
		}
		if s.SorryBackend.IsValid() {
			note(func() string { return fmt.Sprintf("services[%d].sorry_backend", i) }, i, s, s.SorryBackend.Addr(), int(s.SorryBackend.Port()))
		}
	}
}
