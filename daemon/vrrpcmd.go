package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/halb-lb/halb/vrrp"
)

// VRRPRequest is what `halb vrrp release|resume` posts to the control
// socket.
type VRRPRequest struct {
	Instance string `json:"instance"`
	Force    bool   `json:"force,omitempty"`
}

// VRRPResult is the control socket's answer to `halb vrrp`.
type VRRPResult struct {
	Instances []string `json:"instances"`
	Message   string   `json:"message"`
}

// groupOf is the running instance named name and, after it, the other
// members of its sync group; nil when none runs by that name.
func (s *vrrpSet) groupOf(name string) ([]*vrrp.Instance, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.running[name]
	if !ok || r.inst == nil {
		return nil, 0
	}
	out := []*vrrp.Instance{r.inst}
	for _, n := range s.order {
		if o := s.running[n]; n != name && r.group != "" && o.group == r.group && o.inst != nil {
			out = append(out, o.inst)
		}
	}
	return out, r.cfg.AdvertInterval
}

// serveVRRP is `halb vrrp release|resume INSTANCE [--force]` from root:
// a sync group goes whole, the named instance first (its refusal stops
// the rest). A Master released without --force is watched for three
// advert intervals (up to a bound within the client's timeout): if it took
// its VIPs back because no peer took over, the release is reported
// refused.
func (d *Daemon) serveVRRP(w http.ResponseWriter, req *http.Request) {
	who, ok := allowed(w, req)
	if !ok {
		return
	}
	var r VRRPRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 4096)).Decode(&r); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	action := req.PathValue("action")
	if action != "release" && action != "resume" {
		http.Error(w, "unknown action "+action+": release or resume", http.StatusNotFound)
		return
	}
	var insts []*vrrp.Instance
	var interval time.Duration
	if d.vrrp != nil {
		insts, interval = d.vrrp.groupOf(r.Instance)
	}
	if len(insts) == 0 {
		http.Error(w, fmt.Sprintf("no VRRP instance %q runs here (halb status lists them)", r.Instance), http.StatusNotFound)
		return
	}
	res := VRRPResult{}
	wasMaster := insts[0].Status().State == vrrp.Master
	for i, in := range insts {
		var err error
		if action == "release" {
			err = in.Release(req.Context(), r.Force || i > 0) // the group follows its first member
		} else {
			err = in.Resume(req.Context())
		}
		if err != nil {
			http.Error(w, fmt.Sprintf("%s %s refused: %v", action, in.Status().Name, err), http.StatusConflict)
			return
		}
		res.Instances = append(res.Instances, in.Status().Name)
	}
	d.log.Info("vrrp "+action+" asked", "instances", strings.Join(res.Instances, ","), "force", r.Force, "by", who)
	switch {
	case action == "resume":
		res.Message = "resumed: taking part again (with preempt, a higher priority takes the VIPs back after the master down interval)"
	case wasMaster && !r.Force:
		if undone(req, insts[0], interval) {
			http.Error(w, fmt.Sprintf("release %s refused: %s; the VIPs are back here (--force releases anyway)", r.Instance, vrrp.ReleaseUndone+": no peer took over within three advert intervals"), http.StatusConflict)
			return
		}
		res.Message = "released: priority 0 sent, held in BACKUP until `halb vrrp resume`"
	default:
		res.Message = "released: held in BACKUP until `halb vrrp resume`"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// undone watches a released Master for three advert intervals and half
// a second more, at most 4 s (the client gives up after 5), and reports
// whether it took its VIPs back for want of a peer.
func undone(req *http.Request, in *vrrp.Instance, interval time.Duration) bool {
	end := time.Now().Add(min(3*interval+500*time.Millisecond, 4*time.Second))
	for time.Now().Before(end) {
		if st := in.Status(); !st.Released {
			return strings.HasPrefix(st.Reason, vrrp.ReleaseUndone)
		}
		select {
		case <-req.Context().Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}
