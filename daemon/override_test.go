package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// lastApply is a data path that keeps what it was last given.
type lastApply struct {
	nopDatapath
	services []service.Service
}

func (l *lastApply) Apply(_ context.Context, s []service.Service) error {
	l.services = s
	return nil
}

func (l *lastApply) weights() map[string]uint32 {
	out := map[string]uint32{}
	for _, s := range l.services {
		for _, b := range s.Backends {
			out[s.Name+" "+b.AddrPort().String()] = b.Weight
		}
	}
	return out
}

func overrideConfig(webWeight int) *config.Config {
	be := func(a string, w int) config.Backend {
		return config.Backend{Address: netip.MustParseAddr(a), Port: 80, Weight: w}
	}
	return &config.Config{Services: []config.Service{
		{Name: "web", VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: "tcp", HealthCheck: config.HealthCheck{Type: "none"},
			Backends: []config.Backend{be("198.51.100.1", webWeight), be("198.51.100.2", 1)}},
		{Name: "api", VIP: netip.MustParseAddr("192.0.2.11"), Port: 80, Protocol: "tcp", HealthCheck: config.HealthCheck{Type: "none"},
			Backends: []config.Backend{be("198.51.100.1", 1)}},
	}}
}

// An override feeds the weights the data path is given, for its backend
// of its service alone; a reload that leaves the backend as it was keeps
// it, one that changes the backend drops it, and unknown names are
// refused as such.
func TestBackendOverride(t *testing.T) {
	dp := &lastApply{}
	cfg := overrideConfig(1)
	d := &Daemon{cfg: cfg, boot: cfg, log: slog.New(slog.DiscardHandler), dp: dp}
	ctx := context.Background()
	call := func(action, svc, be string, w int) overrideReply {
		return d.override(ctx, overrideCall{action: action, req: OverrideRequest{Service: svc, Backend: be, Weight: w}, by: "uid 0 (root) pid 1"})
	}
	want := func(key string, w uint32) {
		t.Helper()
		if got := dp.weights()[key]; got != w {
			t.Errorf("%s: weight %d, want %d (all: %v)", key, got, w, dp.weights())
		}
	}
	if r := call("drain", "web", "198.51.100.1:80", 0); r.code != http.StatusOK {
		t.Fatalf("drain: %d %s", r.code, r.msg)
	}
	want("web 198.51.100.1:80", 0)
	want("api 198.51.100.1:80", 1) // the same address in another service stays
	if d.cfg.Services[0].Backends[0].Weight != 1 {
		t.Fatal("the override changed the running config")
	}
	if r := call("weight", "web", "198.51.100.2", 7); r.code != http.StatusOK { // ADDR alone when unique
		t.Fatalf("weight: %d %s", r.code, r.msg)
	}
	want("web 198.51.100.2:80", 7)
	st := statusOf(d, d.log)
	shown := 0
	for _, b := range st.Backends {
		if b.Override != nil {
			shown++
		}
	}
	if shown != 2 {
		t.Errorf("status shows %d overrides, want 2: %+v", shown, st.Backends)
	}

	// A reload that changes web's first backend (its weight) drops its
	// override; the untouched second keeps its own.
	if err := d.reloadWith(overrideConfig(3), nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.apply(ctx); err != nil {
		t.Fatal(err)
	}
	want("web 198.51.100.1:80", 3)
	want("web 198.51.100.2:80", 7)

	if r := call("undrain", "web", "198.51.100.2:80", 0); r.code != http.StatusOK {
		t.Fatalf("undrain: %d %s", r.code, r.msg)
	}
	want("web 198.51.100.2:80", 1)
	if len(d.overrides.snapshot()) != 0 {
		t.Errorf("overrides left: %v", d.overrides.snapshot())
	}

	for _, c := range []struct{ svc, be string }{{"nope", "198.51.100.1:80"}, {"web", "198.51.100.9:80"}, {"web", "198.51.100.1:81"}} {
		if r := call("drain", c.svc, c.be, 0); r.code != http.StatusNotFound {
			t.Errorf("drain %s %s: %d %s, want 404", c.svc, c.be, r.code, r.msg)
		}
	}
	if r := call("weight", "web", "198.51.100.1:80", -1); r.code != http.StatusBadRequest {
		t.Errorf("weight -1: %d %s, want 400", r.code, r.msg)
	}
	if _, err := findBackend(d.cfg.Services, "web", "192.0.2.1"); !errors.Is(err, errUnknownBackend) {
		t.Errorf("findBackend: %v, want errUnknownBackend", err)
	}
}
