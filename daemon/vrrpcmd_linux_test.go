package daemon

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
)

// A sync group's release through /v1/vrrp with no peer on either link:
// the named member is refused (no peer took over: it kept its VIPs, and
// so did the other member, neither leaving MASTER), and the group's
// other member, released with it, takes part again instead of holding
// BACKUP with its VIP on no node until someone resumes the group. The request is logged before
// anything is released, and the undoing after.
func TestVRRPGroupReleaseRefusedResumesGroup(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, l := range []struct{ name, addr string }{{"halbga0", "192.0.2.1/24"}, {"halbgb0", "198.51.100.1/24"}} {
		// A veth whose other end no one listens on: no dummy module here.
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.name}, PeerName: l.name + "p"}
		if err := netlink.LinkAdd(link); err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(l.addr)
		if err := netlink.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		if peer, err := netlink.LinkByName(l.name + "p"); err != nil || netlink.LinkSetUp(peer) != nil {
			t.Fatalf("the veth's other end %sp: %v", l.name, err)
		}
	}
	d, path, _ := newTestDaemon(t)
	var logs halbtest.Log
	d.log = NewLogger(&logs, "text", &d.level)
	sock := filepath.Join(filepath.Dir(path), "halb.sock")
	cfg := `log: {level: info}
control: {socket: ` + sock + `}
vrrp:
  instances:
    - {name: VI_A, interface: halbga0, vrid: 7, priority: 150, version: 3, advert_interval: 100ms, virtual_ips: [192.0.2.7/24]}
    - {name: VI_B, interface: halbgb0, vrid: 8, priority: 150, version: 3, advert_interval: 100ms, virtual_ips: [198.51.100.8/24]}
  sync_groups:
    - {name: G, instances: [VI_A, VI_B]}
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	d.boot = d.cfg
	stop, reload := make(chan os.Signal, 1), make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- d.Run(t.Context(), stop, reload) }()
	defer func() {
		stop <- syscall.SIGTERM
		runReturns(t, done, 20*time.Second, "of SIGTERM", &logs)
	}()

	// The socket's file is there from its bind, a moment before it
	// listens: wait until it takes a connection.
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no control socket answered within 10s:\n%s", logs.String())
		}
	}
	client := controlClient(sock)
	status := func() map[string]InstanceStatus {
		t.Helper()
		resp, err := client.Get("http://halb/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
		out := map[string]InstanceStatus{}
		for _, in := range st.Instances {
			out[in.Name] = in
		}
		return out
	}
	bothMaster := func(when string) {
		t.Helper()
		var st map[string]InstanceStatus
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
			st = status()
			if a, b := st["VI_A"], st["VI_B"]; a.State == "MASTER" && b.State == "MASTER" && !a.Released && !b.Released {
				return
			}
		}
		t.Fatalf("%s: not both MASTER and taking part within 10s: %+v", when, st)
	}
	bothMaster("at start")

	body, _ := json.Marshal(VRRPRequest{Instance: "VI_A"})
	resp, err := client.Post("http://halb/v1/vrrp/release", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(answer), "no peer took over") {
		t.Errorf("release of VI_A with no peer: %s %s, want 409 (no peer took over)", resp.Status, answer)
	}
	bothMaster("after the refused release")
	for _, want := range []string{`msg="vrrp release asked" instances=VI_A,VI_B force=false`, `msg="vrrp release undone for the rest of the group" instances=VI_B`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("not logged: %s\n%s", want, logs.String())
		}
	}
	// Make before break: with no taker, neither member gave its VIPs up.
	if strings.Contains(logs.String(), "from=MASTER to=BACKUP") {
		t.Errorf("a member left MASTER during a release no peer took over:\n%s", logs.String())
	}
}

// A control request from a caller that may not change anything is
// refused and logged with what it asked for.
func TestControlRefusalLogged(t *testing.T) {
	var logs bytes.Buffer
	d := &Daemon{log: NewLogger(&logs, "text", new(slog.LevelVar))}
	rec := httptest.NewRecorder()
	d.controlHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/vrrp/release", strings.NewReader(`{"instance":"VI_1"}`)))
	if rec.Code != http.StatusForbidden {
		t.Errorf("a caller that cannot be named: %d %s, want 403", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="control request refused: the caller is not known" path=/v1/vrrp/release`) {
		t.Errorf("the refusal is not logged with its path:\n%s", logs.String())
	}
}
