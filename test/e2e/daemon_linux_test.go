package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestDaemon runs `halb run` itself (XDP, DR) on the network of TestDR, in
// front of three backends and a sorry server, and shows what the daemon
// adds to the data path:
//
//   - a backend whose server stops leaves the rotation within fall ×
//     interval plus one interval, and comes back after rise successes;
//   - with fewer healthy backends than the quorum, traffic goes to the
//     sorry server;
//   - while three reloads add a backend, change a weight and add a
//     service, 1000 connections held open through the VIP keep exchanging
//     with their backends and 32 requesters make 1000 requests and more
//     on fresh connections: none fails, no held connection changes
//     backend;
//   - a reload with a broken file is refused, its errors logged by field
//     path, and the running configuration keeps serving.
func TestDaemon(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	servers := n.servers
	d := n.daemon(t, halb, "lb")
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1})
	d.start(n.lbs["lb"])

	c := &client{ns: n.client, src: clientIP, vip: vip}
	d.waitLive("web", "all three backends live", 3)
	counts := c.spread(t, 40000, 60)
	t.Logf("60 connections: %v", counts)
	if len(counts) != 3 || total(counts) != 60 {
		t.Fatalf("60 connections went to %v, want all three backends", counts)
	}

	t.Run("a failed backend leaves and comes back", func(t *testing.T) {
		// The bounds hold the checks' jitter (a tenth of the interval at
		// most per check) and the apply; the only slack added is what
		// polling halb status cannot tell apart (see timeTo).
		servers["be2"].stop()
		took, window := d.timeTo("be2 out of rotation", func() bool { return len(d.live("web")) == 2 })
		bound := daemonFall*daemonInterval + daemonInterval
		t.Logf("be2 out of rotation %s after its server stopped (bound fall %d × interval %s + interval = %s, poll window %s)",
			took.Round(time.Millisecond), daemonFall, daemonInterval, bound, window.Round(time.Millisecond))
		if took > bound+window {
			t.Errorf("be2 left the rotation after %s, want within %s (+ %s poll window)", took, bound, window)
		}
		if counts := c.spread(t, 40100, 60); counts["be2"] != 0 || total(counts) != 60 {
			t.Errorf("with be2 down: %v", counts)
		}
		servers["be2"].start()
		took, window = d.timeTo("be2 back", func() bool { return len(d.live("web")) == 3 })
		bound = daemonRise*daemonInterval + daemonInterval
		t.Logf("be2 back %s after its server started (bound rise %d × interval %s + interval = %s, poll window %s)",
			took.Round(time.Millisecond), daemonRise, daemonInterval, bound, window.Round(time.Millisecond))
		if took > bound+window {
			t.Errorf("be2 came back after %s, want within %s (+ %s poll window)", took, bound, window)
		}
		if counts := c.spread(t, 40200, 60); counts["be2"] == 0 {
			t.Errorf("be2 got no connection once back: %v", counts)
		}
	})

	t.Run("below quorum traffic goes to the sorry server", func(t *testing.T) {
		servers["be1"].stop()
		servers["be2"].stop()
		d.waitLive("web", "the sorry server alone", 1, "192.0.2.15:80")
		if counts := c.spread(t, 40300, 30); counts["sorry"] != 30 {
			t.Errorf("one healthy backend of a quorum of 2: %v, want all 30 on the sorry server", counts)
		}
		servers["be1"].start()
		servers["be2"].start()
		d.waitLive("web", "quorum regained", 3)
		if counts := c.spread(t, 40400, 30); counts["sorry"] != 0 || total(counts) != 30 {
			t.Errorf("quorum regained: %v, want no connection on the sorry server", counts)
		}
		// One line when the quorum went, one when it came back: with the
		// second backend back, or the third when both came back within
		// one apply.
		lines := quorumLines.FindAllString(d.out.String(), -1)
		t.Logf("quorum log lines: %q", lines)
		if len(lines) != 2 ||
			!strings.Contains(lines[0], `level=WARN msg="service quorum lost" service=web healthy=1 quorum=2 sorry_backend=192.0.2.15:80`) ||
			!regexp.MustCompile(`level=INFO msg="service quorum regained" service=web healthy=[23] quorum=2 sorry_backend=192.0.2.15:80`).MatchString(lines[1]) {
			t.Errorf("quorum log lines %q, want one lost (healthy=1) then one regained for web", lines)
		}
	})

	t.Run("requests through three reloads", func(t *testing.T) {
		// heldConns connections stay open across the reloads, each
		// exchanging a line round after round on the flow it began
		// with: an unchanged service keeps its flows, so an answer from
		// another backend, or none, is a failure. Beside them 32
		// requesters make requests on fresh connections, ports 42000 to
		// 42000+loadMax-1: those end in TIME_WAIT here, so no other
		// connection of the test may bind them.
		held := c.connectMany(t, 41000, heldConns)
		spread := map[string]int{}
		for _, cn := range held {
			spread[cn.backend]++
		}
		busy := startBusy(held)
		load := c.load(32, 42000, loadMax, 20*time.Millisecond)
		for _, step := range []struct {
			what string
			cfg  daemonConfig
			want func() bool
		}{
			{"add be4", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 1},
				func() bool { return len(d.live("web")) == 4 }},
			{"weight 3 for be1", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 3},
				func() bool { return d.weight("web", "192.0.2.11:80") == 3 }},
			{"add a service on port 81", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 3, port81: true},
				func() bool { return len(d.live("web81")) == 4 }},
		} {
			// Each reload with a round over the held connections and 150
			// requests before it, and requests going on during it.
			busy.rounds(t, 1)
			at := load.count()
			for start := time.Now(); load.count() < min(at+150, loadMax) && time.Since(start) < runTimeout; {
				time.Sleep(10 * time.Millisecond)
			}
			inFlight := load.inFlight()
			d.write(step.cfg)
			d.reload()
			d.waitFor(step.what, step.want)
			t.Logf("%s: at the reload %d of the requesters' requests in flight, %d connections held", step.what, inFlight, heldConns)
		}
		// Every held connection exchanges again after the last reload.
		busy.rounds(t, 2)
		res := load.stop(t, min(max(load.count()+150, 1000), loadMax))
		hres := busy.stop()
		n := total(res.answers) + len(res.failed)
		t.Logf("%d requests on fresh connections through three reloads: %d failed, answers %v", n, len(res.failed), res.answers)
		t.Logf("%d held connections (%v), %d exchanges on them: %d failed", heldConns, spread, hres.ok+len(hres.failed), len(hres.failed))
		if len(res.failed) != 0 || n < 1000 {
			t.Errorf("%d of %d requests failed: %v", len(res.failed), n, res.failed)
		}
		if len(hres.failed) != 0 {
			t.Errorf("%d exchanges on the held connections failed, first: %v", len(hres.failed), hres.failed[0])
		}
		if res.answers["be4"] == 0 {
			t.Errorf("be4, added by a reload during the load, answered none of the requests: %v", res.answers)
		}
		if counts := c.spreadTo(t, 81, 40500, 40); total(counts) != 40 || len(counts) != 4 {
			t.Errorf("the service added by reload: %v, want 40 connections over four backends", counts)
		}
	})

	t.Run("a broken file changes nothing", func(t *testing.T) {
		if err := os.WriteFile(d.cfg, []byte(strings.Replace(d.text, "port: 81", "port: 0", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		d.reload()
		d.waitLog("services[1].port")
		if n := len(d.live("web81")); n != 4 {
			t.Errorf("web81 has %d live backends after a refused reload, want 4", n)
		}
		if counts := c.spreadTo(t, 81, 40600, 20); total(counts) != 20 {
			t.Errorf("web81 after a refused reload: %v", counts)
		}
	})

	d.stop()
	if _, err := os.Stat(d.pins); !os.IsNotExist(err) {
		t.Errorf("%s still there after halb run --cleanup stopped: %v", d.pins, err)
	}
}

// quorumLines are the daemon's log lines about a service's quorum.
var quorumLines = regexp.MustCompile(`(?m)^.*msg="service quorum .*$`)

// routeVIP routes the VIP from ns through the balancer, 192.0.2.2.
func routeVIP(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{
		LinkIndex: eth0.Attrs().Index,
		Dst:       &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Gw:        net.IP{192, 0, 2, 2},
	}); err != nil {
		t.Fatalf("route the VIP through the balancer: %v", err)
	}
}

// The reload test of TestDaemon: connections held open across the
// reloads, and the most requests on fresh connections beside them.
const (
	heldConns = 1000
	loadMax   = 16000
)

// The health check of TestDaemon's services.
const (
	daemonInterval = 500 * time.Millisecond
	daemonFall     = 2
	daemonRise     = 2
)

type daemonConfig struct {
	backends []string // of web, by name
	weight1  int      // be1's weight
	port81   bool     // the second service
	// With a priority, a VRRP instance (v3, 100 ms adverts) holds the
	// VIP on eth0.
	vrrpPriority int
}

var daemonAddrs = map[string]string{"be1": "192.0.2.11", "be2": "192.0.2.12", "be3": "192.0.2.13", "be4": "192.0.2.14"}

// daemon is one `halb run --cleanup` in the balancer's namespace.
type daemon struct {
	t                    testing.TB
	bin, cfg, sock, pins string
	text                 string // the config last written
	metrics              string // control.metrics, in the balancer's namespace; "" for none
	proc                 *halbtest.Proc
	out                  *halbtest.Log
}

func (d *daemon) write(c daemonConfig) {
	var b strings.Builder
	fmt.Fprintf(&b, "control: {socket: %s, metrics: %q}\n", d.sock, d.metrics)
	fmt.Fprintf(&b, "datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0], bpffs: %s}\n", d.pins)
	b.WriteString("services:\n")
	service := func(name string, port int) {
		fmt.Fprintf(&b, "  - name: %s\n    vip: %s\n    port: %d\n    quorum: 2\n    sorry_backend: 192.0.2.15:%d\n    backends:\n", name, vip, port, port)
		for _, be := range c.backends {
			w := 1
			if be == "be1" {
				w = c.weight1
			}
			fmt.Fprintf(&b, "      - {address: %s, weight: %d}\n", daemonAddrs[be], w)
		}
		fmt.Fprintf(&b, "    health_check: {type: tcp, interval: %s, timeout: 300ms, rise: %d, fall: %d}\n", daemonInterval, daemonRise, daemonFall)
	}
	service("web", 80)
	if c.port81 {
		service("web81", 81)
	}
	if c.vrrpPriority > 0 {
		fmt.Fprintf(&b, "vrrp:\n  instances:\n    - {name: VI_1, interface: eth0, vrid: 51, version: 3, priority: %d, advert_interval: 100ms, virtual_ips: [%s/32]}\n", c.vrrpPriority, vip)
	}
	d.text = b.String()
	if err := os.WriteFile(d.cfg, []byte(d.text), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) start(ns *netnstest.NS) {
	d.proc = halbtest.Start(d.t, ns, exec.Command(d.bin, "run", "--cleanup", "-c", d.cfg), halbtest.Options{})
	d.out = d.proc.Log
}

func (d *daemon) reload() {
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) stop() {
	err := d.proc.Stop(syscall.SIGTERM, 20*time.Second)
	if errors.Is(err, halbtest.ErrStillRunning) {
		d.t.Fatal("halb did not stop within 20 s of SIGTERM")
	}
	if err != nil {
		d.t.Errorf("halb run: %v", err)
	}
}

// statusBackend is one backend in `halb status --json`.
type statusBackend struct {
	Backend string `json:"backend"`
	Weight  uint32 `json:"weight"`
	Live    bool   `json:"live"`
}

// backends asks the daemon for service name's backends in the data path.
func (d *daemon) backends(name string) []statusBackend {
	out, err := exec.Command(d.bin, "status", "--json", "-s", d.sock).Output()
	if err != nil {
		return nil
	}
	var st struct {
		Services []struct {
			Name     string          `json:"name"`
			Backends []statusBackend `json:"backends"`
		} `json:"services"`
	}
	if json.Unmarshal(out, &st) != nil {
		return nil
	}
	for _, s := range st.Services {
		if s.Name == name {
			return s.Backends
		}
	}
	return nil
}

// live returns the backends of service name that take new flows.
func (d *daemon) live(name string) []string {
	var out []string
	for _, b := range d.backends(name) {
		if b.Live {
			out = append(out, b.Backend)
		}
	}
	return out
}

func (d *daemon) weight(name, backend string) uint32 {
	for _, b := range d.backends(name) {
		if b.Backend == backend {
			return b.Weight
		}
	}
	return 0
}

// waitLive waits until service name has n live backends, and, when given,
// these among them.
func (d *daemon) waitLive(name, what string, n int, among ...string) {
	d.waitFor(what, func() bool {
		live := d.live(name)
		for _, want := range among {
			if !strings.Contains(strings.Join(live, " "), want) {
				return false
			}
		}
		return len(live) == n
	})
}

func (d *daemon) waitFor(what string, ok func() bool) {
	d.t.Helper()
	for start := time.Now(); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			d.t.Fatalf("%s: not within 20 s; halb status has %+v", what, d.backends("web"))
		}
	}
}

// timeTo polls halb status as waitFor does until ok, and says how long
// after the call that happened. took is measured at the end of the poll
// that saw it; the change may have come at any time since the start of
// the poll before, which still did not, so window, the time between the
// two, is how precisely took is known: a 50 ms sleep and two `halb status`
// runs, more on a loaded machine.
func (d *daemon) timeTo(what string, ok func() bool) (took, window time.Duration) {
	d.t.Helper()
	start := time.Now()
	last := start // the start of the latest poll that did not see it
	for {
		poll := time.Now()
		if ok() {
			took = time.Since(start)
			return took, took - last.Sub(start)
		}
		last = poll
		if time.Since(start) > 20*time.Second {
			d.t.Fatalf("%s: not within 20 s; halb status has %+v", what, d.backends("web"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) waitLog(text string) {
	d.t.Helper()
	d.waitFor("halb logs "+text, func() bool { return strings.Contains(d.out.String(), text) })
}

// server is a backend's TCP server, which can stop and start: it greets
// each connection with its name, then answers each line it reads with
// "name: line".
type server struct {
	t    testing.TB
	ns   *netnstest.NS
	name string
	addr netip.AddrPort // a zero address: every address
	mu   sync.Mutex
	ln   net.Listener
}

// startServer starts a server on addr and port in ns. With a zero addr it
// listens on every address: the VIP for traffic, its own for health checks.
func startServer(t testing.TB, ns *netnstest.NS, name string, addr netip.Addr, port uint16) *server {
	t.Helper()
	s := &server{t: t, ns: ns, name: name, addr: netip.AddrPortFrom(addr, port)}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	var ln net.Listener
	err := s.ns.Do(func() error {
		var err error
		a := s.addr.String()
		if !s.addr.Addr().IsValid() {
			a = fmt.Sprintf(":%d", s.addr.Port())
		}
		ln, err = net.Listen("tcp", a)
		return err
	})
	if err != nil {
		s.t.Fatalf("%s: listen on %s: %v", s.name, s.addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(2 * runTimeout))
				fmt.Fprintf(conn, "%s\n", s.name)
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					fmt.Fprintf(conn, "%s: %s\n", s.name, sc.Text())
				}
			}()
		}
	}()
}

// stop closes the listener: new connections are refused, as when the
// server process ends.
func (s *server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
}

// spreadTo is spread to another port of the VIP.
func (c *client) spreadTo(t *testing.T, port uint16, first, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	err := c.ns.Do(func() error {
		for i := range n {
			cn, err := c.dialService(port, first+i)
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
			}
			counts[cn.backend]++
			cn.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v (so far %v)", err, counts)
	}
	return counts
}

// loadResult is what a load run saw.
type loadResult struct {
	answers map[string]int
	failed  []string
}

// loadRun is requests to the VIP from several workers at once, until
// stopped.
type loadRun struct {
	mu    sync.Mutex
	res   loadResult
	next  int // the next request's number
	max   int
	busy  int // requests under way
	stopc chan struct{}
	done  chan struct{}
}

// load starts workers that make requests to the VIP one after the other,
// each on a fresh connection from its own port (first, first+1, ...):
// connect, read the greeting, hold the connection open for hold, send a
// line and read the answer. The hold keeps each worker's request in
// flight most of the time, and the load steady rather than a flood. It
// makes at most max requests, and runs at most runTimeout.
func (c *client) load(workers, first, max int, hold time.Duration) *loadRun {
	r := &loadRun{res: loadResult{answers: map[string]int{}}, max: max, stopc: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.ns.Do(func() error {
				deadline := time.Now().Add(runTimeout)
				for time.Now().Before(deadline) {
					select {
					case <-r.stopc:
						return nil
					default:
					}
					r.mu.Lock()
					i := r.next
					r.next++
					if i >= r.max {
						r.mu.Unlock()
						return nil
					}
					r.busy++
					r.mu.Unlock()
					backend, err := c.requestHeld(first+i, hold)
					r.mu.Lock()
					r.busy--
					if err != nil {
						r.res.failed = append(r.res.failed, fmt.Sprintf("request %d: %v", i, err))
					} else {
						r.res.answers[backend]++
					}
					r.mu.Unlock()
				}
				return nil
			})
		}()
	}
	go func() { wg.Wait(); close(r.done) }()
	return r
}

// inFlight is how many requests are under way.
func (r *loadRun) inFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.busy
}

// count is how many requests have ended.
func (r *loadRun) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return total(r.res.answers) + len(r.res.failed)
}

// stop stops the workers once n requests have ended, and returns what
// they saw.
func (r *loadRun) stop(t *testing.T, n int) loadResult {
	t.Helper()
	for start := time.Now(); r.count() < n; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > runTimeout {
			t.Fatalf("%d of %d requests in %s", r.count(), n, runTimeout)
		}
	}
	close(r.stopc)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.res
}

// request is one request on a fresh connection from port.
func (c *client) request(port int) (string, error) {
	cn, err := c.dial(port)
	if err != nil {
		return "", err
	}
	defer cn.Close()
	if _, err := fmt.Fprintf(cn, "hello\n"); err != nil {
		return "", err
	}
	line, err := cn.r.ReadString('\n')
	if want := cn.backend + ": hello\n"; err != nil || line != want {
		return "", fmt.Errorf("answer %q (%v), want %q", line, err, want)
	}
	return cn.backend, nil
}

// requestHeld is request with the connection held open for hold between
// the greeting and the line.
func (c *client) requestHeld(port int, hold time.Duration) (string, error) {
	cn, err := c.dial(port)
	if err != nil {
		return "", err
	}
	defer cn.Close()
	time.Sleep(hold)
	if err := cn.exchange("hello", opTimeout); err != nil {
		return "", err
	}
	return cn.backend, nil
}
