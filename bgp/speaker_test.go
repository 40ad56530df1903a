package bgp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/halb-lb/halb/config"
)

func newIdle(t *testing.T) *Speaker {
	t.Helper()
	return &Speaker{log: slog.New(slog.DiscardHandler), routes: map[netip.Prefix]Route{}, track: map[netip.Addr]*peerTrack{},
		closed: make(chan struct{}), runDone: make(chan struct{})}
}

// Only host routes are announced; announcing and withdrawing before Run
// records what Run will announce, idempotently.
func TestAnnounceBeforeRun(t *testing.T) {
	s := newIdle(t)
	for _, p := range []string{"192.0.2.0/24", "2001:db8::/64", "::ffff:192.0.2.1/128"} {
		if err := s.Announce(netip.MustParsePrefix(p), Attrs{}, ""); !errors.Is(err, ErrNotHostRoute) {
			t.Errorf("Announce(%s) = %v, want ErrNotHostRoute", p, err)
		}
	}
	v4, v6 := netip.MustParsePrefix("192.0.2.100/32"), netip.MustParsePrefix("2001:db8::100/128")
	for range 2 {
		if err := s.Announce(v4, Attrs{MED: 1}, "serving"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Announce(v6, Attrs{}, "serving"); err != nil {
		t.Fatal(err)
	}
	if got := s.Announced(); len(got) != 2 || got[0].Prefix != v4 || got[1].Prefix != v6 || got[0].Attrs.MED != 1 {
		t.Fatalf("Announced() = %+v", got)
	}
	if err := s.Withdraw(v4); err != nil {
		t.Fatal(err)
	}
	if err := s.Withdraw(v4); err != nil {
		t.Fatal(err)
	}
	if got := s.Announced(); len(got) != 1 || got[0].Prefix != v6 {
		t.Fatalf("Announced() after Withdraw = %+v", got)
	}
	if err := s.WithdrawAll(); err != nil || len(s.Announced()) != 0 {
		t.Fatalf("WithdrawAll = %v, left %+v", err, s.Announced())
	}
	s.Close()
	if err := s.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

func TestAttrsOf(t *testing.T) {
	a, err := AttrsOf(config.Announce{Communities: []string{"65000:100", "no-export"}, LargeCommunities: []string{"65000:1:2"}, LocalPref: 200, MED: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := Attrs{Communities: []uint32{65000<<16 | 100, 0xFFFFFF01}, LargeCommunities: [][3]uint32{{65000, 1, 2}}, LocalPref: 200, MED: 3}
	if !a.equal(want) {
		t.Errorf("AttrsOf = %+v, want %+v", a, want)
	}
	if _, err := AttrsOf(config.Announce{Communities: []string{"x"}}); err == nil {
		t.Error("AttrsOf took a bad community")
	}
}

// A route becomes GoBGP's path with next hop unspecified (next hop self)
// and the right family and attributes.
func TestPath(t *testing.T) {
	for _, c := range []struct {
		prefix string
		family gobgp.Family
	}{{"192.0.2.100/32", gobgp.RF_IPv4_UC}, {"2001:db8::100/128", gobgp.RF_IPv6_UC}} {
		p, err := path(Route{Prefix: netip.MustParsePrefix(c.prefix), Attrs: Attrs{Communities: []uint32{1}, LargeCommunities: [][3]uint32{{1, 2, 3}}, LocalPref: 100, MED: 2}})
		if err != nil {
			t.Fatal(err)
		}
		if p.Family != c.family || p.Nlri.String() != c.prefix {
			t.Errorf("path(%s): family %v, nlri %s", c.prefix, p.Family, p.Nlri)
		}
		types := map[gobgp.BGPAttrType]bool{}
		for _, a := range p.Attrs {
			types[a.GetType()] = true
		}
		for _, want := range []gobgp.BGPAttrType{gobgp.BGP_ATTR_TYPE_ORIGIN, gobgp.BGP_ATTR_TYPE_LOCAL_PREF, gobgp.BGP_ATTR_TYPE_MULTI_EXIT_DISC,
			gobgp.BGP_ATTR_TYPE_COMMUNITIES, gobgp.BGP_ATTR_TYPE_LARGE_COMMUNITY} {
			if !types[want] {
				t.Errorf("path(%s) has no %v", c.prefix, want)
			}
		}
		if !types[gobgp.BGP_ATTR_TYPE_NEXT_HOP] && !types[gobgp.BGP_ATTR_TYPE_MP_REACH_NLRI] {
			t.Errorf("path(%s) has no next hop", c.prefix)
		}
	}
}

// GoBGP's lines reach halb's log in halb's style, its Info at Debug, and a
// failed connection becomes the peer's last error.
func TestLogBridge(t *testing.T) {
	var buf bytes.Buffer
	var peer, msg string
	b := newLogBridge(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}), func(p, m string) { peer, msg = p, m })
	log := slog.New(b).With(slog.String("Topic", "Peer"), slog.String("Key", "192.0.2.254"))
	log.Debug("failed to connect", slog.String("Error", "dial tcp 192.0.2.254:179: connect: connection refused"))
	log.Info("Peer Up")
	log.Warn("Closed an accepted connection", slog.String("State", "BGP_FSM_ACTIVE"))
	if peer != "192.0.2.254" || msg != "connect: dial tcp 192.0.2.254:179: connect: connection refused" {
		t.Errorf("last error = %q for %q", msg, peer)
	}
	out := buf.String()
	if strings.Contains(out, "failed to connect") || strings.Contains(out, "Peer Up") || strings.Contains(out, "peer Up") {
		t.Errorf("debug and demoted info lines reached an info log:\n%s", out)
	}
	if !strings.Contains(out, `level=WARN msg="closed an accepted connection" topic=Peer key=192.0.2.254 state=BGP_FSM_ACTIVE`) {
		t.Errorf("warning not bridged in halb's style:\n%s", out)
	}
	if got := lowerFirst("BFD server is started"); got != "BFD server is started" {
		t.Errorf("lowerFirst kept no acronym: %q", got)
	}
}
