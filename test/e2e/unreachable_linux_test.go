package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestDaemonUnreachableBackend is a host that boots before one backend's
// route: `halb run` starts all the same and serves the backends it can
// reach through the VIP, `halb status` (text and --json) names the one it
// cannot and why, and the route, added later, brings it in without a
// reload. be3 sits at 203.0.113.13 on the LAN, where the balancer has no
// route until the test adds one. Health checks are off (type none), so
// that only the data path's own retry can bring be3 in.
func TestDaemonUnreachableBackend(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	be3 := n.servers["be3"].ns
	h3 := be3.Netlink(t)
	eth0, err := h3.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	far, err := netlink.ParseAddr("203.0.113.13/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := h3.AddrAdd(eth0, far); err != nil {
		t.Fatal(err)
	}

	d := n.daemon(t, halb, "lb")
	d.text = fmt.Sprintf(`control: {socket: %s, metrics: ""}
datapath: {mode: xdp, xdp_mode: native, interfaces: [eth0], bpffs: %s}
services:
  - name: web
    vip: %s
    port: 80
    protocol: tcp
    scheduler: mh
    forward: dr
    backends:
      - {address: 192.0.2.11, weight: 1}
      - {address: 192.0.2.12, weight: 1}
      - {address: 203.0.113.13, weight: 1}
    health_check: {type: none}
`, d.sock, d.pins, vip)
	if err := os.WriteFile(d.cfg, []byte(d.text), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start(n.lbs["lb"])

	c := &client{ns: n.client, src: clientIP, vip: vip}
	d.waitLive("web", "be1 and be2 live", 2)
	if d.proc.Exited() {
		t.Fatalf("halb run exited: %v", d.proc.Err())
	}
	if counts := c.spread(t, 40000, 40); counts["be1"] == 0 || counts["be2"] == 0 || total(counts) != 40 {
		t.Errorf("40 connections with be3 unreachable went to %v, want be1 and be2 alone", counts)
	}

	problem := func() string {
		out, err := exec.Command(d.bin, "status", "--json", "-s", d.sock).Output()
		if err != nil {
			return ""
		}
		var st struct {
			Services []struct {
				Name     string `json:"name"`
				Backends []struct {
					Backend string `json:"backend"`
					Live    bool   `json:"live"`
					Problem string `json:"problem"`
				} `json:"backends"`
			} `json:"services"`
		}
		if json.Unmarshal(out, &st) != nil {
			return ""
		}
		for _, s := range st.Services {
			for _, b := range s.Backends {
				if s.Name == "web" && b.Backend == "203.0.113.13:80" && !b.Live {
					return b.Problem
				}
			}
		}
		return ""
	}
	if p := problem(); !strings.Contains(p, "no route") {
		t.Errorf("halb status --json: be3's problem is %q, want \"no route ...\"", p)
	}
	out, err := exec.Command(d.bin, "status", "-s", d.sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "203.0.113.13:80") || !strings.Contains(string(out), "not served") ||
		!strings.Contains(string(out), "no route") {
		t.Errorf("halb status (%v) does not show be3 not served for want of a route:\n%s", err, out)
	}
	d.waitLog(`msg="backend not served"`)

	// The route comes up late, as at boot; no reload.
	hlb := n.lbs["lb"].Netlink(t)
	lbEth0, err := hlb.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := hlb.RouteAdd(&netlink.Route{LinkIndex: lbEth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IP{203, 0, 113, 0}, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d.waitLive("web", "be3 live once routed", 3)
	t.Logf("be3 live %s after its route was added", time.Since(start).Round(time.Millisecond))
	if p := problem(); p != "" {
		t.Errorf("be3 still has a problem once routed: %q", p)
	}
	if counts := c.spread(t, 40100, 60); counts["be3"] == 0 || total(counts) != 60 {
		t.Errorf("60 connections once be3 is routed went to %v, want be3 among them", counts)
	}
	if strings.Contains(d.out.String(), "config reloaded") {
		t.Errorf("a reload happened; the route alone should bring be3 in")
	}
	d.stop()
}
