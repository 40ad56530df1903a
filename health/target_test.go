package health

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// health_check.port: the check goes to another port than the backend's
// (keepalived's connect_port). The backend serves nothing on its own
// port; the check port answers, and the backend is healthy. The other
// way round it is not, and the error names the port checked.
func TestCheckPort(t *testing.T) {
	backend := closedPort(t, "tcp") // nothing there
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkPort := addrPort(t, l.Addr()).Port()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	defer srv.Close()

	for _, hc := range []config.HealthCheck{
		{Type: "tcp", Port: int(checkPort)},
		{Type: "http", Port: int(checkPort), Path: "/healthz", ExpectStatus: []int{200}},
		{Type: "http", Port: int(checkPort), URLs: []config.URLCheck{{Path: "/healthz", ExpectStatus: []int{200}}}},
	} {
		if err := check(t, hc, backend, 5*time.Second); err != nil {
			t.Errorf("%s check on port %d of a backend serving only there: %v", hc.Type, checkPort, err)
		}
		if err := check(t, config.HealthCheck{Type: hc.Type, Path: "/healthz", ExpectStatus: []int{200}}, backend, 5*time.Second); err == nil {
			t.Errorf("%s check of the backend's own port, where nothing listens: healthy", hc.Type)
		}
	}

	// The other way round: the backend's port answers, the check port
	// does not.
	closed := closedPort(t, "tcp").Port()
	err = check(t, config.HealthCheck{Type: "tcp", Port: int(closed)}, addrPort(t, l.Addr()), 5*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.HasPrefix(err.Error(), "port "+strconv.Itoa(int(closed))+": connect:") {
		t.Errorf("check port closed: %v, want port %d: connect: connection refused", err, closed)
	}

	// udp: the echo server on the check port answers; the backend's own
	// port is closed and would say so with ICMP port unreachable.
	echo := udpServer(t, "udp", "127.0.0.1:0", true)
	silentBackend := closedPort(t, "udp")
	if err := check(t, config.HealthCheck{Type: "udp", Port: int(echo.Port())}, silentBackend, 5*time.Second); err != nil {
		t.Errorf("udp check on the echo port: %v", err)
	}
	if err := check(t, config.HealthCheck{Type: "udp"}, silentBackend, 5*time.Second); err == nil {
		t.Error("udp check of the backend's own closed port: healthy")
	}
}

// An exec check learns the port to check beside the backend's own.
func TestExecEnvCheckPort(t *testing.T) {
	k := Key{Service: "web", Backend: netip.MustParseAddrPort("198.51.100.11:80")}
	env := strings.Join(execEnv(k, 8080), " ")
	if !strings.Contains(env, "HALB_BACKEND_PORT=80 ") || !strings.HasSuffix(env, "HALB_CHECK_PORT=8080") {
		t.Errorf("env %q", env)
	}
	if env := strings.Join(execEnv(k, 0), " "); !strings.HasSuffix(env, "HALB_CHECK_PORT=80") {
		t.Errorf("env without a check port %q", env)
	}
}

// The monitor keys a backend by its own address and port, whatever port
// its check goes to: what the status, the metrics and the weights use.
// A service group's backends are checked once, not once per pair.
func TestMonitorKeysByBackend(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	backend := closedPort(t, "tcp")
	rec := newRecorder()
	m := NewMonitor(rec.options())
	hc := fast("")
	hc.Port = int(addrPort(t, l.Addr()).Port())
	hc.Timeout = time.Second
	hc.Interval = 2 * time.Second
	s := webService(hc, backend.String())
	s.Listen = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("192.0.2.101:80")}
	if err := m.Update([]config.Service{s}); err != nil {
		t.Fatal(err)
	}
	start(t, m)
	waitFor(t, "a result", func() bool { _, res := rec.snapshot(); return len(res) > 0 })
	_, res := rec.snapshot()
	want := Key{Service: "web", Backend: backend}
	if len(res) != 1 || res[want] == 0 {
		t.Errorf("results by key %v, want one key, %v", res, want)
	}
	if st := m.States()[want]; st != Healthy {
		t.Errorf("state of %v = %v, want healthy (its check port answers)", want, st)
	}
}

// urls: every path must answer its status and, where given, the digest
// of its body (MD5 as keepalived's genhash prints it, or SHA-256).
func TestHTTPURLs(t *testing.T) {
	var page atomic.Value
	page.Store("<html>ok</html>\n")
	var flooded atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/page":
			io.WriteString(w, page.Load().(string))
		case "/ready":
			w.WriteHeader(http.StatusNoContent)
		case "/trickle": // a body without end, slowly
			w.Header().Set("Content-Type", "text/plain")
			for i := 0; i < 1000; i++ {
				if _, err := w.Write([]byte("x")); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		case "/flood": // a body without end, fast: bounded by 64 MiB
			chunk := make([]byte, 64<<10)
			for i := 0; i < 1024; i++ {
				n, err := w.Write(chunk)
				flooded.Add(int64(n))
				if err != nil {
					return
				}
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ap := addrPort(t, srv.Listener.Addr())
	md5sum := func(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	shasum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	good := page.Load().(string)
	urls := func(u ...config.URLCheck) config.HealthCheck { return config.HealthCheck{Type: "http", URLs: u} }
	status := []int{200}

	for _, c := range []struct {
		name   string
		hc     config.HealthCheck
		errHas string
	}{
		{"md5", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: md5sum(good)}), ""},
		{"md5 prefixed", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: "md5:" + md5sum(good)}), ""},
		{"sha256", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: shasum(good)}), ""},
		{"both paths", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: md5sum(good)},
			config.URLCheck{Path: "/ready", ExpectStatus: []int{200, 204}}), ""},
		{"second path's status", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: md5sum(good)},
			config.URLCheck{Path: "/ready", ExpectStatus: status}), "GET /ready: status 204, want 200"},
		{"first path missing", urls(config.URLCheck{Path: "/gone", ExpectStatus: status},
			config.URLCheck{Path: "/ready", ExpectStatus: []int{204}}), "GET /gone: status 404"},
		{"other digest", urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: md5sum("something else")}),
			"GET /page: body md5 " + md5sum(good) + ", want " + md5sum("something else")},
	} {
		err := check(t, c.hc, ap, 5*time.Second)
		switch {
		case c.errHas == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.errHas)
		}
	}

	// The page changes: the same check now fails.
	hc := urls(config.URLCheck{Path: "/page", ExpectStatus: status, Digest: md5sum(good)})
	page.Store("<html>defaced</html>\n")
	if err := check(t, hc, ap, 5*time.Second); err == nil || !strings.Contains(err.Error(), "body md5") {
		t.Errorf("changed body: %v, want a digest mismatch", err)
	}

	// A body that never ends, slowly: unhealthy at the timeout, not later.
	start := time.Now()
	err := check(t, urls(config.URLCheck{Path: "/trickle", ExpectStatus: status, Digest: md5sum(good)}), ap, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no answer within the timeout") {
		t.Errorf("endless slow body: %v, want no answer within the timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("endless slow body held a 300ms check for %s", took)
	}

	// A body that never ends, fast: hashed as it comes and cut at
	// maxDigestBody, with no copy kept.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	err = check(t, urls(config.URLCheck{Path: "/flood", ExpectStatus: status, Digest: shasum(good)}), ap, 20*time.Second)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, errBodyTooLong) {
		t.Errorf("endless fast body: %v, want %v", err, errBodyTooLong)
	}
	if n := flooded.Load(); n < maxDigestBody {
		t.Errorf("the server wrote %d bytes, fewer than the %d the check reads", n, maxDigestBody)
	}
	// The process's allocations while a body of more than 8 MiB was
	// read (the server's included) stay well below the body's size.
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("endless body: the server wrote %d bytes, the process allocated %d", flooded.Load(), grew)
	if grew > maxDigestBody/2 {
		t.Errorf("reading an endless body allocated %d bytes, want far fewer than the %d read", grew, maxDigestBody)
	}
}

// A digest check of a body within the bound reads it whole; one byte
// more is too long.
func TestReadBodyBound(t *testing.T) {
	body := strings.Repeat("a", maxDigestBody)
	sum, err := readBody(strings.NewReader(body), config.DigestSHA256)
	want := sha256.Sum256([]byte(body))
	if err != nil || string(sum) != string(want[:]) {
		t.Errorf("body of exactly %d bytes: %x, %v", maxDigestBody, sum, err)
	}
	if _, err := readBody(strings.NewReader(body+"a"), config.DigestMD5); !errors.Is(err, errBodyTooLong) {
		t.Errorf("one byte more: %v, want %v", err, errBodyTooLong)
	}
}

// A reload that changes only the port, the source or a url's digest
// restarts the check with the new target.
func TestSameCheckSeesTarget(t *testing.T) {
	base := config.HealthCheck{Type: "http", URLs: []config.URLCheck{{Path: "/", ExpectStatus: []int{200}, Digest: strings.Repeat("0", 32)}}}
	same := base
	same.URLs = []config.URLCheck{{Path: "/", ExpectStatus: []int{200}, Digest: strings.Repeat("0", 32)}}
	if !sameCheck(base, same) {
		t.Error("an equal check read again differs")
	}
	port, source, digest := base, base, base
	port.Port = 8080
	source.Source = netip.MustParseAddr("192.0.2.1")
	digest.URLs = []config.URLCheck{{Path: "/", ExpectStatus: []int{200}, Digest: strings.Repeat("1", 32)}}
	for name, hc := range map[string]config.HealthCheck{"port": port, "source": source, "digest": digest} {
		if sameCheck(base, hc) {
			t.Errorf("a check whose %s changed is the same", name)
		}
	}
}
