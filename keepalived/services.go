package keepalived

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A keepalived virtual_server is IPVS's service with a checker per real
// server; a halb service is one data-path service with one health check
// for all its backends. The first real server's checker becomes the
// service's; one that differs is reported.

type service struct {
	comments    []string
	name        string
	vip         string
	port        int
	listen      []string
	protocol    string
	scheduler   string
	forward     string
	persistence string
	quorum      int
	sorry       string
	backends    [][2]string // address, port
	weights     []int
	check       *check
}

type check struct {
	typ        string
	interval   time.Duration
	timeout    time.Duration
	rise, fall int
	port       int
	source     string
	path       string
	expect     string // flow list
	urls       []trackItem
	command    string // flow list
	signature  string // what two real servers' checks must share to be one
}

// vsDefaults are the checker settings a virtual_server gives its real
// servers' checkers.
type vsDefaults struct {
	delayLoop time.Duration
	timeout   time.Duration
	retry     int
	// retryNode is the retry or delay_before_retry line that set the
	// retries, for the report; nil when keepalived's defaults apply.
	retryNode *Node
}

func (c *converter) virtualServer(n *Node) {
	s := &service{protocol: "tcp", quorum: 1}
	if !c.serviceAddress(n, s) {
		return
	}
	d := vsDefaults{delayLoop: 60 * time.Second, timeout: 5 * time.Second, retry: 1}
	var realServers []*Node
	var quorumNode, sorryNode *Node
	for _, ch := range n.Children {
		switch ch.Key {
		case "delay_loop":
			if v, ok := c.timerArg(ch); ok {
				d.delayLoop = v
			}
		case "lb_algo", "lvs_sched":
			s.scheduler = strings.ToLower(argAt(ch.Args, 0))
		case "lb_kind", "lvs_method":
			c.lbKind(ch, s)
		case "protocol":
			switch p := strings.ToLower(argAt(ch.Args, 0)); p {
			case "tcp", "udp":
				s.protocol = p
			default:
				c.fail(ch, fmt.Sprintf("%q: halb balances TCP and UDP only", argAt(ch.Args, 0)))
			}
		case "persistence_timeout":
			secs := 360
			if len(ch.Args) > 0 {
				secs, _ = c.intArg(ch, 1, 4294967)
			}
			s.persistence = duration(time.Duration(secs) * time.Second)
		case "quorum":
			quorumNode = ch
		case "sorry_server":
			sorryNode = ch
		case "real_server":
			realServers = append(realServers, ch)
		case "connect_timeout":
			if v, ok := c.timerArg(ch); ok {
				d.timeout = v
			}
		case "retry", "nb_get_retry":
			if v, ok := c.intArg(ch, 0, 1000); ok {
				d.retry, d.retryNode = v, ch
			}
		case "delay_before_retry":
			if _, ok := c.timerArg(ch); ok && d.retryNode == nil {
				d.retryNode = ch
			}
		case "persistence_granularity":
			c.drop(ch, "halb's persistence is per client address")
		case "hysteresis", "quorum_up", "quorum_down":
			c.drop(ch, "halb switches to the sorry backend and back on the quorum alone, with no script")
		case "alpha":
			c.approx(ch, "halb starts a backend as healthy until its first checks fail (rise/fall), not as failed")
		case "omega", "ha_suspend", "inhibit_on_failure", "virtualhost", "warmup", "ip_family", "sorry_server_inhibit", "sorry_server_lvs_method", "ops", "one_packet":
			c.drop(ch, "halb has no equivalent for this virtual_server keyword")
		default:
			c.drop(ch, "not a virtual_server keyword halb knows")
		}
	}
	if s.scheduler == "" {
		s.scheduler = "mh"
		c.approx(n, "no lb_algo: halb's default scheduler, mh (Maglev)")
	}
	if s.forward == "" {
		s.forward = "nat"
		s.comments = append(s.comments, "no lb_kind: keepalived's default, NAT")
		c.natComment(s)
	}
	if len(realServers) == 0 {
		c.fail(n, "the virtual_server has no real_server: halb needs at least one backend")
		return
	}
	for _, rs := range realServers {
		c.realServer(rs, s, d)
	}
	if sorryNode != nil {
		c.sorryServer(sorryNode, s)
	}
	if quorumNode != nil {
		c.quorum(quorumNode, s)
	}
	if s.check == nil {
		s.check = &check{typ: "none"}
	}
	c.services = append(c.services, s)
}

// serviceAddress reads "IP PORT", "group NAME" or "fwmark N".
func (c *converter) serviceAddress(n *Node, s *service) bool {
	switch {
	case len(n.Args) == 2 && n.Args[0] == "group":
		return c.serviceGroup(n, s, n.Args[1])
	case len(n.Args) >= 1 && n.Args[0] == "fwmark":
		c.drop(n, "halb balances by address and port, not by firewall mark: write a service per VIP and port")
		return false
	case len(n.Args) != 2:
		c.fail(n, "a virtual_server is written IP PORT, group NAME or fwmark N")
		return false
	}
	a, ok := c.addrArg(n, n.Args[0])
	if !ok {
		return false
	}
	port, err := strconv.Atoi(n.Args[1])
	if err != nil || port < 1 || port > 65535 {
		c.fail(n, fmt.Sprintf("%q is not a port from 1 to 65535 (halb has no port-0, all-ports service)", n.Args[1]))
		return false
	}
	s.vip, s.port = a.String(), port
	s.name = serviceName(a, port)
	return true
}

// serviceName makes a halb name from the VIP and port: letters, digits,
// '.', '_' and '-' only.
func serviceName(a netip.Addr, port int) string {
	return fmt.Sprintf("vs-%s-%d", strings.ReplaceAll(a.String(), ":", "_"), port)
}

// serviceGroup reads a virtual_server_group into listen: one service on
// several VIP:port pairs. Ranges (192.0.2.1-10) are expanded.
func (c *converter) serviceGroup(n *Node, s *service, name string) bool {
	g, ok := c.vsGroups[name]
	if !ok {
		c.fail(n, fmt.Sprintf("no virtual_server_group is named %q", name))
		return false
	}
	for _, ch := range g.Children {
		if ch.Key == "fwmark" {
			c.drop(ch, "halb balances by address and port, not by firewall mark")
			continue
		}
		if len(ch.Args) != 1 {
			c.fail(ch, "a group entry is written IP PORT or IP-LAST PORT")
			continue
		}
		port, err := strconv.Atoi(ch.Args[0])
		if err != nil || port < 1 || port > 65535 {
			c.fail(ch, fmt.Sprintf("%q is not a port from 1 to 65535", ch.Args[0]))
			continue
		}
		addrs, ok := addressRange(ch.Key)
		if !ok {
			c.fail(ch, fmt.Sprintf("%q is not an address or a range like 192.0.2.10-20 (at most 256 addresses)", ch.Key))
			continue
		}
		for _, a := range addrs {
			s.listen = append(s.listen, netip.AddrPortFrom(a, uint16(port)).String())
		}
	}
	if len(s.listen) == 0 {
		c.fail(n, "the virtual_server_group "+name+" holds no address and port halb can serve")
		return false
	}
	s.name = name
	c.checkName(n, name)
	s.port, _ = strconv.Atoi(s.listen[0][strings.LastIndexByte(s.listen[0], ':')+1:])
	return true
}

// addressRange reads A or A-N, where N replaces A's last byte (IPv4) or
// last group (IPv6, hexadecimal), as keepalived writes ranges.
func addressRange(s string) ([]netip.Addr, bool) {
	base, last, isRange := strings.Cut(s, "-")
	a, err := netip.ParseAddr(base)
	if err != nil {
		return nil, false
	}
	if !isRange {
		return []netip.Addr{a}, true
	}
	b := a.AsSlice()
	var first, end uint64
	if a.Is4() {
		first = uint64(b[3])
		end, err = strconv.ParseUint(last, 10, 8)
	} else {
		first = uint64(b[14])<<8 | uint64(b[15])
		end, err = strconv.ParseUint(last, 16, 16)
	}
	if err != nil || end < first || end-first > 255 {
		return nil, false
	}
	var out []netip.Addr
	for v := first; v <= end; v++ {
		if a.Is4() {
			b[3] = byte(v)
		} else {
			b[14], b[15] = byte(v>>8), byte(v)
		}
		x, _ := netip.AddrFromSlice(b)
		out = append(out, x)
	}
	return out, true
}

func (c *converter) lbKind(n *Node, s *service) {
	switch strings.ToUpper(argAt(n.Args, 0)) {
	case "NAT":
		s.forward = "nat"
		c.natComment(s)
	case "DR":
		s.forward = "dr"
	case "TUN":
		s.forward = "tun"
		if len(n.Args) > 1 {
			c.approx(n, "halb tunnels with IPIP (IPv4) or IP6IP6 (IPv6) only: "+strings.Join(n.Args[1:], " ")+" is dropped")
		}
	default:
		c.fail(n, fmt.Sprintf("%q is not NAT, DR or TUN", argAt(n.Args, 0)))
	}
}

func (c *converter) natComment(s *service) {
	s.comments = append(s.comments, "lb_kind NAT: forward nat rewrites the destination to the backend, and the backends must route their replies through this node, as with LVS-NAT")
}

func (c *converter) realServer(n *Node, s *service, d vsDefaults) {
	if len(n.Args) < 1 || len(n.Args) > 2 {
		c.fail(n, "a real_server is written IP [PORT]")
		return
	}
	a, ok := c.addrArg(n, n.Args[0])
	if !ok {
		return
	}
	port := s.port
	if len(n.Args) == 2 {
		p, err := strconv.Atoi(n.Args[1])
		if err != nil || p < 1 || p > 65535 {
			c.fail(n, fmt.Sprintf("%q is not a port from 1 to 65535", n.Args[1]))
			return
		}
		port = p
	}
	weight := 1
	var checks []*check
	for _, ch := range n.Children {
		switch ch.Key {
		case "weight":
			weight, _ = c.intArg(ch, 0, 65535)
		case "TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "UDP_CHECK":
			if k := c.checker(ch, d, port); k != nil {
				checks = append(checks, k)
			}
		case "DNS_CHECK", "SMTP_CHECK", "PING_CHECK", "BFD_CHECK", "FILE_CHECK":
			c.drop(ch, "halb has no such check: use type: exec with a program that does it")
		case "lvs_method":
			c.drop(ch, "halb forwards to every backend of a service the same way")
		case "inhibit_on_failure":
			c.drop(ch, "halb has no such setting: a failed backend leaves the service's choices")
		case "notify_up", "notify_down":
			c.drop(ch, "halb runs no script when a backend changes health: `halb status` and the metrics show it")
		case "uthreshold", "lthreshold":
			c.drop(ch, "halb sets no connection limits")
		default:
			c.drop(ch, "not a real_server keyword halb knows")
		}
	}
	s.backends = append(s.backends, [2]string{a.String(), strconv.Itoa(port)})
	s.weights = append(s.weights, weight)
	if len(checks) > 1 {
		c.approx(n, "halb runs one check per backend: the first checker is used, and the others are dropped")
	}
	var k *check
	if len(checks) > 0 {
		k = checks[0]
	} else {
		k = &check{typ: "none", signature: "none"}
	}
	switch {
	case s.check == nil:
		s.check = k
	case s.check.signature != k.signature:
		c.approx(n, fmt.Sprintf("halb runs one health check for all the backends of a service: this real server is checked like the first (%s)", s.check.typ))
	}
}

func (c *converter) sorryServer(n *Node, s *service) {
	if len(n.Args) < 1 {
		c.fail(n, "a sorry_server is written IP [PORT]")
		return
	}
	a, ok := c.addrArg(n, n.Args[0])
	if !ok {
		return
	}
	port := s.port
	if len(n.Args) > 1 {
		if p, err := strconv.Atoi(n.Args[1]); err == nil && p > 0 && p < 65536 {
			port = p
		} else {
			c.fail(n, fmt.Sprintf("%q is not a port from 1 to 65535", n.Args[1]))
			return
		}
	}
	s.sorry = netip.AddrPortFrom(a, uint16(port)).String()
}

// quorum: keepalived's is the sum of the healthy servers' weights; halb's
// a count of healthy backends. They agree when every weight is 1.
func (c *converter) quorum(n *Node, s *service) {
	q, ok := c.intArg(n, 1, 1<<30)
	if !ok {
		return
	}
	if slices.ContainsFunc(s.weights, func(w int) bool { return w != 1 }) {
		c.approx(n, "keepalived's quorum is a sum of weights, halb's a count of healthy backends: quorum "+strconv.Itoa(q)+" is kept as a count")
	}
	if q > len(s.backends) {
		c.approx(n, fmt.Sprintf("quorum %d is more than the %d backends: halb's quorum is %d", q, len(s.backends), len(s.backends)))
		q = len(s.backends)
	}
	s.quorum = q
}

// checker converts one checker block of a real server whose port is
// port.
func (c *converter) checker(n *Node, d vsDefaults, port int) *check {
	k := &check{interval: d.delayLoop, timeout: d.timeout, rise: 1}
	retry, retryNode := d.retry, d.retryNode
	switch n.Key {
	case "TCP_CHECK":
		k.typ = "tcp"
	case "HTTP_GET":
		k.typ = "http"
	case "SSL_GET":
		k.typ = "https"
	case "MISC_CHECK":
		k.typ = "exec"
	case "UDP_CHECK":
		k.typ = "udp"
		c.approx(n, "halb's udp check sends one datagram and counts the backend down only on an ICMP port unreachable")
	}
	var urls []*Node
	for _, ch := range n.Children {
		switch ch.Key {
		case "connect_port":
			if p, ok := c.intArg(ch, 1, 65535); ok && p != port {
				k.port = p
			}
		case "connect_timeout", "misc_timeout":
			if v, ok := c.timerArg(ch); ok {
				k.timeout = v
			}
		case "bindto":
			if a, ok := c.addrArg(ch, argAt(ch.Args, 0)); ok {
				k.source = a.String()
			}
		case "retry", "nb_get_retry":
			if v, ok := c.intArg(ch, 0, 1000); ok {
				retry, retryNode = v, ch // the retry line is the one the report names
			}
		case "delay_before_retry":
			if _, ok := c.timerArg(ch); ok && (retryNode == nil || retryNode == d.retryNode) {
				retryNode = ch
			}
		case "delay_loop":
			if v, ok := c.timerArg(ch); ok {
				k.interval = v
			}
		case "url":
			urls = append(urls, ch)
		case "misc_path":
			text, _ := c.arg(ch)
			k.command = flowList(c.script(ch, text).argv)
		case "misc_dynamic":
			c.approx(ch, "halb reads only success or failure from the program's exit status; it does not set the weight from it")
		case "connect_ip":
			c.drop(ch, "halb checks the backend's own address")
		case "warmup", "log_all_failures", "bind_port", "bind_if", "fwmark", "user":
			c.drop(ch, "halb has no equivalent for this checker keyword")
		case "virtualhost":
			c.drop(ch, "halb's http check sends no Host: header of your choosing")
		default:
			c.drop(ch, "not a checker keyword halb knows")
		}
	}
	if k.typ == "http" || k.typ == "https" {
		c.urls(n, k, urls)
	}
	if k.typ == "exec" && k.command == "" {
		c.fail(n, "the MISC_CHECK has no misc_path")
		return nil
	}
	k.fall = retry + 1
	c.checkTiming(n, k, retry, retryNode)
	k.signature = fmt.Sprintf("%s|%v|%v|%d|%d|%s|%s|%s|%s|%v", k.typ, k.interval, k.timeout, k.fall, k.port, k.source, k.path, k.expect, k.command, k.urls)
	return k
}

// checkTiming fits keepalived's timers into halb's: one interval between
// checks, each ended by a timeout shorter than it, fall failures in a
// row mark the backend down (keepalived retries retry times, after
// delay_before_retry rather than the interval).
func (c *converter) checkTiming(n *Node, k *check, retry int, retryNode *Node) {
	if k.interval < 50*time.Millisecond {
		c.approx(n, fmt.Sprintf("delay_loop %s: halb checks at most every 50ms", k.interval))
		k.interval = 50 * time.Millisecond
	}
	if k.interval > 24*time.Hour {
		c.approx(n, fmt.Sprintf("delay_loop %s: halb checks at least once a day", k.interval))
		k.interval = 24 * time.Hour
	}
	if k.timeout >= k.interval || k.timeout < 10*time.Millisecond {
		t := k.interval * 9 / 10
		c.approx(n, fmt.Sprintf("connect_timeout %s: halb ends a check before the next is due: timeout %s (delay_loop %s)", k.timeout, t, k.interval))
		k.timeout = t
	}
	if retry > 0 && retryNode != nil {
		c.approx(retryNode, fmt.Sprintf("halb marks a backend down after %d failed checks in a row (retry %d + 1), each delay_loop (%s) apart; keepalived retries after delay_before_retry", retry+1, retry, duration(k.interval)))
	}
}

// urls turns HTTP_GET/SSL_GET url blocks into halb's: one url with no
// digest is path and expect_status; several, or a digest, are urls.
func (c *converter) urls(n *Node, k *check, blocks []*Node) {
	if len(blocks) == 0 {
		k.path, k.expect = "/", "[200]"
		c.approx(n, "no url: halb asks for / and expects 200")
		return
	}
	type url struct{ path, digest, expect string }
	var list []url
	for _, b := range blocks {
		u := url{expect: statusRange(200, 299)}
		for _, ch := range b.Children {
			switch ch.Key {
			case "path":
				u.path, _ = c.arg(ch)
			case "digest":
				u.digest, _ = c.arg(ch)
				if !isHex(u.digest, 32) {
					c.fail(ch, fmt.Sprintf("%q is not an MD5 digest (32 hexadecimal digits)", u.digest))
				}
			case "status_code":
				u.expect = c.statusCodes(ch)
			case "virtualhost":
				c.drop(ch, "halb's http check sends no Host: header of your choosing")
			case "regex", "regex_no_match", "regex_options", "regex_stack", "regex_min_offset", "regex_max_offset", "tls_compliant", "protocol":
				c.drop(ch, "halb checks the status and the digest of the body only")
			default:
				c.drop(ch, "not a url keyword halb knows")
			}
		}
		if !strings.HasPrefix(u.path, "/") {
			c.fail(b, fmt.Sprintf("path %q must start with /", u.path))
		}
		list = append(list, u)
	}
	if len(list) == 1 && list[0].digest == "" {
		k.path, k.expect = list[0].path, list[0].expect
		return
	}
	for _, u := range list {
		item := trackItem{fields: [][2]string{{"path", yamlScalar(u.path)}, {"expect_status", u.expect}}}
		if u.digest != "" {
			item.fields = append(item.fields, [2]string{"digest", strings.ToLower(u.digest)})
		}
		k.urls = append(k.urls, item)
	}
}

// statusCodes reads status_code's codes and ranges (200-299) into a YAML
// list.
func (c *converter) statusCodes(n *Node) string {
	var codes []int
	for _, a := range n.Args {
		lo, hi, isRange := strings.Cut(a, "-")
		l, err1 := strconv.Atoi(lo)
		h := l
		var err2 error
		if isRange {
			h, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || l < 100 || h > 599 || h < l {
			c.fail(n, fmt.Sprintf("%q is not a status code or range from 100 to 599", a))
			return "[200]"
		}
		for v := l; v <= h; v++ {
			codes = append(codes, v)
		}
	}
	if len(codes) == 0 {
		c.fail(n, "status_code needs at least one code")
		return "[200]"
	}
	return intList(codes)
}

func statusRange(lo, hi int) string {
	codes := make([]int, 0, hi-lo+1)
	for v := lo; v <= hi; v++ {
		codes = append(codes, v)
	}
	return intList(codes)
}

func intList(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}
