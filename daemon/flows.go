package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// flowsTimeout bounds one listing, within the client's own 5 s.
const flowsTimeout = 4 * time.Second

// serveFlows is `halb flows`: GET /v1/flows?service=NAME&limit=N, the
// flows the data path holds open. Unlike status it shows clients'
// addresses, so it is root's and halb's own user's alone (allowed), as
// ipvsadm -Lnc is root's, whatever mode the control socket was given.
func (d *Daemon) serveFlows(w http.ResponseWriter, req *http.Request) {
	who, ok := d.allowed(w, req)
	if !ok {
		return
	}
	q, code, msg := flowQuery(req.URL.Query(), d.running.Load())
	if code != http.StatusOK {
		http.Error(w, msg, code)
		return
	}
	var list service.FlowList
	if _, dp := d.servingDatapath(); dp != nil { // nil: no services, no flows
		fl, ok := dp.(service.FlowLister)
		if !ok {
			http.Error(w, service.ErrFlowsUnsupported.Error(), http.StatusNotImplemented)
			return
		}
		ctx, cancel := context.WithTimeout(req.Context(), flowsTimeout)
		defer cancel()
		var err error
		if list, err = fl.Flows(ctx, q); err == nil {
			err = ctx.Err() // a lister that overran its time: answer no late list
		}
		if err != nil {
			d.log.Warn("flows: reading the data path's flows", "err", err)
			http.Error(w, "reading the data path's flows: "+err.Error(), http.StatusInternalServerError)
			return
		}
	}
	if list.Flows == nil {
		list.Flows = []service.Flow{} // [] in the JSON, not null
	}
	d.log.Debug("flows listed", "by", who, "service", q.Service, "shown", len(list.Flows), "total", list.Total)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

// flowQuery reads a flows request against the running config: 400 for a
// limit that is not a number from 1 to service.MaxFlowLimit, 404 for a
// service it does not have.
func flowQuery(v url.Values, cfg *config.Config) (service.FlowQuery, int, string) {
	q := service.FlowQuery{Service: v.Get("service"), Limit: service.DefaultFlowLimit}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > service.MaxFlowLimit {
			return q, http.StatusBadRequest, "limit " + strconv.Quote(s) + ": give a whole number from 1 to " + strconv.Itoa(service.MaxFlowLimit)
		}
		q.Limit = n
	}
	if q.Service != "" && !hasService(cfg, q.Service) {
		return q, http.StatusNotFound, "unknown service " + strconv.Quote(q.Service) + ": the running config has no service of that name (halb status lists them)"
	}
	return q, http.StatusOK, ""
}

func hasService(cfg *config.Config, name string) bool {
	return cfg != nil && slices.ContainsFunc(cfg.Services, func(s config.Service) bool { return s.Name == name })
}
