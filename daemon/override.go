package daemon

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/health"
)

// Override is a run-time change to one backend (`halb backend drain`,
// `undrain`, `weight`): it holds until a reload changes that backend or
// removes it, or until `undrain` ends it. Its JSON is part of `halb status
// --json`.
type Override struct {
	// Drained: weight 0 whatever the config says: no new flows, open
	// flows keep their backend.
	Drained bool `json:"drained"`
	// Weight replaces the configured weight; absent when only drained.
	Weight *int      `json:"weight,omitempty"`
	By     string    `json:"by"`
	Since  time.Time `json:"since"`
	// was is the backend as configured when the override was set: a
	// reload that changes it drops the override.
	was config.Backend
}

// overrides are the backends' run-time overrides, by service and backend.
// The daemon's loop writes them; status reads them from the control
// socket's goroutines.
type overrides struct {
	mu sync.Mutex
	m  map[health.Key]Override
}

func (o *overrides) snapshot() map[health.Key]Override {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.m)
}

func (o *overrides) set(k health.Key, v Override) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[health.Key]Override{}
	}
	o.m[k] = v
}

// clear removes k's override and reports whether there was one.
func (o *overrides) clear(k health.Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.m[k]
	delete(o.m, k)
	return ok
}

// weighted is services with each overridden backend's weight replaced:
// what health.Services turns into the data path's weights, so that
// health, quorum and the sorry backend apply to the overridden weights the
// same way on every data path. services is not changed.
func weighted(services []config.Service, ov map[health.Key]Override) []config.Service {
	if len(ov) == 0 {
		return services
	}
	out := slices.Clone(services)
	for i, s := range services {
		cloned := false
		for j, b := range s.Backends {
			o, ok := ov[health.Key{Service: s.Name, Backend: backendKey(b)}]
			if !ok {
				continue
			}
			if !cloned { // the running config's backends stay as they are
				out[i].Backends, cloned = slices.Clone(s.Backends), true
			}
			switch {
			case o.Drained:
				out[i].Backends[j].Weight = 0
			case o.Weight != nil:
				out[i].Backends[j].Weight = *o.Weight
			}
		}
	}
	return out
}

func backendKey(b config.Backend) netip.AddrPort {
	return netip.AddrPortFrom(b.Address, uint16(b.Port))
}

// keepOverrides drops, after a reload to cfg, every override whose
// backend cfg removed or changed (address, port or weight), logging each;
// an override on a backend the reload left as it was stays.
func (d *Daemon) keepOverrides(cfg *config.Config) {
	for k, o := range d.overrides.snapshot() {
		b, err := findBackend(cfg.Services, k.Service, k.Backend.String())
		reason := ""
		switch {
		case err != nil:
			reason = "the reload removed it"
		case b != o.was:
			reason = "the reload changed it"
		default:
			continue
		}
		d.overrides.clear(k)
		d.log.Info("backend override dropped", "service", k.Service, "backend", k.Backend.String(), "reason", reason)
	}
}

// errUnknownBackend is a service or backend the running config does not
// have; `halb backend` exits 2 on it.
var errUnknownBackend = errors.New("unknown service or backend")

// findBackend is the backend of the service named svc given as
// ADDR:PORT, or as ADDR when the service has one backend at that address.
func findBackend(services []config.Service, svc, backend string) (config.Backend, error) {
	i := slices.IndexFunc(services, func(s config.Service) bool { return s.Name == svc })
	if i < 0 {
		names := make([]string, 0, len(services))
		for _, s := range services {
			names = append(names, s.Name)
		}
		return config.Backend{}, fmt.Errorf("%w: no service %q (services: %v)", errUnknownBackend, svc, names)
	}
	var found []config.Backend
	for _, b := range services[i].Backends {
		if backendKey(b).String() == backend || b.Address.String() == backend {
			found = append(found, b)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		var have []string
		for _, b := range services[i].Backends {
			have = append(have, backendKey(b).String())
		}
		return config.Backend{}, fmt.Errorf("%w: service %s has no backend %s (backends: %v)", errUnknownBackend, svc, backend, have)
	default:
		return config.Backend{}, fmt.Errorf("%w: service %s has several backends at %s: give ADDR:PORT", errUnknownBackend, svc, backend)
	}
}

// OverrideRequest is what `halb backend` posts to the control socket.
type OverrideRequest struct {
	Service string `json:"service"`
	Backend string `json:"backend"`
	// Weight is for the weight action.
	Weight int `json:"weight,omitempty"`
}

// OverrideResult is the control socket's answer to `halb backend`.
type OverrideResult struct {
	Message string `json:"message"`
}

// overrideCall is one `halb backend` request handed to the daemon's loop,
// which owns the config and programs the data path.
type overrideCall struct {
	action string // drain | undrain | weight
	req    OverrideRequest
	by     string
	reply  chan overrideReply
}

type overrideReply struct {
	code int
	msg  string
}

// serveOverride takes `halb backend drain|undrain|weight` from root,
// hands it to the loop and answers with what the loop did.
func (d *Daemon) serveOverride(w http.ResponseWriter, req *http.Request) {
	who, ok := d.allowed(w, req)
	if !ok {
		return
	}
	var r OverrideRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 4096)).Decode(&r); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	call := overrideCall{action: req.PathValue("action"), req: r, by: who, reply: make(chan overrideReply, 1)}
	select {
	case d.overrideCalls <- call:
	case <-req.Context().Done():
		return
	}
	select {
	case rep := <-call.reply:
		if rep.code/100 != 2 {
			http.Error(w, rep.msg, rep.code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(OverrideResult{Message: rep.msg})
	case <-req.Context().Done():
	}
}

// override carries out one `halb backend` call on the loop: it checks the
// backend against the running config, sets or clears its override, logs
// who did what and programs the data path.
func (d *Daemon) override(ctx context.Context, call overrideCall) overrideReply {
	r := call.req
	b, err := findBackend(d.cfg.Services, r.Service, r.Backend)
	if err != nil {
		return overrideReply{http.StatusNotFound, err.Error()}
	}
	k := health.Key{Service: r.Service, Backend: backendKey(b)}
	var msg string
	switch call.action {
	case "drain":
		d.overrides.set(k, Override{Drained: true, By: call.by, Since: d.now(), was: b})
		msg = fmt.Sprintf("drained %s %s: no new flows; open flows stay until they end; until `halb backend undrain` or a reload that changes it", r.Service, k.Backend)
	case "undrain":
		if !d.overrides.clear(k) {
			return overrideReply{http.StatusOK, fmt.Sprintf("%s %s had no override: nothing to undo", r.Service, k.Backend)}
		}
		msg = fmt.Sprintf("override of %s %s removed: the configured weight %d applies again", r.Service, k.Backend, b.Weight)
	case "weight":
		if r.Weight < 0 || r.Weight > 65535 {
			return overrideReply{http.StatusBadRequest, "weight " + strconv.Itoa(r.Weight) + " out of range: give 0 to 65535"}
		}
		wt := r.Weight
		d.overrides.set(k, Override{Weight: &wt, By: call.by, Since: d.now(), was: b})
		msg = fmt.Sprintf("weight of %s %s set to %d (configured %d) until a reload that changes it or `halb backend undrain`", r.Service, k.Backend, wt, b.Weight)
	default:
		return overrideReply{http.StatusNotFound, "unknown action " + call.action + ": drain, undrain or weight"}
	}
	d.log.Info("backend override", "action", call.action, "service", r.Service, "backend", k.Backend.String(), "weight", r.Weight, "by", call.by)
	if err := d.apply(ctx); err != nil {
		d.log.Error("backend weights not fully programmed", "err", err, "retry", d.retryNote())
		return overrideReply{http.StatusInternalServerError, msg + "; but programming the data path failed: " + err.Error()}
	}
	return overrideReply{http.StatusOK, msg}
}

// overrideStatus adds each override to the backends' rows of status, and
// a row for an overridden backend without a health check.
func overrideStatus(rows []BackendStatus, ov map[health.Key]Override) []BackendStatus {
	for k, o := range ov {
		i := slices.IndexFunc(rows, func(b BackendStatus) bool { return b.Service == k.Service && b.Backend == k.Backend.String() })
		if i < 0 {
			rows = append(rows, BackendStatus{Service: k.Service, Backend: k.Backend.String(), Check: health.TypeNone, Health: health.Healthy.String(), Confirmed: true})
			i = len(rows) - 1
		}
		rows[i].Override = &o
	}
	slices.SortStableFunc(rows, func(a, b BackendStatus) int { return cmp.Compare(a.Service, b.Service) })
	return rows
}
