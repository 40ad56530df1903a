package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/health"
	"github.com/halb-lb/halb/service"
	"github.com/halb-lb/halb/vrrp"
)

func getPage(t *testing.T, o observed, rates *rateKeeper, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	pageHandler(o, rates, slog.New(slog.DiscardHandler)).ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// reportsDatapath reports what it is given.
type reportsDatapath struct {
	nopDatapath
	reports []service.Report
}

func (r *reportsDatapath) Report() ([]service.Report, error) { return r.reports, nil }

// Names come from the config and addresses from the network: a service
// or instance named like markup shows as text, never as markup.
func TestStatusPageEscapes(t *testing.T) {
	evil := `<script>alert("x")</script>`
	dp := &reportsDatapath{reports: []service.Report{{Name: evil, Key: service.Key{VIP: netip.MustParseAddr("192.0.2.1"), Port: 80, Proto: service.TCP},
		Backends: []service.BackendReport{{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Weight: 1, Live: true, Problem: `<img src=x onerror=alert(1)>`}}}}}
	parts := fixedParts{name: "xdp", dp: dp,
		insts:  []vrrp.Status{{Name: evil, Interface: `eth0"><b>`, VRID: 1, State: vrrp.Master, Reason: "</td><script>", VirtualIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}},
		health: []health.Status{{Key: health.Key{Service: evil, Backend: netip.MustParseAddrPort("198.51.100.1:80")}, Check: "tcp", State: health.Healthy, Confirmed: true}}}
	rec := getPage(t, parts, &rateKeeper{}, http.MethodGet, "/")
	body := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /: %d %s", rec.Code, body)
	}
	for _, bad := range []string{"<script", "<img", "<b>", "</td><script"} {
		if strings.Contains(body, bad) {
			t.Errorf("the page carries %q unescaped:\n%s", bad, body)
		}
	}
	if !strings.Contains(body, "<td>eth0&#34;&gt;&lt;b&gt;</td>") {
		t.Errorf("the interface does not show as text:\n%s", body)
	}
	if n := strings.Count(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"); n != 2 {
		t.Errorf("the evil name shows %d times as text, want 2 (the instance, the service):\n%s", n, body)
	}
}

// The page only reads: GET and HEAD are served, every other method is
// refused; it has no external asset and no script, and refreshes itself.
func TestStatusPageReadOnly(t *testing.T) {
	parts := goldenCases()[1].parts // xdp
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		rec := getPage(t, parts, &rateKeeper{}, m, "/")
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /: %d, Allow %q; want 405, GET, HEAD", m, rec.Code, rec.Header().Get("Allow"))
		}
	}
	rec := getPage(t, parts, &rateKeeper{}, http.MethodGet, "/")
	body := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !strings.Contains(body, `<meta http-equiv="refresh" content="5">`) {
		t.Error("the page does not refresh itself")
	}
	for _, external := range []string{"<script", "<link", "src=", "http://", "https://", "<form", "@import"} {
		if strings.Contains(body, external) {
			t.Errorf("the page has %q: it must need nothing from elsewhere and change nothing", external)
		}
	}
}

// The page shows each instance's state (a released one's says so),
// priority and VIPs, and each
// backend's health, weight and override; a failed backend's row is
// marked failed, one the data path cannot reach a problem.
func TestStatusPageShows(t *testing.T) {
	body := getPage(t, goldenCases()[1].parts, &rateKeeper{}, http.MethodGet, "/").Body.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`<td>VI_1</td><td>eth0</td><td class="n">51</td><td class="state MASTER">MASTER</td><td class="n">150</td><td>192.0.2.100/24, 2001:db8::100/64</td>`),
		regexp.MustCompile(`<td class="state FAULT">FAULT</td>`),
		regexp.MustCompile(`<td>VI_3</td>.*<td class="state BACKUP">BACKUP \(released\)</td>`),
		regexp.MustCompile(`<tr class="backend failed"><td>198.51.100.12:80</td><td>unhealthy</td><td class="n">0</td><td></td>.*status 503`),
		regexp.MustCompile(`<tr class="backend problem"><td>198.51.100.13:80</td><td>no check</td><td class="n">50</td>.*no route`),
		regexp.MustCompile(`<tr class="backend "><td>198.51.100.11:80</td><td>healthy</td><td class="n">100</td><td>drained by uid 0 \(root\) pid 4242</td>`),
		regexp.MustCompile(`services 1–4 of 4`),
	} {
		if !want.MatchString(body) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

// Rates are the difference of two reads of the counters over the time
// between them; a read within a second of the last reuses its rates.
func TestStatusPageRates(t *testing.T) {
	key := service.Key{VIP: netip.MustParseAddr("192.0.2.1"), Port: 80, Proto: service.TCP}
	read := func(packets, flows uint64) []service.Report {
		return []service.Report{{Name: "web", Key: key, Stats: service.Stats{Packets: packets, NewFlows: flows},
			Backends: []service.BackendReport{{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Stats: service.Stats{Packets: packets, NewFlows: flows}}}}}
	}
	var k rateKeeper
	t0 := time.Date(2026, 12, 6, 23, 0, 0, 0, time.UTC)
	if r := k.read(read(100, 10), t0); r.ready {
		t.Fatal("rates from one read")
	}
	r := k.read(read(1100, 30), t0.Add(2*time.Second))
	if p, f := r.of(key, netip.MustParseAddrPort("198.51.100.1:80")); p != "500.0" || f != "10.0" {
		t.Errorf("backend rates %s, %s; want 500.0, 10.0", p, f)
	}
	if p, _ := k.read(read(9999, 30), t0.Add(2500*time.Millisecond)).of(key, netip.AddrPort{}); p != "500.0" {
		t.Errorf("a read half a second later gave %s, want the last rate 500.0", p)
	}
	// A restarted counter (the service programmed again) has no rate.
	if p, _ := k.read(read(5, 1), t0.Add(4*time.Second)).of(key, netip.AddrPort{}); p != "–" {
		t.Errorf("a counter that went back gave %s", p)
	}
	if len(k.last) != 1 || k.at != t0.Add(4*time.Second) {
		t.Errorf("the keeper holds %d services read at %v, want the last read's 1", len(k.last), k.at)
	}
}

// A thousand services render a hundred at a time, with links to the
// other pages; a page out of range is the first.
func TestStatusPagePaginates(t *testing.T) {
	dp := &reportsDatapath{}
	for i := range 1000 {
		dp.reports = append(dp.reports, service.Report{Name: fmt.Sprintf("svc%04d", i),
			Key:      service.Key{VIP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 250)}), Port: uint16(1000 + i), Proto: service.TCP},
			Backends: []service.BackendReport{{Addr: netip.MustParseAddrPort("198.51.100.1:80"), Weight: 1, Live: true}}})
	}
	parts := fixedParts{name: "xdp", dp: dp}
	for _, c := range []struct {
		target, first, last, span string
	}{
		{"/", "svc0000", "svc0099", "services 1–100 of 1000"},
		{"/?page=10", "svc0900", "svc0999", "services 901–1000 of 1000"},
		{"/?page=11", "svc0000", "svc0099", "services 1–100 of 1000"},
	} {
		rec := getPage(t, parts, &rateKeeper{}, http.MethodGet, c.target)
		body, _ := io.ReadAll(rec.Body)
		page := string(body)
		if n := strings.Count(page, `<tr class="svc">`); n != pageSize {
			t.Errorf("%s: %d services rendered, want %d", c.target, n, pageSize)
		}
		for _, want := range []string{c.first + " ", c.last + " ", c.span} {
			if !strings.Contains(page, want) {
				t.Errorf("%s lacks %q", c.target, want)
			}
		}
	}
}
