package health

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// TestBackends is the specification of the weight rule: drain, quorum and
// sorry backend.
func TestBackends(t *testing.T) {
	a := netip.MustParseAddrPort("198.51.100.11:80")
	b := netip.MustParseAddrPort("198.51.100.12:80")
	c := netip.MustParseAddrPort("198.51.100.13:80")
	sorry := netip.MustParseAddrPort("198.51.100.99:80")

	svc := func(check string, quorum int, sorry netip.AddrPort, weights ...int) config.Service {
		s := config.Service{Name: "web", Quorum: quorum, SorryBackend: sorry, HealthCheck: config.HealthCheck{Type: check}}
		for i, w := range weights {
			ap := []netip.AddrPort{a, b, c}[i]
			s.Backends = append(s.Backends, config.Backend{Address: ap.Addr(), Port: int(ap.Port()), Weight: w})
		}
		return s
	}
	down := func(aps ...netip.AddrPort) map[Key]State {
		m := map[Key]State{}
		for _, ap := range []netip.AddrPort{a, b, c} {
			m[Key{"web", ap}] = Healthy
		}
		for _, ap := range aps {
			m[Key{"web", ap}] = Unhealthy
		}
		return m
	}
	// want lists "addr:port=weight".
	tests := []struct {
		name   string
		svc    config.Service
		states map[Key]State
		want   []string
		lost   bool
	}{
		{"all healthy keep their weights", svc("tcp", 1, netip.AddrPort{}, 1, 5, 2), down(), []string{"198.51.100.11:80=1", "198.51.100.12:80=5", "198.51.100.13:80=2"}, false},
		{"unhealthy is drained", svc("tcp", 1, netip.AddrPort{}, 1, 5, 2), down(b), []string{"198.51.100.11:80=1", "198.51.100.12:80=0", "198.51.100.13:80=2"}, false},
		{"weight 0 by config stays 0 when healthy", svc("tcp", 1, netip.AddrPort{}, 0, 1, 1), down(), []string{"198.51.100.11:80=0", "198.51.100.12:80=1", "198.51.100.13:80=1"}, false},
		{"not in states counts as healthy", svc("tcp", 1, netip.AddrPort{}, 1, 1), nil, []string{"198.51.100.11:80=1", "198.51.100.12:80=1"}, false},
		{"none ignores states", svc("none", 2, sorry, 1, 1), down(a, b), []string{"198.51.100.11:80=1", "198.51.100.12:80=1"}, false},
		{"all down, no sorry: nothing takes flows", svc("tcp", 1, netip.AddrPort{}, 1, 1, 1), down(a, b, c), []string{"198.51.100.11:80=0", "198.51.100.12:80=0", "198.51.100.13:80=0"}, true},
		{"quorum met exactly", svc("tcp", 2, sorry, 1, 1, 1), down(c), []string{"198.51.100.11:80=1", "198.51.100.12:80=1", "198.51.100.13:80=0"}, false},
		{"quorum lost, no sorry: the healthy one is dropped too", svc("tcp", 2, netip.AddrPort{}, 1, 1, 1), down(b, c), []string{"198.51.100.11:80=0", "198.51.100.12:80=0", "198.51.100.13:80=0"}, true},
		{"quorum lost: the sorry backend takes it all", svc("http", 2, sorry, 3, 1, 1), down(b, c), []string{"198.51.100.11:80=0", "198.51.100.12:80=0", "198.51.100.13:80=0", "198.51.100.99:80=1"}, true},
		{"all down with a sorry backend, quorum 1", svc("tcp", 1, sorry, 1, 1), down(a, b), []string{"198.51.100.11:80=0", "198.51.100.12:80=0", "198.51.100.99:80=1"}, true},
		{"drained by config does not count for quorum", svc("tcp", 2, sorry, 0, 1, 1), down(c), []string{"198.51.100.11:80=0", "198.51.100.12:80=0", "198.51.100.13:80=0", "198.51.100.99:80=1"}, true},
		{"sorry backend that is also listed is not doubled", svc("tcp", 3, b, 1, 1, 1), down(c), []string{"198.51.100.11:80=0", "198.51.100.12:80=1", "198.51.100.13:80=0"}, true},
		{"quorum 0 counts as 1", svc("tcp", 0, sorry, 1), down(a), []string{"198.51.100.11:80=0", "198.51.100.99:80=1"}, true},
		{"states of another service do not apply", svc("tcp", 1, netip.AddrPort{}, 1), map[Key]State{{"other", a}: Unhealthy}, []string{"198.51.100.11:80=1"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Backends(tt.svc, tt.states)
			if s := render(got); !slices.Equal(s, tt.want) {
				t.Errorf("Backends = %q, want %q", s, tt.want)
			}
			if lost := QuorumLost(tt.svc, tt.states); lost != tt.lost {
				t.Errorf("QuorumLost = %v, want %v", lost, tt.lost)
			}
			// With quorum met, the live backends are those Backends
			// gives a weight.
			taking := 0
			for _, b := range got {
				if b.Weight > 0 {
					taking++
				}
			}
			if live := Live(tt.svc, tt.states); !tt.lost && live != taking {
				t.Errorf("Live = %d, want %d", live, taking)
			}
		})
	}
}

func render(bs []service.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = fmt.Sprintf("%s=%d", b.AddrPort(), b.Weight)
	}
	return out
}

func TestServices(t *testing.T) {
	// Parse, not Load: the example's exec check names a script this host
	// need not have.
	data, err := os.ReadFile("../configs/halb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(data, "../configs/halb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s0 := cfg.Services[0]
	first := netip.AddrPortFrom(s0.Backends[0].Address, uint16(s0.Backends[0].Port))
	got := Services(cfg.Services, map[Key]State{{s0.Name, first}: Unhealthy})
	want := service.FromConfig(cfg.Services)
	if len(got) != len(want) {
		t.Fatalf("%d services, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Name != want[i].Name || got[i].Key != want[i].Key {
			t.Errorf("service %d = %s %s, want %s %s", i, got[i].Name, got[i].Key, want[i].Name, want[i].Key)
		}
	}
	if got[0].Backends[0].Weight != 0 {
		t.Errorf("%s of %s has weight %d, want 0 (unhealthy)", first, s0.Name, got[0].Backends[0].Weight)
	}
	if len(got) > 1 && !slices.Equal(got[1].Backends, want[1].Backends) {
		t.Errorf("%s backends = %v, want %v (all healthy)", got[1].Name, got[1].Backends, want[1].Backends)
	}
}

// A service group's pairs take the weights of one check per backend: an
// unhealthy backend is drained on every pair, and each pair owns its
// slice.
func TestServicesGroup(t *testing.T) {
	a := netip.MustParseAddrPort("198.51.100.11:80")
	b := netip.MustParseAddrPort("198.51.100.12:80")
	web := config.Service{Name: "web", Quorum: 1, HealthCheck: config.HealthCheck{Type: TypeTCP},
		Listen: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.100:80"), netip.MustParseAddrPort("192.0.2.101:80")}}
	for _, ap := range []netip.AddrPort{a, b} {
		web.Backends = append(web.Backends, config.Backend{Address: ap.Addr(), Port: int(ap.Port()), Weight: 1})
	}
	dns := config.Service{Name: "dns", VIP: netip.MustParseAddr("192.0.2.102"), Port: 53, Protocol: "udp", Quorum: 1,
		HealthCheck: config.HealthCheck{Type: TypeNone}, Backends: []config.Backend{{Address: a.Addr(), Port: 53, Weight: 3}}}
	got := Services([]config.Service{web, dns}, map[Key]State{{"web", a}: Unhealthy, {"web", b}: Healthy})
	if len(got) != 3 {
		t.Fatalf("%d services, want 3", len(got))
	}
	for _, s := range got[:2] {
		if w := render(s.Backends); !slices.Equal(w, []string{"198.51.100.11:80=0", "198.51.100.12:80=1"}) {
			t.Errorf("%s %s weights %v, want a drained on both pairs", s.Name, s.Key, w)
		}
	}
	if w := render(got[2].Backends); got[2].Name != "dns" || !slices.Equal(w, []string{"198.51.100.11:53=3"}) {
		t.Errorf("after the group: %s %v", got[2].Name, w)
	}
	got[0].Backends[0].Weight = 9
	if got[1].Backends[0].Weight != 0 {
		t.Error("the pairs share one backends slice")
	}
}
