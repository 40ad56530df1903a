package keepalived

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// ImportOptions are what an import needs beyond the file.
type ImportOptions struct {
	Options
	// LookPath finds a bare program name the way keepalived does (PATH);
	// nil leaves bare names as written (and reported).
	LookPath func(name string) (string, bool)
	// CheckProgram holds a program to halb's script policy on this host
	// (internal/script.Check); nil checks nothing.
	CheckProgram func(path string) error
}

// Import reads the keepalived configuration at path and converts it.
func Import(path string, opt ImportOptions) (*Result, error) {
	root, err := ParseFile(path, opt.Options)
	if err != nil {
		return nil, err
	}
	return Convert(root, opt)
}

// converter holds one conversion: keepalived's named definitions, read
// first, the halb items made from them, and the report.
type converter struct {
	opt      ImportOptions
	notes    []Note
	problems []Note

	global    globals
	scripts   map[string]*Node
	files     map[string]*Node
	processes map[string]*Node
	vsGroups  map[string]*Node
	syncOf    map[string]string // instance name → its sync group
	weighted  map[string]bool   // sync groups with sync_group_tracking_weight

	instances []*instance
	groups    []*syncGroup
	services  []*service
}

// globals are the global_defs halb takes defaults from.
type globals struct {
	version                            int
	garpDelay, garpRepeat, garpRefresh string
	strict                             bool
}

// Convert maps the parsed tree onto a halb configuration.
func Convert(root *Node, opt ImportOptions) (*Result, error) {
	c := &converter{opt: opt, scripts: map[string]*Node{}, files: map[string]*Node{},
		processes: map[string]*Node{}, vsGroups: map[string]*Node{}, syncOf: map[string]string{}, weighted: map[string]bool{}}
	c.definitions(root)
	for _, n := range root.Children {
		c.topLevel(n)
	}
	// The conversion meets keywords out of the file's order (a
	// vrrp_script where an instance tracks it); the report follows the
	// file.
	bySeq := func(a, b Note) int { return a.seq - b.seq }
	slices.SortStableFunc(c.notes, bySeq)
	slices.SortStableFunc(c.problems, bySeq)
	if len(c.problems) > 0 {
		return nil, &ConvertError{Problems: c.problems}
	}
	res := &Result{YAML: c.render(), Notes: c.notes}
	// What keepalived accepts and halb refuses (two instances with one
	// VRID on one interface, a VIP two instances hold) is not written:
	// the import's output is always one `halb check` takes, but for the
	// scripts on this host, which the report warns about.
	if _, err := config.Parse(res.YAML, "the converted configuration"); err != nil {
		return nil, &RefusedError{Err: err, YAML: res.YAML}
	}
	return res, nil
}

func (c *converter) note(n *Node, kind Kind, msg string) {
	c.notes = append(c.notes, Note{File: n.File, Line: n.Line, Keyword: n.Key, Msg: msg, Kind: kind, seq: n.seq})
}
func (c *converter) approx(n *Node, msg string) { c.note(n, Approximated, msg) }
func (c *converter) drop(n *Node, msg string)   { c.note(n, Dropped, "dropped: "+msg) }
func (c *converter) warn(n *Node, msg string)   { c.note(n, Warning, msg) }
func (c *converter) fail(n *Node, msg string) {
	c.problems = append(c.problems, Note{File: n.File, Line: n.Line, Keyword: n.Key, Msg: msg, seq: n.seq})
}

// definitions reads what other blocks refer to by name, wherever it is
// written: scripts, tracked files and processes, server groups, sync
// groups, and the global defaults.
func (c *converter) definitions(root *Node) {
	c.global.version = 2
	for _, n := range root.Children {
		name := ""
		if len(n.Args) > 0 {
			name = n.Args[0]
		}
		switch n.Key {
		case "global_defs":
			c.globalDefs(n)
		case "vrrp_script":
			c.scripts[name] = n
		case "track_file", "vrrp_track_file":
			c.files[name] = n
		case "vrrp_track_process":
			c.processes[name] = n
		case "virtual_server_group":
			c.vsGroups[name] = n
		case "vrrp_sync_group":
			for _, g := range n.Children {
				switch g.Key {
				case "group":
					for _, m := range members(g) {
						c.syncOf[m] = name
					}
				case "sync_group_tracking_weight", "global_tracking":
					c.weighted[name] = true
				}
			}
		}
	}
}

// safeName is name as halb takes names: 1 to 64 letters, digits, '_',
// '.' or '-'; anything else becomes '_'. It is a function of the name
// alone, so that a sync group's member and its instance agree.
func safeName(name string) string {
	b := []byte(name)
	for i, ch := range b {
		if !(ch == '_' || ch == '.' || ch == '-' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9') {
			b[i] = '_'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// checkName reports a name halb writes differently (safeName).
func (c *converter) checkName(n *Node, name string) {
	if s := safeName(name); s != name {
		c.approx(n, fmt.Sprintf("%q: halb names hold 1 to 64 letters, digits, '_', '.' or '-': %s", name, s))
	}
}

// members are the words of a list block: one or more per line.
func members(n *Node) []string {
	var out []string
	for _, ch := range n.Children {
		out = append(out, ch.Key)
		out = append(out, ch.Args...)
	}
	return out
}

func (c *converter) globalDefs(n *Node) {
	for _, ch := range n.Children {
		switch ch.Key {
		case "vrrp_version":
			if v, ok := c.intArg(ch, 2, 3); ok {
				c.global.version = v
			}
		case "vrrp_garp_master_delay":
			c.global.garpDelay = c.durationArg(ch)
		case "vrrp_garp_master_repeat":
			if v, ok := c.intArg(ch, 1, 255); ok {
				c.global.garpRepeat = strconv.Itoa(v)
			}
		case "vrrp_garp_master_refresh":
			c.global.garpRefresh = c.durationArg(ch)
		case "vrrp_strict":
			c.global.strict = true
			c.approx(ch, "halb keeps RFC 5798's rules always; of strict mode it keeps no_accept on VRRPv3 instances (accept: false)")
		case "enable_script_security":
			// halb always holds scripts to its policy: nothing to carry.
		case "router_id":
			c.drop(ch, "halb has no router name")
		case "notification_email", "notification_email_from", "smtp_server", "smtp_connect_timeout", "smtp_helo_name", "smtp_alert", "smtp_alert_vrrp", "smtp_alert_checker":
			c.drop(ch, "halb sends no mail; use a notify script or the Prometheus metrics")
		case "script_user":
			c.drop(ch, "halb runs scripts as the user it runs as, and only scripts that only root can change")
		case "vrrp_skip_check_adv_addr":
			c.drop(ch, "halb has no such setting")
		case "vrrp_garp_interval", "vrrp_gna_interval":
			c.drop(ch, "halb has no such setting: garp_master_delay, _repeat and _refresh are what it paces")
		default:
			c.drop(ch, "a global setting halb has no equivalent for")
		}
	}
}

func (c *converter) topLevel(n *Node) {
	switch n.Key {
	case "global_defs", "vrrp_script", "track_file", "vrrp_track_file", "vrrp_track_process", "virtual_server_group":
		// Read by definitions; used where they are referred to.
	case "vrrp_instance":
		c.instance(n)
	case "vrrp_sync_group":
		c.syncGroup(n)
	case "virtual_server":
		c.virtualServer(n)
	case "static_ipaddress", "static_routes", "static_rules":
		c.drop(n, "halb manages only the addresses and routes that move with VRRP; keep static ones in the host's network configuration")
	default:
		c.drop(n, "halb has no equivalent")
	}
}

// ---- values ----

func (c *converter) arg(n *Node) (string, bool) {
	if len(n.Args) == 0 {
		c.fail(n, "a value is required")
		return "", false
	}
	return n.Args[0], true
}

func (c *converter) intArg(n *Node, lo, hi int) (int, bool) {
	s, ok := c.arg(n)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		c.fail(n, fmt.Sprintf("%q is not a whole number from %d to %d", s, lo, hi))
		return 0, false
	}
	return v, true
}

// seconds reads keepalived's TIMER: seconds, fractions allowed, to the
// microsecond.
func seconds(s string) (time.Duration, bool) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1e7 || math.IsNaN(f) {
		return 0, false
	}
	return (time.Duration(math.Round(f*1e6)) * time.Microsecond), true
}

func (c *converter) timerArg(n *Node) (time.Duration, bool) {
	s, ok := c.arg(n)
	if !ok {
		return 0, false
	}
	d, ok := seconds(s)
	if !ok {
		c.fail(n, fmt.Sprintf("%q is not a time in seconds", s))
	}
	return d, ok
}

func (c *converter) durationArg(n *Node) string {
	d, ok := c.timerArg(n)
	if !ok {
		return ""
	}
	return duration(d)
}

// duration writes d as halb reads it: whole seconds as seconds (300s,
// not 5m0s), anything finer as Go writes it.
func duration(d time.Duration) string {
	if d%time.Second == 0 && d > 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

func (c *converter) addrArg(n *Node, s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		c.fail(n, fmt.Sprintf("%q is not an IP address", s))
		return netip.Addr{}, false
	}
	return a, true
}

// prefix reads an address with an optional /len; keepalived's default
// length is the whole address.
func prefix(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p, err == nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

// ---- VRRP instances ----

type vip struct {
	prefix string
	iface  string
	node   *Node
}

type trackItem struct {
	fields  [][2]string // key, YAML value, in order
	comment string
}

type instance struct {
	comments              []string
	name, iface           string
	vrid, version         int
	priority              int
	priorityNote          string
	advert                string
	preempt               *bool
	preemptDelay          string
	accept                *bool
	acceptNote            string
	unicastSrc            string
	peers                 []string
	peerNodes             []*Node
	advertNode            *Node
	vips, excluded        []vip
	routes, rules         []trackItem
	trackIfaces           []trackItem
	trackScripts          []trackItem
	trackFiles            []trackItem
	trackProcs            []trackItem
	notify                string
	notifyStates          [][2]string // notify_master etc., YAML argv
	useVMAC, vmacXmitBase bool
	authPass              string
	garp                  [][2]string
	v6                    bool
}

func (c *converter) instance(n *Node) {
	in := &instance{version: c.global.version, priority: 100}
	if len(n.Args) == 0 {
		c.fail(n, "a vrrp_instance needs a name")
		return
	}
	in.name = n.Args[0]
	c.checkName(n, in.name)
	var stateNode *Node
	var trackers []*Node // applied once the base priority is known
	explicitVersion := false
	for _, ch := range n.Children {
		switch ch.Key {
		case "state":
			stateNode = ch
		case "interface":
			in.iface, _ = c.arg(ch)
		case "virtual_router_id":
			in.vrid, _ = c.intArg(ch, 1, 255)
		case "priority":
			in.priority, _ = c.intArg(ch, 1, 255)
		case "advert_int":
			in.advert, in.advertNode = c.durationArg(ch), ch
		case "version":
			in.version, _ = c.intArg(ch, 2, 3)
			explicitVersion = true
		case "nopreempt":
			f := false
			in.preempt = &f
		case "preempt":
			t := true
			in.preempt = &t
		case "preempt_delay":
			in.preemptDelay = c.durationArg(ch)
		case "accept":
			t := true
			in.accept = &t
		case "no_accept":
			f := false
			in.accept = &f
		case "unicast_src_ip", "mcast_src_ip":
			// keepalived reads both into one setting, the adverts' source
			// address (multicast or unicast): halb's unicast_src is that.
			if s, ok := c.arg(ch); ok {
				if a, ok := c.addrArg(ch, s); ok {
					in.unicastSrc = a.String()
				}
			}
		case "unicast_peer":
			c.unicastPeers(ch, in)
		case "authentication":
			c.authentication(ch, in)
		case "virtual_ipaddress":
			in.vips = append(in.vips, c.vips(ch)...)
		case "virtual_ipaddress_excluded":
			in.excluded = append(in.excluded, c.vips(ch)...)
		case "virtual_routes":
			c.virtualRoutes(ch, in)
		case "virtual_rules":
			c.virtualRules(ch, in)
		case "track_interface", "track_script", "track_file", "track_process":
			trackers = append(trackers, ch)
		case "notify":
			c.notify(ch, in)
		case "notify_master", "notify_backup", "notify_fault", "notify_stop":
			if argv := c.stateScript(ch); argv != "" {
				in.notifyStates = append(in.notifyStates, [2]string{ch.Key, argv})
			}
		case "use_vmac":
			in.useVMAC = true
			if len(ch.Args) > 0 {
				c.approx(ch, fmt.Sprintf("halb names the VMAC interface itself (vrrp.<vrid>.<ifindex>), not %s", ch.Args[0]))
			}
		case "vmac_xmit_base":
			in.vmacXmitBase = true
		case "garp_master_delay", "garp_master_refresh":
			if d := c.durationArg(ch); d != "" {
				in.garp = append(in.garp, [2]string{ch.Key, d})
			}
		case "garp_master_repeat":
			if v, ok := c.intArg(ch, 1, 255); ok {
				in.garp = append(in.garp, [2]string{ch.Key, strconv.Itoa(v)})
			}
		case "smtp_alert":
			c.drop(ch, "halb sends no mail")
		case "dont_track_primary":
			c.drop(ch, "halb has no such setting")
		default:
			c.drop(ch, "halb has no equivalent for this vrrp_instance keyword")
		}
	}
	if in.iface == "" {
		c.fail(n, "the instance names no interface")
	}
	if in.vrid == 0 {
		c.fail(n, "the instance has no virtual_router_id")
	}
	if len(in.vips) == 0 {
		c.fail(n, "the instance has no virtual_ipaddress")
		return
	}
	in.v6 = strings.Contains(in.vips[0].prefix, ":")
	if in.v6 && in.version != 3 {
		if explicitVersion {
			c.approx(n, "IPv6 needs VRRPv3, as keepalived also decides: version 3")
		}
		in.version = 3
	}
	c.sameInterface(in)
	c.otherFamily(in)
	c.ownPeer(in)
	c.advertV2(in)
	c.defaults(in)
	for _, t := range trackers {
		switch t.Key {
		case "track_interface":
			c.trackInterfaces(t, in)
		case "track_script":
			c.trackScripts(t, in)
		case "track_file":
			c.trackFiles(t, in)
		case "track_process":
			c.trackProcesses(t, in)
		}
	}
	c.state(stateNode, in)
	c.instances = append(c.instances, in)
}

// sameInterface writes a VIP whose dev is the instance's own interface
// in the plain form.
func (c *converter) sameInterface(in *instance) {
	for _, list := range [][]vip{in.vips, in.excluded} {
		for i := range list {
			if list[i].iface == in.iface {
				list[i].iface = ""
			}
		}
	}
}

// otherFamily moves VIPs of the family the instance does not advertise
// to virtual_ips_excluded: an advert carries one family (RFC 5798 §2.1),
// and keepalived too adds such addresses without advertising them.
func (c *converter) otherFamily(in *instance) {
	var kept []vip
	for _, v := range in.vips {
		if strings.Contains(v.prefix, ":") == in.v6 {
			kept = append(kept, v)
			continue
		}
		c.approx(v.node, "an address of the other family than the instance's first VIP: halb puts it in virtual_ips_excluded (added and removed with the VIPs, never advertised)")
		in.excluded = append(in.excluded, v)
	}
	in.vips = kept
}

// ownPeer leaves out of unicast_peers the instance's own unicast_src_ip,
// which a file shared by both nodes lists among the peers.
func (c *converter) ownPeer(in *instance) {
	if in.unicastSrc == "" {
		return
	}
	for i, p := range in.peers {
		if p == in.unicastSrc {
			c.approx(in.peerNodes[i], "the instance's own unicast_src_ip: halb lists only the other nodes, so it is left out")
			in.peers = slices.Delete(in.peers, i, i+1)
			in.peerNodes = slices.Delete(in.peerNodes, i, i+1)
			return
		}
	}
}

// advertV2: VRRPv2 counts the advert interval in whole seconds (RFC 3768
// §5.3.7); a fraction is rounded up.
func (c *converter) advertV2(in *instance) {
	d, err := time.ParseDuration(in.advert)
	if in.version != 2 || in.advertNode == nil || err != nil || d%time.Second == 0 {
		return
	}
	up := d.Truncate(time.Second) + time.Second
	c.approx(in.advertNode, fmt.Sprintf("%s: VRRPv2 counts whole seconds: %s (or use version 3)", duration(d), duration(up)))
	in.advert = duration(up)
}

// defaults fills what keepalived derives from global_defs or its own
// defaults where halb's differ.
func (c *converter) defaults(in *instance) {
	has := func(key string) bool {
		return slices.ContainsFunc(in.garp, func(kv [2]string) bool { return kv[0] == key })
	}
	for _, g := range [][2]string{{"garp_master_delay", c.global.garpDelay}, {"garp_master_repeat", c.global.garpRepeat}, {"garp_master_refresh", c.global.garpRefresh}} {
		if g[1] != "" && !has(g[0]) {
			in.garp = append(in.garp, g)
		}
	}
	if in.advert == "" {
		in.advert = "1s"
	}
	// keepalived outside vrrp_strict takes packets to the VIPs (its
	// no_accept needs a firewall it only sets up when asked); halb's
	// VRRPv3 default is RFC 5798's Accept_Mode False.
	if in.version == 3 && in.accept == nil {
		t := !c.global.strict
		in.accept = &t
		if t {
			in.acceptNote = "keepalived without vrrp_strict or no_accept answers on the VIPs"
		}
	}
	if in.version == 2 {
		in.accept = nil // VRRPv2 has no Accept_Mode: halb never filters it
	}
}

// state: keepalived's initial state. BACKUP is where halb starts too;
// MASTER has no equivalent: the priorities decide.
func (c *converter) state(n *Node, in *instance) {
	if n == nil {
		return
	}
	s, _ := c.arg(n)
	switch strings.ToUpper(s) {
	case "BACKUP":
	case "MASTER":
		in.comments = append(in.comments, "keepalived's `state MASTER` has no equivalent: halb starts every instance as BACKUP and the higher priority becomes MASTER")
		c.approx(n, "halb starts as BACKUP and becomes MASTER by priority (after the master down interval when no higher priority is heard)")
	default:
		c.fail(n, fmt.Sprintf("%q is not MASTER or BACKUP", s))
	}
	if in.preempt != nil && !*in.preempt && strings.EqualFold(s, "MASTER") {
		c.approx(n, "nopreempt with state MASTER: keepalived ignores nopreempt then; halb keeps it")
	}
}

func (c *converter) unicastPeers(n *Node, in *instance) {
	for _, ch := range n.Children {
		if a, ok := c.addrArg(ch, ch.Key); ok {
			in.peers = append(in.peers, a.String())
			in.peerNodes = append(in.peerNodes, ch)
		}
		if len(ch.Args) > 0 {
			c.drop(ch, fmt.Sprintf("%s: halb has no per-peer setting", strings.Join(ch.Args, " ")))
		}
	}
}

func (c *converter) authentication(n *Node, in *instance) {
	for _, ch := range n.Children {
		switch ch.Key {
		case "auth_type":
			if t, _ := c.arg(ch); !strings.EqualFold(t, "PASS") {
				c.drop(ch, "only simple password (PASS) authentication exists in halb; AH is dropped and the instance sends unauthenticated adverts")
				return
			}
		case "auth_pass":
			p, _ := c.arg(ch)
			if len(p) > 8 {
				c.approx(ch, "keepalived uses the first 8 bytes of the password, so does halb's auth_pass")
				p = p[:8]
			}
			in.authPass = p
		default:
			c.drop(ch, "not an authentication keyword halb knows")
		}
	}
	if in.version == 3 && in.authPass != "" {
		c.drop(n, "VRRPv3 carries no authentication (RFC 5798 §9): keepalived ignores it too")
		in.authPass = ""
	}
}

// vips reads a virtual_ipaddress block: one address per line, with
// options of which halb keeps dev.
func (c *converter) vips(n *Node) []vip {
	var out []vip
	for _, ch := range n.Children {
		p, ok := prefix(ch.Key)
		if !ok {
			c.fail(ch, fmt.Sprintf("%q is not an address or address/length", ch.Key))
			continue
		}
		v := vip{prefix: p.String(), node: ch}
		for i := 0; i < len(ch.Args); i++ {
			opt := ch.Args[i]
			switch opt {
			case "dev":
				if i+1 < len(ch.Args) {
					v.iface = ch.Args[i+1]
					i++
				}
			case "brd", "broadcast", "scope", "label", "peer", "preferred_lft", "valid_lft":
				c.drop(ch, fmt.Sprintf("%s %s: halb adds the address with the kernel's defaults", opt, argAt(ch.Args, i+1)))
				i++
			default:
				c.drop(ch, fmt.Sprintf("%s: halb adds the address with the kernel's defaults", opt))
			}
		}
		out = append(out, v)
	}
	return out
}

func argAt(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}

// virtualRoutes reads keepalived's route lines: [src A] [to] P [via|gw A]
// [dev I] [table N] [metric N], or blackhole P.
func (c *converter) virtualRoutes(n *Node, in *instance) {
	for _, ch := range n.Children {
		words := append([]string{ch.Key}, ch.Args...)
		r := trackItem{}
		var to, via, dev, src, table, metric string
		blackhole := false
		for i := 0; i < len(words); i++ {
			w := words[i]
			next := argAt(words, i+1)
			switch w {
			case "src":
				src, i = next, i+1
			case "to":
				to, i = next, i+1
			case "via", "gw":
				via, i = next, i+1
			case "dev", "oif":
				dev, i = next, i+1
			case "table":
				table, i = next, i+1
			case "metric", "preference", "pref", "priority":
				metric, i = next, i+1
			case "blackhole":
				blackhole = true
			default:
				if to == "" {
					if _, ok := prefix(w); ok {
						to = w
						continue
					}
				}
				c.drop(ch, fmt.Sprintf("%s: halb's virtual_routes take to, via, interface, src, table, metric and blackhole", w))
				if next != "" && !isRouteWord(next) {
					i++
				}
			}
		}
		p, ok := prefix(to)
		if !ok {
			c.fail(ch, "a route needs a destination address/length")
			continue
		}
		r.fields = append(r.fields, [2]string{"to", p.String()})
		if blackhole {
			r.fields = append(r.fields, [2]string{"blackhole", "true"})
		}
		for _, kv := range [][2]string{{"via", via}, {"interface", dev}, {"src", src}} {
			if kv[1] != "" {
				r.fields = append(r.fields, [2]string{kv[0], yamlScalar(kv[1])})
			}
		}
		for _, kv := range [][2]string{{"table", table}, {"metric", metric}} {
			if kv[1] != "" {
				r.fields = append(r.fields, [2]string{kv[0], c.number(ch, kv[0], kv[1])})
			}
		}
		in.routes = append(in.routes, r)
	}
}

// number reads a route's or rule's number (decimal or 0x hex); a
// fwmark's /mask is dropped.
func (c *converter) number(n *Node, key, s string) string {
	if v, mask, ok := strings.Cut(s, "/"); ok && key == "fwmark" {
		c.drop(n, "fwmark mask /"+mask+": halb matches the whole mark")
		s = v
	}
	if key == "table" {
		// The names the kernel itself fixes (linux/rtnetlink.h); others
		// come from the host's rt_tables, which the import cannot know.
		if id, ok := fixedTables[s]; ok {
			return id
		}
	}
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		if key == "table" {
			c.fail(n, fmt.Sprintf("table %q: halb takes table numbers, not names from rt_tables", s))
		} else {
			c.fail(n, fmt.Sprintf("%s %q is not a number", key, s))
		}
		return "0"
	}
	return strconv.FormatUint(v, 10)
}

// fixedTables are the routing tables every Linux names alike.
var fixedTables = map[string]string{"default": "253", "main": "254", "local": "255"}

func isRouteWord(w string) bool {
	switch w {
	case "src", "to", "via", "gw", "dev", "oif", "table", "metric", "blackhole":
		return true
	}
	return false
}

// virtualRules reads keepalived's rule lines: from P to P table N
// priority N iif I oif I fwmark N.
func (c *converter) virtualRules(n *Node, in *instance) {
	for _, ch := range n.Children {
		words := append([]string{ch.Key}, ch.Args...)
		r := trackItem{}
		for i := 0; i < len(words); i++ {
			w, next := words[i], argAt(words, i+1)
			key := ""
			switch w {
			case "from", "to", "iif", "oif", "fwmark", "table", "priority":
				key = w
			case "lookup":
				key = "table"
			case "preference", "pref":
				key = "priority"
			default:
				c.drop(ch, fmt.Sprintf("%s: halb's virtual_rules take from, to, table, priority, iif, oif and fwmark", w))
				continue
			}
			if next == "" {
				c.fail(ch, w+" needs a value")
				break
			}
			switch key {
			case "from", "to":
				if p, ok := prefix(next); ok {
					next = p.String()
				}
				next = yamlScalar(next)
			case "table", "priority", "fwmark":
				next = c.number(ch, key, next)
			default:
				next = yamlScalar(next)
			}
			r.fields = append(r.fields, [2]string{key, next})
			i++
		}
		in.rules = append(in.rules, r)
	}
}

// weightOf reads "weight W [reverse]" from the words after a tracked
// name; ok is false when none is written.
func (c *converter) weightOf(n *Node, args []string) (w int, ok bool) {
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "weight":
			v, err := strconv.Atoi(argAt(args, i+1))
			if err != nil || v < -254 || v > 254 {
				c.fail(n, fmt.Sprintf("weight %q is not a whole number from -254 to 254", argAt(args, i+1)))
				return 0, false
			}
			w, ok = v, true
			i++
		case "reverse":
			c.approx(n, "reverse: halb moves the priority only one way; the weight is applied as written")
		case "noreverse":
		default:
			c.drop(n, args[i]+": not a tracking option halb knows")
		}
	}
	return w, ok
}

// positive turns a keepalived weight that adds to the priority while the
// tracked thing is up into halb's, which subtracts while it is down:
// the instance's base priority rises by w and halb's weight is -w, so the
// priority is the same in both states. Sync group members track with
// weight 0 in keepalived unless sync_group_tracking_weight is set.
func (c *converter) weight(n *Node, in *instance, what string, w int) int {
	if c.zeroWeight(in) && w != 0 {
		in.comments = append(in.comments, fmt.Sprintf("%s: weight 0, as keepalived sets it for members of a sync group", what))
		return 0
	}
	if w > 0 {
		in.priority += w
		in.priorityNote += fmt.Sprintf(" +%d while %s is up", w, what)
		if in.priority > 254 {
			c.approx(n, fmt.Sprintf("the priority with every positive weight added is %d; keepalived caps it at 254, halb's instance starts at 254", in.priority))
			in.priority = 254
		}
		return -w
	}
	return w
}

// zeroWeight: keepalived tracks with weight 0 in a sync group's members,
// unless the group says sync_group_tracking_weight.
func (c *converter) zeroWeight(in *instance) bool {
	g, grouped := c.syncOf[in.name]
	return grouped && !c.weighted[g]
}

func (c *converter) trackInterfaces(n *Node, in *instance) {
	for _, ch := range n.Children {
		w, _ := c.weightOf(ch, ch.Args)
		w = c.weight(ch, in, "interface "+ch.Key, w)
		item := trackItem{fields: [][2]string{{"name", yamlScalar(ch.Key)}}}
		if w != 0 {
			item.fields = append(item.fields, [2]string{"weight", strconv.Itoa(w)})
		}
		in.trackIfaces = append(in.trackIfaces, item)
	}
}

// trackScripts inlines each vrrp_script the instance tracks.
func (c *converter) trackScripts(n *Node, in *instance) {
	for _, ch := range n.Children {
		def, ok := c.scripts[ch.Key]
		if !ok {
			c.fail(ch, fmt.Sprintf("no vrrp_script is named %q", ch.Key))
			continue
		}
		ts := c.vrrpScript(def)
		if ts == nil {
			continue
		}
		w, set := c.weightOf(ch, ch.Args)
		if !set {
			w = ts.weight
		}
		w = c.weight(ch, in, "script "+ch.Key, w)
		item := trackItem{comment: "vrrp_script " + ch.Key, fields: [][2]string{
			{"command", flowList(ts.argv)}, {"interval", duration(ts.interval)}, {"timeout", duration(ts.timeout)},
			{"rise", strconv.Itoa(ts.rise)}, {"fall", strconv.Itoa(ts.fall)}}}
		if w != 0 {
			item.fields = append(item.fields, [2]string{"weight", strconv.Itoa(w)})
		}
		in.trackScripts = append(in.trackScripts, item)
	}
}

type vrrpScript struct {
	argv              []string
	interval, timeout time.Duration
	rise, fall        int
	weight            int
}

func (c *converter) vrrpScript(n *Node) *vrrpScript {
	s := &vrrpScript{interval: time.Second, rise: 1, fall: 1}
	var timeoutSet bool
	var scriptNode *Node
	for _, ch := range n.Children {
		switch ch.Key {
		case "script":
			scriptNode = ch
		case "interval":
			if d, ok := c.timerArg(ch); ok {
				s.interval = d
			}
		case "timeout":
			if d, ok := c.timerArg(ch); ok {
				s.timeout, timeoutSet = d, true
			}
		case "weight":
			w, _ := c.weightOf(ch, append([]string{"weight"}, ch.Args...))
			s.weight = w
		case "rise":
			s.rise, _ = c.intArg(ch, 1, 1000)
		case "fall":
			s.fall, _ = c.intArg(ch, 1, 1000)
		case "user":
			c.drop(ch, "halb runs scripts as the user it runs as")
		case "init_fail":
			c.approx(ch, "halb counts a script as failed until its first run ends, whatever init_fail says")
		default:
			c.drop(ch, "not a vrrp_script keyword halb knows")
		}
	}
	if scriptNode == nil {
		c.fail(n, "the vrrp_script has no script")
		return nil
	}
	text, _ := c.arg(scriptNode)
	s.argv = c.script(scriptNode, text).argv
	// halb ends a run before the next is due: the timeout must be shorter
	// than the interval.
	if !timeoutSet || s.timeout >= s.interval || s.timeout < 10*time.Millisecond {
		t := s.interval * 9 / 10
		what := "no timeout"
		if timeoutSet {
			what = "timeout " + duration(s.timeout)
		}
		c.approx(n, fmt.Sprintf("%s: halb ends each run before the next is due: timeout %s (interval %s)", what, duration(t), duration(s.interval)))
		s.timeout = t
	}
	if s.interval < 50*time.Millisecond {
		c.approx(n, fmt.Sprintf("interval %s: halb runs a script at most every 50ms", s.interval))
		s.interval, s.timeout = 50*time.Millisecond, 45*time.Millisecond
	}
	return s
}

func (c *converter) trackFiles(n *Node, in *instance) {
	for _, ch := range n.Children {
		def, ok := c.files[ch.Key]
		if !ok {
			c.fail(ch, fmt.Sprintf("no track_file is named %q", ch.Key))
			continue
		}
		path, weight := "", 1
		for _, d := range def.Children {
			switch d.Key {
			case "file":
				path, _ = c.arg(d)
			case "weight":
				weight, _ = c.weightOf(d, append([]string{"weight"}, d.Args...))
			case "init_file":
				c.drop(d, "halb never writes the tracked file: create it before halb starts")
			default:
				c.drop(d, "not a track_file keyword halb knows")
			}
		}
		if w, set := c.weightOf(ch, ch.Args); set {
			weight = w
		}
		if c.zeroWeight(in) && weight != 0 {
			in.comments = append(in.comments, "track_file "+ch.Key+": weight 0, as keepalived sets it for members of a sync group")
			weight = 0
		}
		if path == "" {
			c.fail(def, "the track_file names no file")
			continue
		}
		in.trackFiles = append(in.trackFiles, trackItem{comment: "track_file " + ch.Key,
			fields: [][2]string{{"path", yamlScalar(path)}, {"weight", strconv.Itoa(weight)}}})
	}
}

func (c *converter) trackProcesses(n *Node, in *instance) {
	for _, ch := range n.Children {
		def, ok := c.processes[ch.Key]
		if !ok {
			c.fail(ch, fmt.Sprintf("no vrrp_track_process is named %q", ch.Key))
			continue
		}
		var name string
		var args []string
		weight, quorum, delay := 1, 1, ""
		for _, d := range def.Children {
			switch d.Key {
			case "process":
				if len(d.Args) > 0 {
					name, args = d.Args[0], d.Args[1:]
				}
			case "weight":
				weight, _ = c.weightOf(d, append([]string{"weight"}, d.Args...))
			case "quorum":
				quorum, _ = c.intArg(d, 1, 65535)
			case "delay":
				delay = c.processDelay(d)
			case "fork_delay", "terminate_delay":
				delay = c.processDelay(d)
				c.approx(d, "halb has one delay for both directions: "+delay)
			case "param_match":
				c.approx(d, "halb matches the arguments exactly")
			case "quorum_max":
				c.drop(d, "halb counts a minimum of processes only")
			case "full_command":
				c.approx(d, "halb matches the name against the command name or argv[0]'s basename")
			default:
				c.drop(d, "not a vrrp_track_process keyword halb knows")
			}
		}
		if name == "" {
			c.fail(def, "the vrrp_track_process names no process")
			continue
		}
		if w, set := c.weightOf(ch, ch.Args); set {
			weight = w
		}
		weight = c.weight(ch, in, "process "+ch.Key, weight)
		item := trackItem{comment: "vrrp_track_process " + ch.Key,
			fields: [][2]string{{"name", yamlScalar(name)}}}
		if len(args) > 0 {
			item.fields = append(item.fields, [2]string{"args", flowList(args)})
		}
		item.fields = append(item.fields, [2]string{"min_count", strconv.Itoa(quorum)}, [2]string{"weight", strconv.Itoa(weight)})
		if delay != "" {
			item.fields = append(item.fields, [2]string{"delay", delay})
		}
		in.trackProcs = append(in.trackProcs, item)
	}
}

// processDelay reads a track_process delay into halb's range: 0, or
// 1s to 1h.
func (c *converter) processDelay(n *Node) string {
	d, ok := c.timerArg(n)
	switch {
	case !ok:
		return ""
	case d > 0 && d < time.Second:
		c.approx(n, fmt.Sprintf("%s: halb waits 0 or 1s to 1h before it counts a change: 1s", duration(d)))
		d = time.Second
	case d > time.Hour:
		c.approx(n, fmt.Sprintf("%s: halb waits at most 1h before it counts a change", duration(d)))
		d = time.Hour
	}
	return duration(d)
}

// notify: halb's single notify is a program called with keepalived's four
// arguments; arguments written before them cannot be carried.
func (c *converter) notify(n *Node, in *instance) {
	text, ok := c.arg(n)
	if !ok {
		return
	}
	c.scriptUser(n)
	words, shell := splitScript(text)
	if shell || len(words) == 0 {
		c.drop(n, "halb's notify is one program given INSTANCE <name> <state> <priority>; this string needs a shell: put it in a script and name that")
		return
	}
	cmd := c.script(n, text)
	if len(words) > 1 {
		c.approx(n, fmt.Sprintf("halb calls %s with only INSTANCE <name> <state> <priority>; the arguments %q are dropped", cmd.program, strings.Join(words[1:], " ")))
	}
	in.notify = cmd.program
}

// stateScript converts notify_master and the like to halb's argv form.
func (c *converter) stateScript(n *Node) string {
	text, ok := c.arg(n)
	if !ok {
		return ""
	}
	c.scriptUser(n)
	return flowList(c.script(n, text).argv)
}

// scriptUser: the user and group keepalived may run a script as.
func (c *converter) scriptUser(n *Node) {
	if len(n.Args) > 1 {
		c.drop(n, fmt.Sprintf("user %s: halb runs scripts as the user it runs as", strings.Join(n.Args[1:], " ")))
	}
}

// ---- sync groups ----

type syncGroup struct {
	name      string
	instances []string
	notify    [][2]string
}

func (c *converter) syncGroup(n *Node) {
	if len(n.Args) == 0 {
		c.fail(n, "a vrrp_sync_group needs a name")
		return
	}
	g := &syncGroup{name: n.Args[0]}
	c.checkName(n, g.name)
	for _, ch := range n.Children {
		switch ch.Key {
		case "group":
			g.instances = members(ch)
		case "notify_master", "notify_backup", "notify_fault", "notify_stop":
			if argv := c.stateScript(ch); argv != "" {
				g.notify = append(g.notify, [2]string{ch.Key, argv})
			}
		case "notify":
			c.drop(ch, "halb calls the members' notify, once per instance, not one for the group")
		case "smtp_alert":
			c.drop(ch, "halb sends no mail")
		case "track_interface", "track_script", "track_file", "track_process":
			c.drop(ch, "halb tracks per instance: move it into each member vrrp_instance")
		case "global_tracking", "sync_group_tracking_weight":
			// read by definitions: the members keep their weights.
		default:
			c.drop(ch, "not a vrrp_sync_group keyword halb knows")
		}
	}
	c.groups = append(c.groups, g)
}
