package daemon

import (
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/halb-lb/halb/service"
)

// The status page is `/` at control.metrics: what `halb status` shows,
// as HTML for a browser on an isolated network (no script, no external
// asset, the style inline), refreshing itself. It only reads: GET and HEAD
// are served, every other method is refused with 405, and nothing on it
// can change the daemon. html/template escapes every name that comes from
// the config or the network.

// pageSize bounds the services one page renders, so that a config of
// thousands of services costs each view the same: the rest are on the
// next pages (?page=N).
const pageSize = 100

// pageRefresh is how often the page reloads itself, in seconds.
const pageRefresh = 5

// Colours of the page; failedColour marks a backend that fails its check
// or that the data path cannot reach (the screenshot test looks for it).
const (
	failedColour = "#dc2626"
	masterColour = "#16a34a"
	faultColour  = "#f59e0b"
)

type pageView struct {
	Refresh      int
	Now          string
	Datapath     string
	Hooks        []string
	Instances    []pageInstance
	Services     []pageService
	First, Last  int // 1-based, of the services shown
	Total        int
	Prev, Next   int // page numbers, 0 when none
	Failed       string
	Master       string
	Fault        string
	RatesPending bool
}

type pageInstance struct {
	Name, Interface, State, Class, Since, Reason string
	VRID, Priority                               int
	VIPs                                         []string
}

type pageService struct {
	Name, Key, Datapath  string
	PacketRate, FlowRate string
	Backends             []pageBackend
}

type pageBackend struct {
	Addr, Health, Class, Override, Problem string
	Weight                                 uint32
	Live                                   bool
	PacketRate, FlowRate                   string
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<title>halb status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#111;background:#fff}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:16px;margin:1em 0 .3em}
table{border-collapse:collapse;margin-bottom:.8em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}
.MASTER{background:{{.Master}};color:#fff}.FAULT{background:{{.Fault}}}
.failed{background:{{.Failed}};color:#fff}.problem{background:{{.Fault}}}.drained{background:#ddd;color:#555}
.svc{background:#f5f5f5;font-weight:bold}small{color:#666}
</style></head><body>
<h1>halb</h1>
<p><small>{{.Now}} · data path {{.Datapath}}{{range .Hooks}} · {{.}}{{end}} · refreshes every {{.Refresh}} s{{if .RatesPending}} · rates from the next refresh{{end}}</small></p>
<h2>VRRP instances</h2>
{{if .Instances}}<table id="instances"><tr><th>instance</th><th>interface</th><th>vrid</th><th>state</th><th>priority</th><th>virtual IPs</th><th>since</th><th>reason</th></tr>
{{range .Instances}}<tr class="instance"><td>{{.Name}}</td><td>{{.Interface}}</td><td class="n">{{.VRID}}</td><td class="state {{.Class}}">{{.State}}</td><td class="n">{{.Priority}}</td><td>{{range $i, $v := .VIPs}}{{if $i}}, {{end}}{{$v}}{{end}}</td><td>{{.Since}}</td><td>{{.Reason}}</td></tr>
{{end}}</table>{{else}}<p>none</p>{{end}}
<h2>Services</h2>
{{if .Services}}<p><small>services {{.First}}–{{.Last}} of {{.Total}}{{if .Prev}} · <a href="?page={{.Prev}}">previous</a>{{end}}{{if .Next}} · <a href="?page={{.Next}}">next</a>{{end}}</small></p>
<table id="services"><tr><th>service / backend</th><th>health</th><th>weight</th><th>override</th><th>packets/s</th><th>new flows/s</th><th>problem</th></tr>
{{range .Services}}<tr class="svc"><td>{{.Name}} <small>{{.Key}} {{.Datapath}}</small></td><td></td><td></td><td></td><td class="n">{{.PacketRate}}</td><td class="n">{{.FlowRate}}</td><td></td></tr>
{{range .Backends}}<tr class="backend {{.Class}}"><td>{{.Addr}}</td><td>{{.Health}}</td><td class="n">{{.Weight}}</td><td>{{.Override}}</td><td class="n">{{.PacketRate}}</td><td class="n">{{.FlowRate}}</td><td>{{.Problem}}</td></tr>
{{end}}{{end}}</table>{{else}}<p>none</p>{{end}}
</body></html>
`))

// pageHandler serves the status page from o, its rates from rates.
func pageHandler(o observed, rates *rateKeeper, log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the status page only reads: use GET", http.StatusMethodNotAllowed)
			return
		}
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		view := pageOf(statusOf(o, log), rates, page, time.Now())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := pageTemplate.Execute(w, view); err != nil {
			log.Debug("status page not written", "err", err)
		}
	}
}

// pageOf lays out one page of st: every instance, and the services of
// page number page (1 when out of range).
func pageOf(st Status, rates *rateKeeper, page int, now time.Time) pageView {
	v := pageView{Refresh: pageRefresh, Now: now.UTC().Format(time.RFC3339), Datapath: st.Datapath, Hooks: st.Hooks,
		Failed: failedColour, Master: masterColour, Fault: faultColour, Total: len(st.Services)}
	for _, in := range st.Instances {
		v.Instances = append(v.Instances, pageInstance{Name: in.Name, Interface: in.Interface, State: in.ShownState(), Class: in.State,
			VRID: in.VRID, Priority: in.Priority, VIPs: in.VirtualIPs, Since: in.Since.UTC().Format(time.RFC3339), Reason: in.Reason})
	}
	pages := (len(st.Services) + pageSize - 1) / pageSize
	if page < 1 || page > pages {
		page = 1
	}
	if page > 1 {
		v.Prev = page - 1
	}
	if page < pages {
		v.Next = page + 1
	}
	v.First = (page-1)*pageSize + 1
	v.Last = min(page*pageSize, len(st.Services))
	var shown []service.Report
	if v.Total > 0 {
		shown = st.Services[v.First-1 : v.Last]
	}
	rate := rates.read(st.Services, now)
	v.RatesPending = !rate.ready
	health := map[string]BackendStatus{}
	for _, b := range st.Backends {
		health[b.Service+" "+b.Backend] = b
	}
	for _, s := range shown {
		ps := pageService{Name: s.Name, Key: s.Key.String(), Datapath: s.Datapath}
		ps.PacketRate, ps.FlowRate = rate.of(s.Key, netip.AddrPort{})
		for _, b := range s.Backends {
			ps.Backends = append(ps.Backends, backendRow(s, b, health[s.Name+" "+b.Addr.String()], rate))
		}
		v.Services = append(v.Services, ps)
	}
	return v
}

// backendRow is one backend's line: failed when its check fails, a
// problem when the data path cannot fully reach it, drained when it takes
// no new flows.
func backendRow(s service.Report, b service.BackendReport, h BackendStatus, rate rateView) pageBackend {
	row := pageBackend{Addr: b.Addr.String(), Weight: b.Weight, Live: b.Live, Problem: b.Problem, Health: h.Health}
	if row.Health == "" {
		row.Health = "no check"
	} else if !h.Confirmed {
		row.Health += " (presumed)"
	}
	if h.LastError != "" && h.Health != "healthy" {
		row.Problem = strings.Join(slices.DeleteFunc([]string{row.Problem, "check: " + h.LastError}, func(s string) bool { return s == "" }), "; ")
	}
	switch {
	case h.Health == "unhealthy":
		row.Class = "failed"
	case b.Problem != "":
		row.Class = "problem"
	case !b.Live:
		row.Class = "drained"
	}
	if o := h.Override; o != nil {
		switch {
		case o.Drained:
			row.Override = "drained"
		case o.Weight != nil:
			row.Override = "weight " + strconv.Itoa(*o.Weight)
		}
		row.Override += " by " + o.By
	}
	row.PacketRate, row.FlowRate = rate.of(s.Key, b.Addr)
	return row
}

// rateKeeper turns the data path's counters into per-second rates
// (service.Rates): it keeps the last read of the counters the page showed
// and no more (a service or backend that is gone leaves with the next
// read), so its memory is bounded by the configuration's size. Reads
// closer together than a second reuse the last rates: several viewers
// refreshing make no noise of their own.
type rateKeeper struct {
	mu    sync.Mutex
	last  []service.Report
	at    time.Time
	rates map[service.RateKey]service.Rate
}

// rateView is the rates of one read.
type rateView struct {
	ready bool
	rates map[service.RateKey]service.Rate
}

// of is the packets and new flows per second of a service's total (the
// zero backend) or one of its backends, "–" where there is no rate.
func (r rateView) of(key service.Key, backend netip.AddrPort) (packets, flows string) {
	v, ok := r.rates[service.RateKey{Service: key, Backend: backend}]
	if !ok {
		return "–", "–"
	}
	return fmt.Sprintf("%.1f", v.Packets), fmt.Sprintf("%.1f", v.NewFlows)
}

func (k *rateKeeper) read(services []service.Report, now time.Time) rateView {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.at.IsZero():
		k.last, k.at = services, now
		return rateView{}
	case now.Sub(k.at) < time.Second:
		return rateView{ready: k.rates != nil, rates: k.rates}
	}
	k.rates = service.Rates(k.last, services, now.Sub(k.at))
	k.last, k.at = services, now
	return rateView{ready: true, rates: k.rates}
}
