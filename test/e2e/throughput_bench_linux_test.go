package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// The load of BenchmarkThroughput, the same for every way of forwarding.
// Each shape runs loadRounds × roundDuration on each.
const (
	loadWorkers   = 32                     // clients at once, in both shapes
	loadRounds    = 10                     // rounds of each shape, the variants taking turns
	roundDuration = 500 * time.Millisecond // one variant's turn, or its cap, whichever ends first
	maxNewConn    = 20_000                 // requests on fresh connections in one turn, at most
	maxPersistent = 200_000                // requests on the open connections in one turn, at most
	warmRequests  = 60                     // before measuring: ARP, and a look at the spread
)

// BenchmarkThroughput measures requests per second from a client through
// the VIP to three DR backends, in the network of TestDR, on three ways of
// forwarding in the balancer's namespace:
//
//   - xdp: halb's data path, native XDP on the balancer's veth;
//   - xdp-generic: the same program on the skb path (generic XDP);
//   - kernel: no halb at all. The balancer forwards by plain routing
//     (ip_forward=1) with an ECMP route to the VIP over the three backends,
//     hashed on the 5-tuple (fib_multipath_hash_policy=3, custom, with
//     fib_multipath_hash_fields=0x37) so that flows spread as Maglev
//     spreads them; ICMP redirects are off, so the client keeps sending
//     through the balancer.
//
// Each variant has a network of its own, and all three get the same
// namespaces and links, including the XDP_PASS program on the switch's
// side of the balancer's veth and TX checksum offload off on the client,
// which native XDP needs; the backends hold the VIP on lo and answer the
// client directly in all three. Two shapes of load: new-conn (loadWorkers
// clients, each opening a connection per request: handshake, greeting,
// one line and its answer, close) and persistent (loadWorkers connections
// opened beforehand, one line and its answer at a time on each).
//
// The machine is shared, and its other load comes and goes: so a shape
// is measured in rounds in which the variants take turns, each round in
// another order, and every variant meets the same weather. The
// sub-benchmarks report what the rounds measured: req/s, failed requests,
// and for the XDP variants their ratio to kernel. Each checks that its
// balancer carried at least a packet per request. b.N is ignored: run it
// with -benchtime 1x.
//
// The client and the servers run in this process, on the same CPUs as the
// balancer's softirq work, so the figures are those of the whole machine,
// and a ratio near 1 says the balancer is not what limits it.
func BenchmarkThroughput(b *testing.B) {
	netnstest.Require(b)
	vs := []*variant{
		{name: "xdp", xdpMode: "native"},
		{name: "xdp-generic", xdpMode: "generic"},
		{name: "kernel"},
	}
	for _, v := range vs {
		v.setUp(b)
	}
	kernel := vs[len(vs)-1]
	for _, shape := range []string{"new-conn", "persistent"} {
		b.Run(shape, func(b *testing.B) {
			for r := range loadRounds {
				for i := range vs {
					v := vs[(r+i)%len(vs)]
					if err := v.turn(shape); err != nil {
						b.Fatalf("%s, round %d: %v", v.name, r+1, err)
					}
				}
			}
			for _, v := range vs {
				b.Run(v.name, func(b *testing.B) {
					m := v.results[shape]
					b.ReportMetric(0, "ns/op")
					b.ReportMetric(m.rate(), "req/s")
					b.ReportMetric(float64(m.failed.Load()), "failed")
					if k := kernel.results[shape].rate(); v != kernel && k > 0 {
						b.ReportMetric(m.rate()/k, v.name+"/kernel")
					}
					b.Logf("%d requests in %s over %d rounds, %d failed; connections on %v; the balancer carried %d packets to the VIP",
						m.ok.Load(), m.elapsed.Round(time.Millisecond), loadRounds, m.failed.Load(), m.spread, m.carried)
					if m.failed.Load() > 0 {
						b.Errorf("%d requests failed, the first: %v", m.failed.Load(), m.firstErr)
					}
					// Each request sends the VIP at least one
					// packet: fewer through the balancer means
					// some went around it.
					if m.carried < m.ok.Load() {
						b.Errorf("the balancer carried %d packets for %d requests", m.carried, m.ok.Load())
					}
				})
			}
			for _, v := range vs {
				v.closeConns()
			}
		})
	}
}

// variant is one way of forwarding, in a network of its own.
type variant struct {
	name    string
	xdpMode string // "" is kernel forwarding
	bed     *bed
	// carried counts the packets the balancer has sent on towards the
	// VIP: its data path's, or its kernel's.
	carried func() (uint64, error)
	conns   []*conn // the persistent shape's, open while it runs
	results map[string]*tally
}

// setUp builds v's network, starts its forwarding and checks that it
// reaches all three backends.
func (v *variant) setUp(b *testing.B) {
	b.Helper()
	// The native variant's links for all three, so that only the
	// forwarding differs.
	v.bed = newBed(b, loader.HookXDPNative)
	v.results = map[string]*tally{}
	tuneClient(b, v.bed.client)
	if v.xdpMode != "" {
		cfg := datapathConfig(b, config.ModeXDP, v.xdpMode)
		dp := start(b, v.bed.lb, cfg)
		services := []service.Service{webService("web", webKey, service.DR)}
		if err := dp.Apply(context.Background(), services); err != nil {
			b.Fatalf("%s: apply the service: %v", v.name, err)
		}
		waitLive(b, dp, 3)
		v.carried = func() (uint64, error) { return xdpPackets(dp) }
	} else {
		kernelForward(b, v.bed)
		v.carried = func() (uint64, error) { return forwarded(v.bed.lb) }
	}
	counts, err := warmUp(v.bed.client)
	if err != nil {
		b.Fatalf("%s: warm-up: %v (answers so far %v)", v.name, err, counts)
	}
	if len(counts) != len(backends) {
		b.Fatalf("%s: warm-up: answers from %v, want all %d backends", v.name, counts, len(backends))
	}
}

// turn runs one round of shape on v, adding to v's results.
func (v *variant) turn(shape string) error {
	t := v.results[shape]
	if t == nil {
		t = &tally{spread: map[string]int{}}
		v.results[shape] = t
	}
	c := v.bed.client
	if shape == "persistent" && v.conns == nil {
		conns, err := openConns(c, loadWorkers)
		if err != nil {
			return err
		}
		v.conns = conns
		for _, cn := range conns {
			t.spread[cn.backend]++
		}
	}
	before, err := v.carried()
	if err != nil {
		return err
	}
	if shape == "new-conn" {
		t.elapsed += newConnRound(c, loadWorkers, roundDuration, maxNewConn, t)
	} else {
		t.elapsed += persistentRound(c, v.conns, roundDuration, maxPersistent, t)
	}
	after, err := v.carried()
	if err != nil {
		return err
	}
	t.carried += after - before
	return nil
}

func (v *variant) closeConns() {
	for _, cn := range v.conns {
		if cn != nil {
			cn.Close()
		}
	}
	v.conns = nil
}

// xdpPackets is the packets halb's data path has sent to the backends
// of its services.
func xdpPackets(dp *loader.Datapath) (uint64, error) {
	st, err := dp.Status()
	if err != nil {
		return 0, fmt.Errorf("read the data path's status: %w", err)
	}
	var n uint64
	for _, s := range st {
		n += s.Stats.Packets
	}
	return n, nil
}

// tuneClient lets the client open a connection per request through all
// the rounds without running out of ports: it closes first, so each port
// spends a minute in TIME_WAIT unless it may be reused.
func tuneClient(b *testing.B, c *client) {
	b.Helper()
	err := sysctls(c.ns, map[string]string{
		"net/ipv4/ip_local_port_range": "1024 65535",
		"net/ipv4/tcp_tw_reuse":        "1",
	})
	if err != nil {
		b.Fatal(err)
	}
}

// kernelForward makes the balancer a plain router for the VIP: an ECMP
// route over the three backends, which hold the VIP on lo as in DR.
func kernelForward(b *testing.B, bed *bed) {
	b.Helper()
	// The balancer forwards out of the interface it received on, to a
	// next hop on the client's own subnet, which is when it would send
	// the client an ICMP redirect; the client would then go to that
	// backend directly, around the balancer. Neither side may do that.
	//
	// The hash is the custom policy (3) over the 5-tuple (fields
	// 0x37: addresses, protocol, ports), not the L4 policy (1): that
	// one takes the hash an skb already carries, and an skb from a
	// socket in a namespace on this host carries its socket's, which
	// TCP changes when it retransmits, so one flow's packets would
	// go to two backends. The custom policy always reads the headers.
	err := sysctls(bed.lb, map[string]string{
		"net/ipv4/ip_forward":                  "1",
		"net/ipv4/fib_multipath_hash_policy":   "3",
		"net/ipv4/fib_multipath_hash_fields":   "0x0037",
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/eth0/send_redirects":    "0",
		"net/ipv4/conf/default/send_redirects": "0",
	})
	if err == nil {
		err = sysctls(bed.client.ns, map[string]string{
			"net/ipv4/conf/all/accept_redirects":  "0",
			"net/ipv4/conf/eth0/accept_redirects": "0",
		})
	}
	if err != nil {
		b.Fatal(err)
	}
	h := bed.lb.Netlink(b)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		b.Fatalf("the balancer's eth0: %v", err)
	}
	r := &netlink.Route{Dst: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	for _, be := range backends {
		r.MultiPath = append(r.MultiPath, &netlink.NexthopInfo{LinkIndex: eth0.Attrs().Index, Gw: be.addr.AsSlice()})
	}
	if err := h.RouteAdd(r); err != nil {
		b.Fatalf("route %s over the three backends: %v", vip, err)
	}
}

// sysctls writes each value to its key under /proc/sys inside ns.
func sysctls(ns *netnstest.NS, kv map[string]string) error {
	return ns.Do(func() error {
		for k, v := range kv {
			// /proc/sys/net shows the namespace of the thread that
			// opens it.
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", strings.ReplaceAll(k, "/", "."), v, ns.Name, err)
			}
		}
		return nil
	})
}

// forwarded is the IPv4 ForwDatagrams counter of ns.
func forwarded(ns *netnstest.NS) (uint64, error) {
	var n uint64
	err := ns.Do(func() error {
		// thread-self, not self: self/net is the namespace of the
		// process's main thread, not of this one.
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var names []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Ip:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for i, name := range names {
				if name == "ForwDatagrams" && i < len(fields) {
					n, err = strconv.ParseUint(fields[i], 10, 64)
					return err
				}
			}
		}
		if err := sc.Err(); err != nil {
			return err
		}
		return fmt.Errorf("no Ip: ForwDatagrams in /proc/net/snmp")
	})
	if err != nil {
		return 0, fmt.Errorf("read the forwarded packets of %s: %w", ns.Name, err)
	}
	return n, nil
}

// warmUp makes warmRequests requests on fresh connections, one after the
// other, and counts the backends that answered.
func warmUp(c *client) (map[string]int, error) {
	counts := map[string]int{}
	err := c.ns.Do(func() error {
		for i := range warmRequests {
			be, err := c.request(0)
			if err != nil {
				return fmt.Errorf("request %d of %d: %w", i+1, warmRequests, err)
			}
			counts[be]++
		}
		return nil
	})
	return counts, err
}

// tally is what the rounds of one shape on one variant saw.
type tally struct {
	ok, failed atomic.Uint64
	mu         sync.Mutex
	firstErr   error
	spread     map[string]int // backends of the connections
	// Written between rounds only.
	elapsed time.Duration
	carried uint64
}

// rate is requests per second; 0 when nothing was measured.
func (t *tally) rate() float64 {
	if t == nil || t.elapsed <= 0 {
		return 0
	}
	return float64(t.ok.Load()) / t.elapsed.Seconds()
}

func (t *tally) done(err error) {
	if err == nil {
		t.ok.Add(1)
		return
	}
	t.failed.Add(1)
	t.mu.Lock()
	if t.firstErr == nil {
		t.firstErr = err
	}
	t.mu.Unlock()
}

// newConnRound runs workers that each make one request per fresh
// connection, from an ephemeral port, until d has passed or max requests
// have been made, and returns how long they took.
func newConnRound(c *client, workers int, d time.Duration, max int, t *tally) time.Duration {
	var issued atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	end := begin.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The whole loop runs in the client's namespace: every
			// connection's socket is made there.
			_ = c.ns.Do(func() error {
				local := map[string]int{}
				for time.Now().Before(end) && issued.Add(1) <= int64(max) {
					be, err := c.request(0)
					if err == nil {
						local[be]++
					}
					t.done(err)
				}
				t.mu.Lock()
				for be, n := range local {
					t.spread[be] += n
				}
				t.mu.Unlock()
				return nil
			})
		}()
	}
	wg.Wait()
	return time.Since(begin)
}

// openConns opens n connections to the VIP.
func openConns(c *client, n int) ([]*conn, error) {
	conns := make([]*conn, 0, n)
	err := c.ns.Do(func() error {
		for i := range n {
			cn, err := c.dial(0)
			if err != nil {
				return fmt.Errorf("open connection %d of %d: %w", i+1, n, err)
			}
			conns = append(conns, cn)
		}
		return nil
	})
	if err != nil {
		for _, cn := range conns {
			cn.Close()
		}
		return nil, err
	}
	return conns, nil
}

// persistentRound exchanges a line at a time on each connection until d
// has passed or max requests have been made, and returns how long it
// took. A connection that fails is replaced; the failed request counts as
// a failure, and so does a failed replacement, which leaves the slot
// empty (nil) from then on.
func persistentRound(c *client, conns []*conn, d time.Duration, max int, t *tally) time.Duration {
	var issued atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	end := begin.Add(d)
	for i := range conns {
		if conns[i] == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && issued.Add(1) <= int64(max) {
				err := conns[i].exchange("r", opTimeout)
				t.done(err)
				if err == nil {
					continue
				}
				conns[i].Close()
				var cn *conn
				err = c.ns.Do(func() error {
					var err error
					cn, err = c.dial(0)
					return err
				})
				if err != nil {
					t.done(fmt.Errorf("replace connection %d: %w", i, err))
					conns[i] = nil
					return
				}
				conns[i] = cn
			}
		}()
	}
	wg.Wait()
	return time.Since(begin)
}
