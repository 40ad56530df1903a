package service

import (
	"net/netip"
	"testing"

	"github.com/halb-lb/halb/config"
)

func TestFromConfig(t *testing.T) {
	cfg, err := config.Load("../configs/halb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got := FromConfig(cfg.Services)
	if len(got) != 3 {
		t.Fatalf("%d services, want 3", len(got))
	}
	web, web6, dns := got[0], got[1], got[2]
	if web.Key.String() != "192.0.2.100:80/tcp" || web.Forward != DR || web.Scheduler != "mh" || web.Persistence != 0 {
		t.Errorf("web = %+v", web)
	}
	if len(web.Backends) != 3 || web.Backends[2].Weight != 0 || web.Backends[0].AddrPort() != netip.MustParseAddrPort("198.51.100.11:80") {
		t.Errorf("web backends = %+v", web.Backends)
	}
	if web6.Key.String() != "[2001:db8::100]:443/tcp" || web6.Forward != TUN {
		t.Errorf("web6 = %+v", web6)
	}
	if dns.Key.Proto != UDP || dns.Backends[0].Port != 53 {
		t.Errorf("dns = %+v", dns)
	}
}

// A key reads as text in the status JSON, and `halb status` reads it back.
func TestKeyText(t *testing.T) {
	for _, k := range []Key{
		{VIP: netip.MustParseAddr("192.0.2.10"), Port: 80, Proto: TCP},
		{VIP: netip.MustParseAddr("2001:db8::100"), Port: 53, Proto: UDP},
		{VIP: netip.MustParseAddr("192.0.2.10"), Port: 9, Proto: 132},
	} {
		text, err := k.MarshalText()
		if err != nil || string(text) != k.String() {
			t.Errorf("%v: %q, %v", k, text, err)
		}
		var back Key
		if err := back.UnmarshalText(text); err != nil || back != k {
			t.Errorf("%q read back as %v, %v", text, back, err)
		}
	}
	for _, bad := range []string{"", "192.0.2.10:80", "192.0.2.10/tcp", "192.0.2.10:80/sctp"} {
		var k Key
		if err := k.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("%q read as %v", bad, k)
		}
	}
}

// Every enum names a value it does not know instead of panicking: a
// newer halb's value, or a bad one, still reads in a log line.
func TestEnumStringOutOfRange(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{DR.String(), "dr"}, {TUN.String(), "tun"}, {NAT.String(), "nat"},
		{Forward(4).String(), "forward(4)"}, {Forward(255).String(), "forward(255)"},
		{TCP.String(), "tcp"}, {UDP.String(), "udp"}, {Protocol(0).String(), "proto(0)"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}

// A service group becomes one service per VIP:port pair, of the group's
// name, scheduler and forward, with the same backends: the data paths
// never see the group.
func TestFromConfigGroup(t *testing.T) {
	pairs := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("192.0.2.101:8080")}
	got := FromConfig([]config.Service{
		{Name: "web", Listen: pairs, Protocol: "tcp", Scheduler: "rr", Forward: "nat",
			Backends: []config.Backend{{Address: netip.MustParseAddr("198.51.100.11"), Port: 80, Weight: 2}}},
		{Name: "dns", VIP: netip.MustParseAddr("192.0.2.102"), Port: 53, Protocol: "udp", Scheduler: "mh",
			Backends: []config.Backend{{Address: netip.MustParseAddr("198.51.100.12"), Port: 53, Weight: 1}}},
	})
	if len(got) != 3 {
		t.Fatalf("%d services, want 3: %+v", len(got), got)
	}
	for i, want := range []string{"192.0.2.100:80/tcp", "192.0.2.101:8080/tcp", "192.0.2.102:53/udp"} {
		if got[i].Key.String() != want {
			t.Errorf("service %d key %s, want %s", i, got[i].Key, want)
		}
	}
	for _, s := range got[:2] {
		if s.Name != "web" || s.Scheduler != "rr" || s.Forward != NAT || len(s.Backends) != 1 ||
			s.Backends[0] != (Backend{Addr: netip.MustParseAddr("198.51.100.11"), Port: 80, Weight: 2}) {
			t.Errorf("pair %s = %+v", s.Key, s)
		}
	}
	if &got[0].Backends[0] == &got[1].Backends[0] {
		t.Error("the pairs share one backends slice: a data path changing one would change the other")
	}
}
