package daemon

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/halb-lb/halb/service"
)

// listingDatapath is a data path with two flows of web, as the eBPF data
// path lists them; it keeps the query it was given.
type listingDatapath struct {
	nopDatapath
	asked *service.FlowQuery
}

func (l listingDatapath) Flows(_ context.Context, q service.FlowQuery) (service.FlowList, error) {
	*l.asked = q
	age, packets := int64(12), uint64(40)
	var out service.FlowList
	for _, c := range []string{"203.0.113.7:40000", "203.0.113.8:40001"} {
		out.Keep(q, service.Flow{Client: netip.MustParseAddrPort(c), Key: service.Key{VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: service.TCP},
			Service: "web", Backend: netip.MustParseAddrPort("198.51.100.1:80"), AgeSeconds: &age, Packets: &packets})
	}
	return out, nil
}

// flowQuery takes a configured service or none, and a limit from 1 to
// service.MaxFlowLimit (1000 unless given); anything else is refused with the status the CLI
// turns into exit status 2.
func TestFlowQuery(t *testing.T) {
	cfg := overrideConfig(1)
	for _, c := range []struct {
		query   string
		code    int
		service string
		limit   int
	}{
		{"", http.StatusOK, "", service.DefaultFlowLimit},
		{"service=web&limit=5", http.StatusOK, "web", 5},
		{"service=nope", http.StatusNotFound, "", 0},
		{"limit=0", http.StatusBadRequest, "", 0},
		{"limit=many", http.StatusBadRequest, "", 0},
		{"limit=10000", http.StatusOK, "", service.MaxFlowLimit},
		{"limit=10001", http.StatusBadRequest, "", 0},
		{"limit=99999999999999999999", http.StatusBadRequest, "", 0},
	} {
		v, _ := url.ParseQuery(c.query)
		q, code, msg := flowQuery(v, cfg)
		if code != c.code || code == http.StatusOK && (q.Service != c.service || q.Limit != c.limit) {
			t.Errorf("%q: %+v, %d %q; want %d, service %q, limit %d", c.query, q, code, msg, c.code, c.service, c.limit)
		}
	}
	if _, code, _ := flowQuery(url.Values{"service": {"web"}}, nil); code != http.StatusNotFound {
		t.Errorf("a service asked of a daemon with no config yet: %d, want 404", code)
	}
}

// serveFlows answers root, or halb's own user (the test's: no root
// needed), on the control socket with the data path's
// flows, [] when there is no data path yet, 501 for a data path that
// cannot list them, and refuses a caller it cannot name: the flows show
// clients' addresses, so they are root's (and halb's own user's) alone,
// like a change (TestMayChange), not open to whoever may read status.
func TestServeFlows(t *testing.T) {
	cfg := overrideConfig(1)
	d := &Daemon{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	d.running.Store(cfg)
	sock := filepath.Join(t.TempDir(), "halb.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.controlHandler(), ConnContext: withConn}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer func() {
		client.CloseIdleConnections()
		srv.Close()
		<-served
	}()
	get := func(query string) (int, service.FlowList, string) {
		t.Helper()
		resp, err := client.Get("http://halb/v1/flows?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var list service.FlowList
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(body, &list); err != nil {
				t.Fatalf("%s: %v", body, err)
			}
		}
		return resp.StatusCode, list, string(body)
	}

	if code, list, body := get(""); code != http.StatusOK || list.Flows == nil || len(list.Flows) != 0 {
		t.Errorf("no data path yet: %d %s, want 200 and no flows", code, body)
	}
	var asked service.FlowQuery
	var dp service.Datapath = listingDatapath{asked: &asked}
	d.datapath.Store(&dp)
	code, list, body := get("service=web&limit=1")
	if code != http.StatusOK || asked != (service.FlowQuery{Service: "web", Limit: 1}) || list.Total != 2 || len(list.Flows) != 1 ||
		list.Flows[0].Backend != netip.MustParseAddrPort("198.51.100.1:80") || *list.Flows[0].AgeSeconds != 12 || *list.Flows[0].Packets != 40 {
		t.Errorf("web, limit 1: %d %s (asked %+v), want 1 of 2 flows", code, body, asked)
	}
	if code, _, body := get("service=nope"); code != http.StatusNotFound {
		t.Errorf("an unknown service: %d %s, want 404", code, body)
	}
	dp = nopDatapath{}
	d.datapath.Store(&dp)
	if code, _, body := get(""); code != http.StatusNotImplemented {
		t.Errorf("a data path that cannot list flows: %d %s, want 501", code, body)
	}

	// A request not from a unix socket has no caller to name.
	rec := httptest.NewRecorder()
	d.controlHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/flows", nil))
	if rec.Code != http.StatusForbidden {
		t.Errorf("a caller that cannot be named: %d %s, want 403", rec.Code, rec.Body)
	}
}

// A listing whose time ran out is not sent, even when the data path's
// lister did not notice and answered: the client has given up on it.
func TestServeFlowsLate(t *testing.T) {
	cfg := overrideConfig(1)
	d := &Daemon{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	d.running.Store(cfg)
	var asked service.FlowQuery
	var dp service.Datapath = listingDatapath{asked: &asked}
	d.datapath.Store(&dp)

	// serveFlows names its caller from the control connection.
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "halb.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(withConn(context.Background(), conn))
	cancel() // the listing's time is out before the lister answers
	rec := httptest.NewRecorder()
	d.serveFlows(rec, httptest.NewRequest(http.MethodGet, "/v1/flows", nil).WithContext(ctx))
	if rec.Code == http.StatusOK {
		t.Errorf("a listing past its time: %d %s, want an error, not the list", rec.Code, rec.Body)
	}
}
