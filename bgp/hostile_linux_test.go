package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/frrtest"
)

// A hostile or misconfigured router is a state on its own session, never
// the end of the speaker, and the other session stays up through it all:
// a router of another AS than bgp.peers[].asn says (its OPEN refused), a
// TCP MD5 key that differs (the router's kernel drops every segment), and
// a session the router resets five times in a row.
func TestFRRHostilePeerIsAState(t *testing.T) {
	const key = "halb-right-key"
	l := inLab(t, 65000, func(l *lab) string {
		c := frrConf(65000, 65001, []netip.Addr{l.Host4, l.Host6})
		return strings.Replace(c, " neighbor "+l.Host4.String()+" timers connect 1\n",
			" neighbor "+l.Host4.String()+" timers connect 1\n neighbor "+l.Host4.String()+" password "+key+"\n", 1)
	})
	if l == nil {
		return
	}
	good := peerCfg(l.Router6, 65000)
	hostile := peerCfg(l.Router4, 65009) // the router is AS 65000
	hostile.Password = key
	cfg := config.BGP{ASN: 65001, RouterID: l.Host4, Peers: []config.BGPPeer{good, hostile}}
	s := startSpeaker(t, cfg)
	first := established(t, l, s, l.Router6, l.Host6)
	notUp := func(what, errPart string) {
		t.Helper()
		frrtest.Eventually(t, 30*time.Second, what, func() error {
			st := peerStatus(t, s, l.Router4)
			if st.State == StateEstablished || !strings.Contains(st.LastError, errPart) {
				return fmt.Errorf("%s, last error %q", st.State, st.LastError)
			}
			return nil
		})
		st := peerStatus(t, s, l.Router4)
		t.Logf("%s: %s, last error %q", what, st.State, st.LastError)
	}
	notUp("a router of another AS", "bad peer as")

	// The right AS, a wrong key: the router's kernel drops every segment,
	// and each attempt times out.
	hostile.ASN = 65000
	hostile.Password = "halb-wrong-key"
	cfg.Peers = []config.BGPPeer{good, hostile}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	notUp("a wrong TCP MD5 key", "connect: ")

	// The right key: up, then reset by the router five times.
	hostile.Password = key
	cfg.Peers = []config.BGPPeer{good, hostile}
	if err := s.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	established(t, l, s, l.Router4, l.Host4)
	for i := range 5 {
		if out, err := l.VTY.Run("-d", "bgpd", "-c", "clear bgp "+l.Host4.String()); err != nil {
			t.Fatalf("clear bgp %s: %v: %s", l.Host4, err, out)
		}
		established(t, l, s, l.Router4, l.Host4)
		t.Logf("reset %d: back up", i+1)
	}
	ns, err := l.VTY.Neighbors()
	if err != nil {
		t.Fatal(err)
	}
	if n := ns[l.Host4.String()]; n.Dropped < 5 {
		t.Errorf("the router dropped the flapping session %d times, want at least 5", n.Dropped)
	}
	if n := ns[l.Host6.String()]; n.State != "Established" || n.Established != 1 || n.Dropped != 0 {
		t.Errorf("the good session: %s, %d made, %d dropped; want Established, 1 and 0", n.State, n.Established, n.Dropped)
	}
	if now := peerStatus(t, s, l.Router6); now.State != StateEstablished || !now.Since.Equal(first.Since) {
		t.Errorf("the good session: %s since %s; want established since %s", now.State, now.Since, first.Since)
	}
	verifyNoLeaks(t, s)
}
