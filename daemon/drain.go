package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// DrainResult is the control socket's answer to `halb drain`: what was
// withdrawn and how long the routers are given to move the flows away.
type DrainResult struct {
	Withdrawn []string      `json:"withdrawn"`
	DrainTime time.Duration `json:"drain_time_ns"`
}

// serveDrain withdraws every route and keeps them withdrawn until
// `halb undrain` or a restart, logging who asked. It answers at once:
// `halb drain` waits bgp.drain_time itself, so that no request holds the
// control socket's shutdown for minutes.
func (d *Daemon) serveDrain(w http.ResponseWriter, req *http.Request) {
	r := d.bgp.Load()
	if r == nil {
		http.Error(w, "halb runs without a bgp: section: nothing is announced, so nothing to drain", http.StatusConflict)
		return
	}
	who, ok := d.allowed(w, req)
	if !ok {
		return
	}
	res := DrainResult{Withdrawn: r.drain("halb drain by " + who), DrainTime: r.drainTime()}
	if res.Withdrawn == nil {
		res.Withdrawn = []string{}
	}
	d.log.Info("bgp drain asked", "by", who, "withdrawn", len(res.Withdrawn), "drain_time", res.DrainTime,
		"until", "halb undrain or a restart")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// serveUndrain ends a drain: the loop announces again what its decisions
// want.
func (d *Daemon) serveUndrain(w http.ResponseWriter, req *http.Request) {
	r := d.bgp.Load()
	if r == nil {
		http.Error(w, "halb runs without a bgp: section: nothing to undrain", http.StatusConflict)
		return
	}
	who, ok := d.allowed(w, req)
	if !ok {
		return
	}
	was := r.undrain()
	d.log.Info("bgp undrain asked", "by", who, "was_drained", was)
	d.wakeAnnounce()
	w.WriteHeader(http.StatusNoContent)
}

type connKey struct{}

// withConn keeps each control connection in its requests' context, so
// that a handler can say who sent a request (caller).
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// allowed names who sent req, and refuses (403) anyone but root or
// halb's own user: the socket's mode already keeps others out, and a
// command that changes what halb announces says so twice. A refusal is
// logged with who asked for what, as every change is.
func (d *Daemon) allowed(w http.ResponseWriter, req *http.Request) (string, bool) {
	cred, err := caller(req.Context())
	if err != nil {
		d.log.Warn("control request refused: the caller is not known", "path", req.URL.Path, "err", err)
		http.Error(w, "who sent this is not known: "+err.Error(), http.StatusForbidden)
		return "", false
	}
	name := "?"
	if u, err := user.LookupId(strconv.Itoa(int(cred.Uid))); err == nil {
		name = u.Username
	}
	who := fmt.Sprintf("uid %d (%s) pid %d", cred.Uid, name, cred.Pid)
	if !mayChange(cred.Uid) {
		d.log.Warn("control request refused: only root may do this", "path", req.URL.Path, "by", who)
		http.Error(w, "only root may do this; refused for "+who, http.StatusForbidden)
		return "", false
	}
	return who, true
}

// mayChange says whether a caller of uid may change what halb announces:
// root, or halb's own user.
func mayChange(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

// caller is the process at the other end of the request's unix socket
// connection (SO_PEERCRED).
func caller(ctx context.Context) (*unix.Ucred, error) {
	uc, ok := ctx.Value(connKey{}).(*net.UnixConn)
	if !ok {
		return nil, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}
