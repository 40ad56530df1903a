package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// vip2 is the second VIP of TestServiceGroup's group.
var vip2 = netip.MustParseAddr("198.51.100.20")

// TestServiceGroup runs `halb run` (XDP, DR) with one service group on
// two VIP:port pairs (listen, keepalived's virtual_server_group), checked
// on another port than the backends' (health_check.port), and shows:
//
//   - the eBPF data path serves both pairs, each over all three backends,
//     and halb status lists each pair;
//   - each backend is checked once, not once per pair, and is known by
//     its own address and port, not by the port its check goes to;
//   - a backend whose check port stops answering leaves both pairs at
//     once, though it still serves on its own port.
func TestServiceGroup(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	routeVia(t, n.client, "eth0", lbIP, netip.Addr{}, vip2)
	checks := map[string]*server{}
	for _, name := range []string{"be1", "be2", "be3"} {
		ns := n.servers[name].ns
		holdAddrs(t, ns, vip2)
		checks[name] = startServer(t, ns, name, netip.Addr{}, 8081)
	}
	d := n.daemon(t, halb, "lb")
	d.text = fmt.Sprintf(`control: {socket: %s}
datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0], bpffs: %s}
services:
  - name: web
    listen: ["%s:80", "%s:80"]
    backends: [{address: 192.0.2.11}, {address: 192.0.2.12}, {address: 192.0.2.13}]
    health_check: {type: tcp, port: 8081, interval: %s, timeout: 300ms, rise: %d, fall: %d}
`, d.sock, d.pins, vip, vip2, daemonInterval, daemonRise, daemonFall)
	if err := os.WriteFile(d.cfg, []byte(d.text), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start(n.lbs["lb"])

	all := []string{"192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"}
	d.waitFor("both pairs with three live backends", func() bool {
		st := groupStatus(d)
		return len(st.pairs) == 2 && slices.Equal(st.pairs[vip.String()+":80/tcp"], all) && slices.Equal(st.pairs[vip2.String()+":80/tcp"], all)
	})
	st := groupStatus(d)
	t.Logf("checked backends: %v", st.checked)
	if !slices.Equal(st.checked, []string{"web 192.0.2.11:80 healthy", "web 192.0.2.12:80 healthy", "web 192.0.2.13:80 healthy"}) {
		t.Errorf("health-checked backends %v, want each of the three once, by its own address and port 80", st.checked)
	}
	for _, v := range []netip.Addr{vip, vip2} {
		c := &client{ns: n.client, src: clientIP, vip: v}
		counts := c.spread(t, 43000+int(v.As4()[3])*100, 30)
		t.Logf("30 connections to %s:80: %v", v, counts)
		if len(counts) != 3 || total(counts) != 30 {
			t.Errorf("30 connections to %s:80 went to %v, want all three backends", v, counts)
		}
	}

	// be2 stops answering on its check port, and still serves on 80:
	// its one check takes it out of both pairs.
	checks["be2"].stop()
	d.waitFor("be2 out of both pairs", func() bool {
		st := groupStatus(d)
		return len(st.pairs[vip.String()+":80/tcp"]) == 2 && len(st.pairs[vip2.String()+":80/tcp"]) == 2
	})
	for _, v := range []netip.Addr{vip, vip2} {
		c := &client{ns: n.client, src: clientIP, vip: v}
		if counts := c.spread(t, 45000+int(v.As4()[3])*100, 30); counts["be2"] != 0 || total(counts) != 30 {
			t.Errorf("with be2's check port closed, %s:80: %v, want none on be2", v, counts)
		}
	}
	out, err := exec.Command(d.bin, "status", "-s", d.sock).Output()
	if err != nil {
		t.Fatalf("halb status: %v", err)
	}
	for _, line := range []string{"web " + vip.String() + ":80/tcp (xdp)", "web " + vip2.String() + ":80/tcp (xdp)"} {
		if !strings.Contains(string(out), line) {
			t.Errorf("halb status has no line %q:\n%s", line, out)
		}
	}
	d.stop()
}

// groupState is what `halb status --json` says of a group: the live
// backends of each pair by its key, and the health-checked backends as
// "service backend health".
type groupState struct {
	pairs   map[string][]string
	checked []string
}

func groupStatus(d *daemon) groupState {
	st := groupState{pairs: map[string][]string{}}
	out, err := exec.Command(d.bin, "status", "--json", "-s", d.sock).Output()
	if err != nil {
		return st
	}
	var js struct {
		Backends []struct {
			Service, Backend, Health string
		} `json:"backends"`
		Services []struct {
			Key      string          `json:"key"`
			Backends []statusBackend `json:"backends"`
		} `json:"services"`
	}
	if json.Unmarshal(out, &js) != nil {
		return st
	}
	for _, s := range js.Services {
		live := []string{}
		for _, b := range s.Backends {
			if b.Live {
				live = append(live, b.Backend)
			}
		}
		slices.Sort(live)
		st.pairs[s.Key] = live
	}
	for _, b := range js.Backends {
		st.checked = append(st.checked, b.Service+" "+b.Backend+" "+b.Health)
	}
	slices.Sort(st.checked)
	return st
}
