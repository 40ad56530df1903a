package vrrp

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

// Malformed or foreign adverts are dropped, counted by reason, and never
// move the state machine or its timers.
func TestMalformedAdvertsAreDroppedAndCounted(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.2")
	dst := group4
	cfg := config.Instance{Name: "VI_T", Interface: "lan0", VRID: 51, Version: 2, Priority: 100,
		AdvertInterval: time.Second, Preempt: true, AuthPass: "secret",
		VirtualIPs: config.PlainVIPs(netip.MustParsePrefix("192.0.2.100/24"))}
	in := NewInstance(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	in.src = netip.MustParseAddr("192.0.2.1")
	in.apply(t0, in.m.Start(t0))
	deadline := in.m.Deadline()

	good := func(mut func(a *Advert)) []byte {
		a := &Advert{Version: 2, VRID: 51, Priority: 200, Interval: time.Second, AuthType: AuthSimple,
			Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.100")}}
		copy(a.AuthData[:], "secret")
		if mut != nil {
			mut(a)
		}
		b, err := a.Marshal(nil, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	badChecksum := good(nil)
	badChecksum[6] ^= 0xff
	wrongVersion := good(func(a *Advert) { a.Version, a.AuthType, a.AuthData = 3, 0, [8]byte{} })

	for _, tt := range []struct {
		name    string
		payload []byte
		ttl     int
		reason  string
	}{
		{"bad checksum", badChecksum, 255, "checksum"},
		{"TTL 254", good(nil), 254, "ttl"},
		{"wrong VRID", good(func(a *Advert) { a.VRID = 52 }), 255, "other_vrid"},
		{"wrong version", wrongVersion, 255, "version"},
		{"bad password", good(func(a *Advert) { copy(a.AuthData[:], "guess!!!") }), 255, "auth"},
		{"no auth", good(func(a *Advert) { a.AuthType, a.AuthData = 0, [8]byte{} }), 255, "auth"},
		{"other interval", good(func(a *Advert) { a.Interval = 2 * time.Second }), 255, "interval"},
		{"truncated", good(nil)[:6], 255, "truncated"},
		{"count beyond length", good(nil)[:12], 255, "length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := in.Status().Drops[tt.reason]
			in.receive(t0.Add(time.Second), packetIn{payload: tt.payload, src: src, dst: dst, ttl: tt.ttl})
			if got := in.Status().Drops[tt.reason]; got != before+1 {
				t.Errorf("drops[%s] = %d, want %d (all: %v)", tt.reason, got, before+1, in.Status().Drops)
			}
			if in.m.State() != Backup || !in.m.Deadline().Equal(deadline) {
				t.Errorf("a dropped advert moved the machine: %s, deadline %v", in.m.State(), in.m.Deadline().Sub(t0))
			}
		})
	}

	// The same advert, well formed, is taken: the master down timer restarts.
	in.receive(t0.Add(2*time.Second), packetIn{payload: good(nil), src: src, dst: dst, ttl: 255})
	if in.Status().Received != 1 || !in.m.Deadline().After(deadline) {
		t.Errorf("a good advert was not taken: received %d, deadline %v", in.Status().Received, in.m.Deadline().Sub(t0))
	}
}

// In unicast mode the sender is checked against unicast_peers instead of
// the TTL: keepalived sends IPv6 unicast adverts with hop limit 64.
func TestUnicastRules(t *testing.T) {
	peer := netip.MustParseAddr("2001:db8::2")
	me := netip.MustParseAddr("2001:db8::1")
	a := &Advert{Version: 3, VRID: 51, Priority: 150, Interval: 500 * time.Millisecond,
		Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::100")}}
	r := receiveRules{version: 3, vrid: 51, peers: []netip.Addr{peer}}
	b, err := a.Marshal(nil, peer, me)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.accept(b, peer, me, 64); err != nil {
		t.Errorf("unicast advert from a peer with hop limit 64 refused: %v", err)
	}
	stranger := netip.MustParseAddr("2001:db8::3")
	b, _ = a.Marshal(nil, stranger, me)
	if _, err := r.accept(b, stranger, me, 255); dropReason(err) != "not_peer" {
		t.Errorf("advert from a non-peer: %v, want not_peer", err)
	}
}
