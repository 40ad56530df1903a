package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/service"
)

// halb flows with no daemon exits 1 and says so; a limit below 1, above
// service.MaxFlowLimit or no number at all exits 2 before asking.
func TestFlowsNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, _, errs := run(t, "flows", "-s", sock)
	if code != exitFailure || !strings.Contains(errs, "no halb daemon answers") {
		t.Errorf("flows with no daemon: exit %d, %q; want 1", code, errs)
	}
	for _, limit := range []string{"0", "10001", "99999999999999999999", "many"} {
		code, _, errs = run(t, "flows", "--limit", limit, "-s", sock)
		if code != exitBadConfig || !strings.Contains(errs, "--limit") || strings.Contains(errs, "no halb daemon") {
			t.Errorf("--limit %s: exit %d, %q; want 2, naming --limit", limit, code, errs)
		}
	}
}

// fakeFlows serves /v1/flows at sock as the daemon would: 404 for a
// service other than web or web6, else the flows of the data path the
// service names (web: eBPF, web6: IPVS), cut to the limit.
func fakeFlows(t *testing.T, sock string) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	ap := netip.MustParseAddrPort
	web := service.Key{VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: service.TCP}
	web6 := service.Key{VIP: netip.MustParseAddr("2001:db8::10"), Port: 443, Proto: service.TCP}
	flows := map[string][]service.Flow{
		"web": {
			{Client: ap("203.0.113.7:40000"), Key: web, Service: "web", Backend: ap("198.51.100.1:80"), BackendID: 1, AgeSeconds: i64(42), Packets: u64(17)},
			{Client: ap("203.0.113.8:40001"), Key: web, Service: "web", Backend: ap("198.51.100.2:80"), BackendID: 2, SourcePort: 61000, AgeSeconds: i64(3725), Packets: u64(90210)},
			{Client: ap("203.0.113.9:40002"), Key: web, Service: "web", BackendID: 7, AgeSeconds: i64(185), Packets: u64(3)},
		},
		"web6": {
			{Client: ap("[2001:db8:ff::7]:50000"), Key: web6, Service: "web6", Backend: ap("[2001:db8:1::11]:443"), State: "ESTABLISHED", ExpiresSeconds: i64(899)},
		},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q service.FlowQuery
		q.Service = r.URL.Query().Get("service")
		if _, ok := flows[q.Service]; !ok && q.Service != "" {
			http.Error(w, "unknown service "+q.Service, http.StatusNotFound)
			return
		}
		q.Limit = service.DefaultFlowLimit
		if r.URL.Query().Get("limit") == "2" {
			q.Limit = 2
		}
		list := service.FlowList{Flows: []service.Flow{}}
		for _, f := range flows[q.Service] {
			list.Keep(q, f)
		}
		_ = json.NewEncoder(w).Encode(list)
	})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
}

// halb flows draws the table: ages in the largest units that fit, a full
// NAT flow's source port, a gone backend by its id, "N of M" when cut;
// IPVS's flows with "-" for what IPVS does not keep and their state and
// expiry; an unknown service exits 2.
func TestFlowsOutput(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "halb.sock")
	fakeFlows(t, sock)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--service", "web"}, exitOK, `CLIENT             SERVICE  BACKEND                          AGE    PACKETS
203.0.113.7:40000  web      198.51.100.1:80                  42s    17
203.0.113.8:40001  web      198.51.100.2:80 from port 61000  1h02m  90210
203.0.113.9:40002  web      gone (id 7)                      3m05s  3
`},
		{[]string{"--service", "web", "--limit", "2"}, exitOK, `CLIENT             SERVICE  BACKEND                          AGE    PACKETS
203.0.113.7:40000  web      198.51.100.1:80                  42s    17
203.0.113.8:40001  web      198.51.100.2:80 from port 61000  1h02m  90210
2 of 3 flows shown (--limit to see more)
`},
		{[]string{"--service", "web6"}, exitOK, `CLIENT                  SERVICE  BACKEND               AGE  PACKETS  STATE        EXPIRES
[2001:db8:ff::7]:50000  web6     [2001:db8:1::11]:443  -    -        ESTABLISHED  14m59s
`},
		{nil, exitOK, "CLIENT  SERVICE  BACKEND  AGE  PACKETS\nno flows\n"},
		{[]string{"--service", "nope"}, exitBadConfig, ""},
	} {
		code, out, errs := run(t, append([]string{"flows", "-s", sock}, c.args...)...)
		if code != c.code || out != c.want {
			t.Errorf("halb flows %v: exit %d, stderr %q, stdout\n%s\nwant exit %d, stdout\n%s", c.args, code, errs, out, c.code, c.want)
		}
	}
	code, out, _ := run(t, "flows", "-s", sock, "--service", "web", "--json")
	var list service.FlowList
	if err := json.Unmarshal([]byte(out), &list); code != exitOK || err != nil || list.Total != 3 || list.Flows[1].SourcePort != 61000 {
		t.Errorf("--json: exit %d, %v: %s", code, err, out)
	}
}
