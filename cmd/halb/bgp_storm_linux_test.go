package main

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// stormMetrics is where the storm's halb serves its metrics, in its own
// namespace.
const stormMetrics = "127.0.0.1:9642"

// Ten SIGHUPs in a row, each with a bgp section that adds or removes the
// IPv6 peer, leave halb running with the last file's sessions, the IPv4
// session that no reload changed as it was (the router counts no new
// session and no drop), and no more goroutines than before the storm.
func TestBGPReloadStormKeepsSessions(t *testing.T) {
	l := newBGPLab(t)
	l.backendUp(t)
	t.Setenv("HALB_CONTROL_METRICS", stormMetrics)
	both := []string{"203.0.113.254", "2001:db8:ffff::fe"}
	l.write(t, "always", both, "")
	p := startHalbIn(t, l.ns, "run", "-c", l.cfg)
	l.waitRouted(t, true, "the vip announced")
	l.waitEstablished(t, labHalb6)
	before4 := l.neighbor(t, labHalb4)
	time.Sleep(2 * time.Second) // let start-up's goroutines end
	base := goroutinesIn(t, l.ns)

	for i := range 10 {
		peers := both
		if i%2 == 0 {
			peers = both[:1]
		}
		l.write(t, "always", peers, "")
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	// The storm changed the sessions: the IPv6 peer went, and came back.
	p.waitFor(t, "bgp peer removed")
	p.waitFor(t, "bgp peer added")
	l.write(t, "always", both, "")
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	l.waitEstablished(t, labHalb6)
	if b := l.bgpStatus(t); len(b.Peers) != 2 {
		t.Errorf("peers after the storm: %+v", b.Peers)
	}
	after4 := l.neighbor(t, labHalb4)
	if after4.State != "Established" || after4.Established != before4.Established || after4.Dropped != before4.Dropped {
		t.Errorf("the IPv4 session, which no reload changed, was reset by the storm: before %+v, after %+v", before4, after4)
	}
	l.waitRouted(t, true, "the vip still announced")
	// Goroutines end a little after a reload: poll for a bounded while.
	var now int
	frrtest.Eventually(t, 20*time.Second, "goroutines back to the count before the storm", func() error {
		if now = goroutinesIn(t, l.ns); now > base+2 {
			return fmt.Errorf("%w: %d goroutines, %d before the storm", frrtest.ErrNotYet, now, base)
		}
		return nil
	})
	t.Logf("goroutines: %d before the storm, %d after", base, now)
	if p.Exited() {
		t.Fatal("halb exited during the storm")
	}
}

func (l *bgpLab) waitEstablished(t *testing.T, addr string) {
	t.Helper()
	frrtest.Eventually(t, 30*time.Second, "the session with "+addr+" established", func() error {
		if n := l.neighbor(t, addr); n.State != "Established" {
			return fmt.Errorf("%w: %s", frrtest.ErrNotYet, n.State)
		}
		return nil
	})
}

var goroutinesLine = regexp.MustCompile(`(?m)^go_goroutines (\d+)`)

// goroutinesIn is go_goroutines from halb's metrics in ns.
func goroutinesIn(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	var body []byte
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", stormMetrics, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatalf("scrape halb's metrics: %v", err)
	}
	m := goroutinesLine.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no go_goroutines in halb's metrics:\n%s", body)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
