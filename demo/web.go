package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// backend is a web server on a backend host. It answers / with its name,
// so the client sees who served it, and /healthz with ok for halb's
// health checks. It listens on every address: the VIP on lo for the
// traffic halb forwards, its own for the checks.
type backend struct {
	*host
	addr netip.Addr
	srv  *http.Server
}

func (b *backend) serve() error {
	var ln net.Listener
	err := b.do(func() error {
		var err error
		ln, err = net.Listen("tcp", ":80")
		return err
	})
	if err != nil {
		return fmt.Errorf("web server on %s: %w", b.name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, b.name) })
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	b.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 2 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	return nil
}

// stopServing stops the server: connections to it are refused from now
// on, and halb's checks fail.
func (b *backend) stopServing() {
	if b.srv != nil {
		_ = b.srv.Close()
	}
}

// answer is the outcome of one request from the client.
type answer struct {
	at      time.Time // when it was sent
	backend string    // who answered; "" when nobody did
	vipAt   string    // the balancer the client's ARP entry for the VIP points to
}

// client asks http://VIP/ every interval, each time on a new connection,
// so that each request is a new flow for the balancer to place.
type client struct {
	*host
	vip     netip.Addr
	lbByMAC map[string]string
	web     *http.Client

	mu      sync.Mutex
	answers []answer
}

func newClient(h *host, vip netip.Addr, lbByMAC map[string]string) *client {
	c := &client{host: h, vip: vip, lbByMAC: lbByMAC}
	c.web = &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			// Each connection's socket is made inside the client's
			// namespace.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var conn net.Conn
				err := h.do(func() error {
					var err error
					conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return err
				})
				return conn, err
			},
		},
	}
	return c
}

// vipAt names the balancer whose MAC the client has for the VIP.
func (c *client) vipAt() string {
	mac := neighbour(c.host, c.vip)
	if mac == nil {
		return "?"
	}
	if lb, ok := c.lbByMAC[mac.String()]; ok {
		return lb
	}
	return mac.String()
}

// ask sends one request and records who answered.
func (c *client) ask(ctx context.Context) {
	a := answer{at: time.Now()}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.vip.String()+"/", nil)
	if resp, err := c.web.Do(req); err == nil {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			a.backend = strings.TrimSpace(string(body))
		}
	}
	if ctx.Err() != nil {
		return // interrupted, not failed
	}
	a.vipAt = c.vipAt()
	c.mu.Lock()
	c.answers = append(c.answers, a)
	c.mu.Unlock()
}

// run asks until ctx ends, and prints once a second what answered since
// the last line, in order ("-" for a request nobody answered), and where
// the client's ARP finds the VIP.
func (c *client) run(ctx context.Context, every time.Duration, out io.Writer) {
	start := time.Now()
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			c.ask(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	shown := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		fresh := slices.Clone(c.answers[shown:])
		shown = len(c.answers)
		c.mu.Unlock()
		var names []string
		for _, a := range fresh {
			if a.backend == "" {
				names = append(names, "-")
			} else {
				names = append(names, a.backend)
			}
		}
		fmt.Fprintf(out, "  %3.0fs  VIP at %-3s  answers: %s\n", time.Since(start).Seconds(), c.vipAt(), strings.Join(names, " "))
	}
}

// tally counts the answers to the requests sent in [from, to).
type tally struct {
	by     map[string]int // backend: answers
	failed int
	vipAt  map[string]int // balancer: requests sent while the VIP was there
}

func (c *client) tally(from, to time.Time) tally {
	t := tally{by: map[string]int{}, vipAt: map[string]int{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.answers {
		if a.at.Before(from) || !a.at.Before(to) {
			continue
		}
		if a.backend == "" {
			t.failed++
		} else {
			t.by[a.backend]++
		}
		t.vipAt[a.vipAt]++
	}
	return t
}

// String reads "VIP at lb1  answers be1 9, be2 8, be3 8  failed 0".
func (t tally) String() string {
	var b strings.Builder
	b.WriteString("VIP at")
	for _, lb := range sortedKeys(t.vipAt) {
		fmt.Fprintf(&b, " %s", lb)
	}
	b.WriteString("  answers")
	for i, be := range beIPs {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %s %d", be.name, t.by[be.name])
	}
	fmt.Fprintf(&b, "  failed %d", t.failed)
	return b.String()
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
