package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// TestFlows opens connections to the daemon's DR service through XDP and
// has `halb flows` list each of them with the backend that answered it
// (each backend greets with its name), a packet count that holds at least
// the handshake's SYN and ACK and one ping, and an age no longer than the
// test has run; --service filters, --limit cuts with "N of M", and an
// unknown service exits 2.
func TestFlows(t *testing.T) {
	netnstest.Require(t)
	halb := halbtest.Build(t)
	n := newDaemonNet(t, "lb")
	routeVIP(t, n.client)
	d := n.daemon(t, halb, "lb")
	d.write(daemonConfig{backends: []string{"be1", "be2", "be3"}, weight1: 1, port81: true})
	d.start(n.lbs["lb"])
	d.waitLive("web", "all three backends live", 3)
	d.waitFor("web81 live", func() bool { return len(d.live("web81")) == 3 })

	start := time.Now()
	c := &client{ns: n.client, src: clientIP, vip: vip}
	held := c.connectMany(t, 44000, 12)
	for _, cn := range held {
		cn.ping(t, "before halb flows")
	}
	flows := func(args ...string) service.FlowList {
		t.Helper()
		code, out := d.command(append([]string{"flows", "--json"}, args...)...)
		var list service.FlowList
		if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil {
			t.Fatalf("halb flows %v: exit %d, %v: %s", args, code, err, out)
		}
		return list
	}
	list := flows()
	bySrc := map[netip.AddrPort]service.Flow{}
	for _, f := range list.Flows {
		bySrc[f.Client] = f
	}
	maxAge := int64(time.Since(start).Seconds()) + 1 // whole seconds on both sides
	for _, cn := range held {
		src := netip.MustParseAddrPort(cn.LocalAddr().String())
		f, ok := bySrc[src]
		want := netip.AddrPortFrom(netip.MustParseAddr(daemonAddrs[cn.backend]), 80)
		switch {
		case !ok:
			t.Errorf("halb flows does not list the connection from %s (to %s): %+v", src, cn.backend, list.Flows)
		case f.Service != "web" || f.Backend != want:
			t.Errorf("flow from %s: service %q backend %s, want web and %s, the backend that answered it", src, f.Service, f.Backend, want)
		case f.Packets == nil || *f.Packets < 3:
			t.Errorf("flow from %s: packets %v, want at least 3 (SYN, ACK, ping)", src, deref(f.Packets))
		case f.AgeSeconds == nil || *f.AgeSeconds < 0 || *f.AgeSeconds > maxAge:
			t.Errorf("flow from %s: age %v s, want 0 to %d s (the test's run so far)", src, deref(f.AgeSeconds), maxAge)
		}
	}
	if list.Total != len(held) {
		t.Errorf("halb flows counts %d flows, want the test's %d", list.Total, len(held))
	}

	// Connections to the other service on port 81 are listed under it,
	// and --service web leaves them out.
	c81 := c.connectService(t, 81, 44100, 3)
	if l := flows("--service", "web81"); l.Total != len(c81) {
		t.Errorf("halb flows --service web81: %d flows, want %d: %+v", l.Total, len(c81), l.Flows)
	}
	if l := flows("--service", "web"); l.Total != len(held) {
		t.Errorf("halb flows --service web: %d flows, want %d", l.Total, len(held))
	}
	code, out := d.command("flows", "--service", "web", "--limit", "2")
	if code != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(out, fmt.Sprintf("2 of %d flows shown", len(held))) {
		t.Errorf("halb flows --limit 2: exit %d, want a header, 2 rows and the count:\n%s", code, out)
	}
	if code, out := d.command("flows", "--service", "nope"); code != 2 {
		t.Errorf("halb flows --service nope: exit %d, want 2: %s", code, out)
	}
	d.stop()
}

// connectService opens n connections to the VIP's port svcPort from
// ports first, first+1, ..., held open until the test ends.
func (c *client) connectService(t testing.TB, svcPort uint16, first, n int) []*conn {
	t.Helper()
	var conns []*conn
	t.Cleanup(func() {
		for _, cn := range conns {
			cn.Close()
		}
	})
	err := c.ns.Do(func() error {
		for i := range n {
			cn, err := c.dialService(svcPort, first+i)
			if err != nil {
				return fmt.Errorf("connection %d of %d to port %d: %w", i+1, n, svcPort, err)
			}
			conns = append(conns, cn)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return conns
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
