//go:build soak

package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestSoak runs `halb run` (XDP, DR) under a steady client load for
// HALB_SOAK_DURATION (default 10m; `make soak`), while every few seconds
// one of these happens: a backend's link goes down and comes back, a
// backend's server stops and starts again, or a reload changes weights or
// adds and removes a backend. At the end it compares halb with itself
// after the warm-up: goroutines, open file descriptors and the entries of
// its maps must not have grown, and no request may have failed outside
// the windows where a backend was going away.
func TestSoak(t *testing.T) {
	netnstest.Require(t)
	duration := 10 * time.Minute
	if v := os.Getenv("HALB_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 10*time.Minute {
			t.Fatalf("HALB_SOAK_DURATION=%q: want a duration up to 10m", v)
		}
		duration = d
	}
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	d := n.daemon(t, halb, "lb")
	d.metrics = "127.0.0.1:9471" // in the balancer's namespace
	base := daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1}
	d.write(base)
	d.start(n.lbs["lb"])
	d.waitLive("web", "all three backends live", 3)

	c := &client{ns: n.client, src: clientIP, vip: vip}
	load := startSoakLoad(c, 3, duration+time.Minute)

	// Warm up, then take the figures everything is compared with.
	time.Sleep(5 * time.Second)
	start := d.figures(t, n.lbs["lb"])
	t.Logf("after the warm-up: %v", start)

	// A window in which failures are expected: from a disruption until
	// the daemon has drained the backend (fall × interval plus one
	// interval) and a margin for requests already in flight.
	var windows []window
	grace := daemonFall*daemonInterval + daemonInterval + 2*opTimeout
	rng := rand.New(rand.NewPCG(1, 2)) // the same schedule every run
	events := map[string]int{}
	for end := time.Now().Add(duration); time.Now().Before(end); {
		be := []string{"be1", "be2", "be3"}[rng.IntN(3)]
		from := time.Now()
		switch kind := []string{"link flap", "backend flap", "reload"}[rng.IntN(3)]; kind {
		case "link flap":
			n.setPort(t, be, false)
			time.Sleep(2 * time.Second)
			n.setPort(t, be, true)
			d.waitLive("web", "all three back after a link flap", 3)
			windows = append(windows, window{from, time.Now().Add(grace)})
			events[kind]++
		case "backend flap":
			n.servers[be].stop()
			time.Sleep(2 * time.Second)
			n.servers[be].start()
			d.waitLive("web", "all three back after a server flap", 3)
			windows = append(windows, window{from, time.Now().Add(grace)})
			events[kind]++
		case "reload":
			// Weights change, and be4 comes and goes: requests it had
			// in flight when it was removed may fail.
			cfg := base
			cfg.weight1 = 1 + rng.IntN(3)
			if rng.IntN(2) == 0 {
				cfg.backends = append([]string{}, "be1", "be2", "be3", "be4")
			}
			d.write(cfg)
			d.reload()
			want := len(cfg.backends)
			d.waitLive("web", "the reload applied", want)
			if want == 3 {
				windows = append(windows, window{from, time.Now().Add(grace)})
			}
			events[kind]++
		}
		time.Sleep(time.Duration(2+rng.IntN(3)) * time.Second)
	}

	// Back to the configuration of the start, all backends live, and the
	// load stopped, before comparing.
	d.write(base)
	d.reload()
	d.waitLive("web", "back to three backends", 3)
	windows = append(windows, window{time.Now(), time.Now().Add(grace)})
	res := load.stop()
	time.Sleep(2 * time.Second) // the last connections close
	end := d.figures(t, n.lbs["lb"])
	t.Logf("events: %v", events)
	t.Logf("at the end: %v", end)

	unexpected := 0
	for _, f := range res.failures {
		if !inAny(windows, f.at) {
			unexpected++
			if unexpected <= 5 {
				t.Errorf("request failed outside any disruption at %s: %v", f.at.Format(time.StampMilli), f.err)
			}
		}
	}
	t.Logf("%d requests, %d failed, %d of them outside the disruptions", res.ok+len(res.failures), len(res.failures), unexpected)
	if res.ok == 0 {
		t.Fatal("no request succeeded")
	}
	// A handful of goroutines and descriptors come and go with the
	// checks and the scrapes themselves; a leak grows with the events.
	for _, k := range []string{"goroutines", "fds"} {
		if end[k] > start[k]+10 {
			t.Errorf("%s grew from %d to %d", k, start[k], end[k])
		}
	}
	for _, k := range []string{"halb_services", "halb_backends", "halb_maglev", "halb_vips"} {
		if end[k] != start[k] {
			t.Errorf("%s held %d entries after the warm-up and %d at the end, with the same configuration", k, start[k], end[k])
		}
	}
	d.stop()
}

type window struct{ from, to time.Time }

func inAny(ws []window, at time.Time) bool {
	for _, w := range ws {
		if !at.Before(w.from) && !at.After(w.to) {
			return true
		}
	}
	return false
}

// setPort takes backend name's switch port down or up.
func (n *daemonNet) setPort(t *testing.T, name string, up bool) {
	t.Helper()
	port, err := n.lan.h.LinkByName("sw-" + name)
	if err == nil {
		if up {
			err = n.lan.h.LinkSetUp(port)
		} else {
			err = n.lan.h.LinkSetDown(port)
		}
	}
	if err != nil {
		t.Fatalf("set %s's port up=%v: %v", name, up, err)
	}
}

// figures reads what must not grow: halb's goroutines and open
// descriptors (from its metrics) and the entries of its maps (that hold
// no flows: halb_ct is an LRU, full by design on a busy balancer).
func (d *daemon) figures(t *testing.T, ns *netnstest.NS) map[string]int {
	t.Helper()
	out := map[string]int{}
	body := scrapeNS(t, ns, d.metrics)
	for k, re := range map[string]*regexp.Regexp{
		"goroutines": regexp.MustCompile(`(?m)^go_goroutines (\d+)`),
		"fds":        regexp.MustCompile(`(?m)^process_open_fds (\d+)`),
	} {
		m := re.FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no %s in halb's metrics:\n%s", k, body)
		}
		out[k], _ = strconv.Atoi(m[1])
	}
	for _, name := range []string{"halb_services", "halb_backends", "halb_maglev", "halb_vips"} {
		out[name] = mapEntries(t, d.pins+"/"+name)
	}
	return out
}

// mapEntries counts the entries of a pinned map; for an array, those that
// are not all zeros.
func mapEntries(t *testing.T, path string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	key := make([]byte, m.KeySize())
	value := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for i := 0; i < 1<<20 && it.Next(&key, &value); i++ {
		if m.Type() == ebpf.Array && isZero(value) {
			continue
		}
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return n
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// scrapeNS GETs /metrics from addr inside ns, on a connection made on the
// namespace's thread (an http.Client would dial from any thread).
func scrapeNS(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	var body []byte
	err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, opTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(opTimeout))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return string(body)
}

// soakLoad is requests from ephemeral ports, each on a fresh connection,
// paced, until stopped or for at most limit.
type soakLoad struct {
	mu       sync.Mutex
	ok       int
	failures []failure
	stopc    chan struct{}
	done     chan struct{}
}

type failure struct {
	at  time.Time
	err error
}

func startSoakLoad(c *client, workers int, limit time.Duration) *soakLoad {
	l := &soakLoad{stopc: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.ns.Do(func() error {
				for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					select {
					case <-l.stopc:
						return nil
					default:
					}
					_, err := c.request(0)
					l.mu.Lock()
					if err != nil {
						l.failures = append(l.failures, failure{time.Now(), fmt.Errorf("request: %w", err)})
					} else {
						l.ok++
					}
					l.mu.Unlock()
				}
				return nil
			})
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

type soakResult struct {
	ok       int
	failures []failure
}

func (l *soakLoad) stop() soakResult {
	close(l.stopc)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return soakResult{ok: l.ok, failures: l.failures}
}
