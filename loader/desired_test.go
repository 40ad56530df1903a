package loader

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/halb-lb/halb/service"
)

// desiredFixture is services of each kind desiredServices keeps: IPv4
// backends it packs, and backends it keeps as given (IPv6, 4in6, a weight
// over 16 bits, a zone), mixed in one service too.
func desiredFixture() []service.Service {
	be := func(addr string, port uint16, weight uint32) service.Backend {
		return service.Backend{Addr: netip.MustParseAddr(addr), Port: port, Weight: weight}
	}
	key := func(vip string, port uint16) service.Key {
		return service.Key{VIP: netip.MustParseAddr(vip), Port: port, Proto: service.TCP}
	}
	return []service.Service{
		{Name: "web", Key: key("192.0.2.10", 80), Scheduler: "mh", Forward: service.DR, Backends: []service.Backend{
			be("198.51.100.1", 80, 1), be("198.51.100.2", 8080, 0), be("198.51.100.3", 0, 65535),
		}},
		{Name: "none", Key: key("192.0.2.11", 80), Forward: service.DR},
		{Name: "six", Key: key("2001:db8::10", 443), Forward: service.TUN, Persistence: time.Minute, Backends: []service.Backend{
			be("2001:db8::1", 443, 1), be("fe80::1%eth0", 443, 2),
		}},
		{Name: "mixed", Key: key("::ffff:192.0.2.12", 53), Forward: service.FullNAT, SNAT: netip.MustParseAddr("192.0.2.2"), Backends: []service.Backend{
			be("198.51.100.4", 53, 1), be("::ffff:198.51.100.5", 53, 1), be("198.51.100.6", 53, 1<<16),
		}},
	}
}

// TestDesiredKeepsServices pins that desiredServices gives back exactly
// the services it was given, whichever way it keeps their backends, and
// that it keeps none of the caller's slices.
func TestDesiredKeepsServices(t *testing.T) {
	in := desiredFixture()
	d := newDesired(in)
	if len(d.packed) != 3 {
		t.Errorf("packed %d backends, want the 3 of web", len(d.packed))
	}
	got := d.services(nil)
	if !slices.EqualFunc(got, in, equalService) {
		t.Fatalf("services() = %+v\nwant %+v", got, in)
	}
	in[0].Backends[0].Weight = 7
	in[2].Backends[0].Weight = 7
	if again := d.services(nil); again[0].Backends[0].Weight != 1 || again[2].Backends[0].Weight != 1 {
		t.Errorf("a change to the caller's backends reached the kept services")
	}
	if newDesired(nil) != nil || (*desiredServices)(nil).services(nil) != nil {
		t.Errorf("no services are kept as nil")
	}
}

// TestDesiredServicesOnly pins that services(only) unpacks the backends of
// the services in only alone, found by their VIP unmapped.
func TestDesiredServicesOnly(t *testing.T) {
	in := desiredFixture()
	d := newDesired(in)
	mixed := in[3].Key
	mixed.VIP = mixed.VIP.Unmap()
	got := d.services(map[service.Key]bool{mixed: true})
	if len(got) != len(in) {
		t.Fatalf("%d services, want %d", len(got), len(in))
	}
	if got[0].Backends != nil {
		t.Errorf("web, not asked for, has its backends unpacked: %v", got[0].Backends)
	}
	if !slices.Equal(got[3].Backends, in[3].Backends) {
		t.Errorf("mixed: %v, want %v", got[3].Backends, in[3].Backends)
	}
	web := in[0].Key
	if got := d.services(map[service.Key]bool{web: true}); !slices.Equal(got[0].Backends, in[0].Backends) {
		t.Errorf("web asked for: %v, want %v", got[0].Backends, in[0].Backends)
	}
}

// TestDesiredSame pins what makes an Apply a repeat of the last one: every
// field of every service and every backend, in order; a VIP only as
// written or 4in6.
func TestDesiredSame(t *testing.T) {
	d := newDesired(desiredFixture())
	if !d.same(desiredFixture()) {
		t.Fatal("the same services are not the same")
	}
	unmapped := desiredFixture()
	unmapped[3].Key.VIP = unmapped[3].Key.VIP.Unmap()
	if !d.same(unmapped) {
		t.Error("a VIP unmapped from 4in6 is not the same VIP")
	}
	for name, change := range map[string]func(s []service.Service) []service.Service{
		"one service fewer":  func(s []service.Service) []service.Service { return s[:3] },
		"services reordered": func(s []service.Service) []service.Service { s[0], s[1] = s[1], s[0]; return s },
		"name":               func(s []service.Service) []service.Service { s[0].Name = "www"; return s },
		"port":               func(s []service.Service) []service.Service { s[0].Key.Port = 81; return s },
		"protocol":           func(s []service.Service) []service.Service { s[0].Key.Proto = service.UDP; return s },
		"scheduler":          func(s []service.Service) []service.Service { s[0].Scheduler = "rr"; return s },
		"forward":            func(s []service.Service) []service.Service { s[0].Forward = service.TUN; return s },
		"persistence":        func(s []service.Service) []service.Service { s[2].Persistence = 0; return s },
		"snat":               func(s []service.Service) []service.Service { s[3].SNAT = netip.MustParseAddr("192.0.2.3"); return s },
		"packed weight":      func(s []service.Service) []service.Service { s[0].Backends[1].Weight = 1; return s },
		"packed port":        func(s []service.Service) []service.Service { s[0].Backends[2].Port = 80; return s },
		"packed address": func(s []service.Service) []service.Service {
			s[0].Backends[0].Addr = netip.MustParseAddr("198.51.100.9")
			return s
		},
		"packed address in 4in6": func(s []service.Service) []service.Service {
			s[0].Backends[0].Addr = netip.MustParseAddr("::ffff:198.51.100.1")
			return s
		},
		"packed weight too big": func(s []service.Service) []service.Service { s[0].Backends[0].Weight = 1<<16 + 1; return s },
		"a backend fewer":       func(s []service.Service) []service.Service { s[0].Backends = s[0].Backends[:2]; return s },
		"backends reordered":    func(s []service.Service) []service.Service { b := s[0].Backends; b[0], b[1] = b[1], b[0]; return s },
		"a backend added":       func(s []service.Service) []service.Service { s[1].Backends = s[0].Backends; return s },
		"kept zone": func(s []service.Service) []service.Service {
			s[2].Backends[1].Addr = netip.MustParseAddr("fe80::1%eth1")
			return s
		},
		"kept weight": func(s []service.Service) []service.Service { s[3].Backends[2].Weight = 1; return s },
	} {
		if d.same(change(desiredFixture())) {
			t.Errorf("%s: the same", name)
		}
	}
}

func equalService(a, b service.Service) bool {
	return a.Name == b.Name && a.Key == b.Key && a.Scheduler == b.Scheduler && a.Forward == b.Forward &&
		a.Persistence == b.Persistence && a.SNAT == b.SNAT && slices.Equal(a.Backends, b.Backends)
}
