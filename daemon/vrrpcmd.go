package daemon

import (
	"context"
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
		// A reload takes a stopped instance out of running before it
		// sets order: a name in order may have no running entry.
		if o, ok := s.running[n]; ok && n != name && r.group != "" && o.group == r.group && o.inst != nil {
			out = append(out, o.inst)
		}
	}
	return out, r.cfg.AdvertInterval
}

// serveVRRP is `halb vrrp release|resume INSTANCE [--force]` from root:
// a sync group goes whole, the named instance first (its refusal stops
// the rest). A Master released without --force is watched for three
// advert intervals (up to a bound within the client's timeout): if
// no peer took over (it kept its VIPs), the release is reported
// refused. A refused group release resumes the members it had released,
// so that no member is left holding BACKUP with its VIPs on no node.
func (d *Daemon) serveVRRP(w http.ResponseWriter, req *http.Request) {
	who, ok := d.allowed(w, req)
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
	d.log.Info("vrrp "+action+" asked", "instances", strings.Join(namesOf(insts), ","), "force", r.Force, "by", who)
	res := VRRPResult{Instances: namesOf(insts)}
	if action == "resume" {
		if err := resumeAll(req.Context(), insts); err != nil {
			http.Error(w, "resume refused: "+err.Error(), http.StatusConflict)
			return
		}
		res.Message = "resumed: taking part again (with preempt, a higher priority takes the VIPs back after the master down interval)"
		writeVRRPResult(w, res)
		return
	}
	wasMaster := insts[0].Status().State == vrrp.Master
	if err := d.releaseGroup(req.Context(), insts, r.Force); err != nil {
		http.Error(w, "release "+err.Error(), http.StatusConflict)
		return
	}
	switch {
	case wasMaster && !r.Force:
		if undone(insts[0], interval) {
			d.log.Warn("vrrp release refused: no peer took over within three advert intervals; the VIPs stayed here", "instance", r.Instance)
			d.resumeReleased(insts[1:], vrrp.ReleaseUndone+" in "+r.Instance)
			http.Error(w, fmt.Sprintf("release %s refused: %s; the VIPs stayed here (--force releases anyway)", r.Instance, vrrp.ReleaseUndone+": no peer took over within three advert intervals"), http.StatusConflict)
			return
		}
		res.Message = "released: priority 0 sent, held in BACKUP until `halb vrrp resume`"
	default:
		res.Message = "released: held in BACKUP until `halb vrrp resume`"
	}
	writeVRRPResult(w, res)
}

// releaseGroup releases a sync group's members, the first as asked, the
// other Masters likewise (each keeps its VIPs until its own taker's
// advert: one given up at once would take the whole group to BACKUP) and
// the other Backups with force (they only hold: the group follows its
// first member). When one is refused or fails, the members already
// released are resumed: half a group held in BACKUP would keep its VIPs
// on no node.
func (d *Daemon) releaseGroup(ctx context.Context, insts []*vrrp.Instance, force bool) error {
	for i, in := range insts {
		if err := in.Release(ctx, force || (i > 0 && in.Status().State != vrrp.Master)); err != nil {
			d.resumeReleased(insts[:i], "release of "+in.Status().Name+" refused")
			return fmt.Errorf("%s refused: %w", in.Status().Name, err)
		}
	}
	return nil
}

// resumeReleased resumes members released by a group release that did
// not go through, and says so. The asker may have gone (its context
// ended): the resume is done all the same, within a bound.
func (d *Daemon) resumeReleased(insts []*vrrp.Instance, why string) {
	if len(insts) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := resumeAll(ctx, insts)
	d.log.Warn("vrrp release undone for the rest of the group", "instances", strings.Join(namesOf(insts), ","), "why", why, "err", err)
}

// resumeAll resumes each of insts, the first error ending it.
func resumeAll(ctx context.Context, insts []*vrrp.Instance) error {
	for _, in := range insts {
		if err := in.Resume(ctx); err != nil {
			return fmt.Errorf("%s: %w", in.Status().Name, err)
		}
	}
	return nil
}

// namesOf is the instances' names, for logs and answers.
func namesOf(insts []*vrrp.Instance) []string {
	out := make([]string, len(insts))
	for i, in := range insts {
		out[i] = in.Status().Name
	}
	return out
}

func writeVRRPResult(w http.ResponseWriter, res VRRPResult) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// undone watches a released Master for three advert intervals and half
// a second more, at most 4 s (the client gives up after 5), and reports
// whether its release ended with it still Master: no peer took over, so
// it kept its VIPs (vrrp.Machine.ReleaseMastership). It watches on when
// the asker has gone (Ctrl-C), within the same bound: the group's other
// members are resumed on a refusal whether or not anyone reads it.
func undone(in *vrrp.Instance, interval time.Duration) bool {
	end := time.Now().Add(min(3*interval+500*time.Millisecond, 4*time.Second))
	for time.Now().Before(end) {
		if st := in.Status(); !st.Released {
			return st.State == vrrp.Master
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
