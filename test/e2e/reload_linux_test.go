package e2e

import (
	"encoding/json"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// TestReloadKeepsVRRP runs a VRRP pair, lb1 Master and lb2 Backup, and
// reloads both three times with changed services (a backend added, a
// weight changed, a service added) and the VRRP instance as it was. The
// instance does not flap on either node: neither logs a transition or a
// restart of it, halb status has the same state since the same time, the
// VIP stays on lb1 and the client's neighbour entry for it on lb1's MAC
// (a Backup turning Master even briefly would have moved it with its
// gratuitous ARP).
func TestReloadKeepsVRRP(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n, nodes, priority := startPair(t, halb)
	lb1, lb2 := nodes["lb1"], nodes["lb2"]
	c := &client{ns: n.client, src: clientIP, vip: vip}
	if counts := c.spread(t, 52000, 30); total(counts) != 30 {
		t.Fatalf("through lb1 before the reloads: %v", counts)
	}
	lb1MAC := n.macOf(t, "lb1")
	before := map[string]instanceStatus{}
	logged := map[string]int{} // the length of each log before the reloads
	for name, d := range nodes {
		before[name] = d.instance()
		logged[name] = len(d.out.String())
	}
	t.Logf("before the reloads: lb1 %s since %s, lb2 %s since %s", before["lb1"].State, before["lb1"].Since.Format(time.StampMilli),
		before["lb2"].State, before["lb2"].Since.Format(time.StampMilli))
	n.checkVIP(t, "before the reloads", lb1MAC)

	for _, step := range []struct {
		what string
		cfg  daemonConfig
		want func(d *daemon) bool
	}{
		{"add be4", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 1},
			func(d *daemon) bool { return len(d.live("web")) == 4 }},
		{"weight 3 for be1", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 3},
			func(d *daemon) bool { return d.weight("web", "192.0.2.11:80") == 3 }},
		{"add a service on port 81", daemonConfig{backends: []string{"be1", "be2", "be3", "be4"}, weight1: 3, port81: true},
			func(d *daemon) bool { return len(d.live("web81")) == 4 }},
	} {
		for _, name := range []string{"lb1", "lb2"} {
			d, cfg := nodes[name], step.cfg
			cfg.vrrpPriority = priority[name]
			d.write(cfg)
			d.reload()
		}
		for name, d := range nodes {
			d.waitFor(name+": "+step.what, func() bool { return step.want(d) })
		}
	}
	// A Backup that missed its Master's adverts would take over after
	// three advert intervals and the skew time (about 0.4 s here): give
	// a flap that long and more to show.
	time.Sleep(time.Second)

	flaps := regexp.MustCompile(`(?m)^.*msg="?(transition|vrrp instance changed; restarting it|vrrp instance removed)\b.*$`)
	for _, name := range []string{"lb1", "lb2"} {
		d := nodes[name]
		since := d.out.String()[logged[name]:]
		if got := len(regexp.MustCompile(`msg="config reloaded"`).FindAllString(since, -1)); got != 3 {
			t.Errorf("%s logged %d reloads, want 3", name, got)
		}
		if lines := flaps.FindAllString(since, -1); len(lines) > 0 {
			t.Errorf("%s logged VRRP changes across the reloads:\n%s", name, strings.Join(lines, "\n"))
		}
		after := d.instance()
		t.Logf("after the reloads: %s %s since %s", name, after.State, after.Since.Format(time.StampMilli))
		if after.State != before[name].State || !after.Since.Equal(before[name].Since) {
			t.Errorf("%s: %s since %s after the reloads, was %s since %s", name,
				after.State, after.Since, before[name].State, before[name].Since)
		}
	}
	n.checkVIP(t, "after the reloads", lb1MAC)
	if counts := c.spread(t, 52100, 40); total(counts) != 40 || counts["be4"] == 0 {
		t.Errorf("through lb1 after the reloads: %v, want 40 connections, be4 among the backends", counts)
	}
	if counts := c.spreadTo(t, 81, 52200, 20); total(counts) != 20 {
		t.Errorf("the service added by the reloads: %v", counts)
	}
	lb2.stop()
	lb1.stop()
}

// startPair starts a VRRP pair serving web: lb1 at priority 150 Master,
// lb2 at 100 Backup, each with three live backends.
func startPair(t *testing.T, halb string) (*daemonNet, map[string]*daemon, map[string]int) {
	t.Helper()
	n := newDaemonNet(t, "lb1", "lb2")
	onLink(t, n.client)
	nodes := map[string]*daemon{}
	priority := map[string]int{"lb1": 150, "lb2": 100}
	for _, name := range []string{"lb1", "lb2"} {
		d := n.daemon(t, halb, name)
		d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1, vrrpPriority: priority[name]})
		d.start(n.lbs[name])
		nodes[name] = d
	}
	nodes["lb1"].waitState("MASTER")
	nodes["lb2"].waitState("BACKUP")
	for _, d := range nodes {
		d.waitLive("web", "all three backends live", 3)
	}
	return n, nodes, priority
}

// instanceStatus is the VRRP instance in `halb status --json`.
type instanceStatus struct {
	State string    `json:"state"`
	Since time.Time `json:"since"`
}

// instance asks the daemon for its one VRRP instance.
func (d *daemon) instance() instanceStatus {
	d.t.Helper()
	out := d.statusJSON()
	var st struct {
		Instances []instanceStatus `json:"instances"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Instances) != 1 {
		d.t.Fatalf("halb status --json: %v, want one instance in:\n%s", err, out)
	}
	return st.Instances[0]
}

// macOf is balancer name's eth0 MAC.
func (n *daemonNet) macOf(t *testing.T, name string) net.HardwareAddr {
	t.Helper()
	l, err := n.lbs[name].Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

// checkVIP checks that the VIP is on lb1's eth0 and not lb2's, and that the
// client's neighbour entry for it holds lb1's MAC.
func (n *daemonNet) checkVIP(t *testing.T, when string, lb1MAC net.HardwareAddr) {
	t.Helper()
	n.checkVIPOn(t, when, "lb1", lb1MAC)
}

// checkVIPOn checks that the VIP is on holder's eth0 alone, of lb1 and
// lb2, and that the client's neighbour entry for it holds holder's MAC.
func (n *daemonNet) checkVIPOn(t *testing.T, when, holder string, mac net.HardwareAddr) {
	t.Helper()
	for _, name := range []string{"lb1", "lb2"} {
		want := name == holder
		h := n.lbs[name].Netlink(t)
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		has := slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(vip.AsSlice()) })
		if has != want {
			t.Errorf("%s: VIP on %s's eth0 is %v, want %v", when, name, has, want)
		}
	}
	h := n.client.Netlink(t)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(neighs, func(ne netlink.Neigh) bool { return ne.IP.Equal(vip.AsSlice()) })
	if i < 0 || neighs[i].HardwareAddr.String() != mac.String() {
		t.Errorf("%s: the client's neighbour entry for the VIP is %v, want %s's %s", when, neighs, holder, mac)
	}
}
