package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestVRRPRelease: on a pair (lb1 priority 150 Master, lb2 100 Backup,
// 100 ms adverts, preempt), `halb vrrp release VI_1` on lb1 moves the VIP
// to lb2, lb1 held in BACKUP (released in its status); a release of lb2's
// instance then, with lb1 held and silent, is refused (no peer took over:
// lb2 keeps the VIP); `resume` on lb1 takes the VIP back (preempt); an
// unknown instance exits 2.
func TestVRRPRelease(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n, nodes, _ := startPair(t, halb)
	lb1, lb2 := nodes["lb1"], nodes["lb2"]
	// Traffic through the VIP gives the client a neighbour entry for it,
	// which each new master's gratuitous ARP then moves.
	c := &client{ns: n.client, src: clientIP, vip: vip}
	through := func(when string, first int) {
		t.Helper()
		if counts := c.spread(t, first, 10); total(counts) != 10 {
			t.Errorf("%s: %v, want 10 connections through the VIP", when, counts)
		}
	}
	through("before the release", 53000)
	lb1MAC, lb2MAC := n.macOf(t, "lb1"), n.macOf(t, "lb2")
	n.checkVIP(t, "before the release", lb1MAC)

	vrrpCmd := func(d *daemon, args ...string) (int, string) {
		t.Helper()
		return d.command(append([]string{"vrrp"}, args...)...)
	}
	start := time.Now()
	if code, out := vrrpCmd(lb1, "release", "VI_1"); code != 0 {
		t.Fatalf("halb vrrp release on lb1: exit %d: %s", code, out)
	}
	lb2.waitState("MASTER")
	t.Logf("lb2 MASTER %s after the release (lb2's skew time at priority 100 and 100 ms adverts: 61 ms; polling adds its own)", time.Since(start).Round(time.Millisecond))
	lb1.waitState("BACKUP")
	if !strings.Contains(lb1.statusJSON(), `"released":true`) {
		t.Errorf("lb1's status does not say released:\n%s", lb1.statusJSON())
	}
	time.Sleep(time.Second) // lb1 held: a preempting Backup would be back within 0.4 s
	n.checkVIPOn(t, "after the release", "lb2", lb2MAC)
	through("after the release", 53100)

	if code, out := vrrpCmd(lb2, "release", "VI_1"); code != 1 || !strings.Contains(out, "no peer took over") {
		t.Errorf("release on lb2 with lb1 held: exit %d, want 1 (refused): %s", code, out)
	}
	lb2.waitState("MASTER")
	n.checkVIPOn(t, "after the refused release", "lb2", lb2MAC)

	if code, out := vrrpCmd(lb1, "resume", "VI_1"); code != 0 {
		t.Fatalf("halb vrrp resume on lb1: exit %d: %s", code, out)
	}
	lb1.waitState("MASTER")
	lb2.waitState("BACKUP")
	n.checkVIP(t, "after the resume", lb1MAC)
	through("after the resume", 53200)
	if code, out := vrrpCmd(lb1, "release", "VI_9"); code != 2 {
		t.Errorf("release of an unknown instance: exit %d, want 2: %s", code, out)
	}
	if !strings.Contains(lb1.out.String(), `msg="vrrp release asked" instances=VI_1 force=false by="uid 0 (root)`) {
		t.Errorf("lb1 did not log the release and who asked")
	}
	lb2.stop()
	lb1.stop()
}

// statusJSON is `halb status --json`.
func (d *daemon) statusJSON() string {
	d.t.Helper()
	out, err := runOut(d.bin, "status", "--json", "-s", d.sock)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}
