package ipvs

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/internal/kmod"
	"github.com/halb-lb/halb/service"
)

// svc builds a service on vipPort ("192.0.2.10:80", "[2001:db8::10]:443").
func svc(name, vipPort string, proto service.Protocol, sched string, fwd service.Forward, backends ...service.Backend) service.Service {
	ap := netip.MustParseAddrPort(vipPort)
	return service.Service{
		Name:      name,
		Key:       service.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: proto},
		Scheduler: sched,
		Forward:   fwd,
		Backends:  backends,
	}
}

func be(addrPort string, weight uint32) service.Backend {
	ap := netip.MustParseAddrPort(addrPort)
	return service.Backend{Addr: ap.Addr(), Port: ap.Port(), Weight: weight}
}

// with returns s changed by f, leaving s as it was.
func with(s service.Service, f func(*service.Service)) service.Service {
	s.Backends = slices.Clone(s.Backends)
	f(&s)
	return s
}

var (
	web = svc("web", "192.0.2.10:80", service.TCP, "rr", service.DR, be("10.0.0.1:80", 1), be("10.0.0.2:80", 1))
	api = svc("api", "192.0.2.11:443", service.TCP, "mh", service.NAT, be("10.0.1.1:8443", 1))
	dns = svc("dns", "192.0.2.53:53", service.UDP, "sh", service.DR, be("10.0.2.1:53", 1), be("10.0.2.2:53", 1))
	v6  = svc("web6", "[2001:db8::10]:443", service.TCP, "mh", service.DR, be("[2001:db8:1::1]:443", 1), be("[2001:db8:1::2]:443", 2))
)

// handMade is a service someone added with ipvsadm:
// ipvsadm -A -u 198.51.100.1:53 -s wlc; ipvsadm -a -u 198.51.100.1:53 -r 10.9.9.9:53 -m -w 3
func handMade(k *fakeIPVS) {
	k.add(cfipvs.Service{Address: netip.MustParseAddr("198.51.100.1"), Port: 53, Protocol: cfipvs.UDP, Family: cfipvs.INET, Scheduler: "wlc"},
		cfipvs.Destination{Address: netip.MustParseAddr("10.9.9.9"), Port: 53, Family: cfipvs.INET, FwdMethod: cfipvs.Masquerade, Weight: 3})
	// A firewall-mark service has no (VIP, port, protocol) at all.
	k.add(cfipvs.Service{FWMark: 7, Protocol: cfipvs.TCP, Family: cfipvs.INET, Scheduler: "rr"})
}

const handMadeTable = "-A -f 7 -s rr\n" +
	"-A -u 198.51.100.1:53 -s wlc\n-a -u 198.51.100.1:53 -r 10.9.9.9:53 -m -w 3"

const webTable = "-A -t 192.0.2.10:80 -s rr\n" +
	"-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1\n" +
	"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1"

func newTestDatapath(t *testing.T, k *fakeIPVS, state string) *Datapath {
	t.Helper()
	d, err := New(k, Options{Modules: &fakeModules{}, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestApply(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kernel func(*fakeIPVS)   // the table before halb starts
		first  []service.Service // applied first
		then   func(*fakeIPVS)   // what happens to the table next
		apply  []service.Service // applied second
		calls  []string          // the changes the second Apply makes
		table  string            // the table after it
	}{
		{
			name:  "add from empty",
			apply: []service.Service{web},
			calls: []string{
				"-A -t 192.0.2.10:80 -s rr",
				"-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1",
				"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1",
			},
			table: webTable,
		},
		{
			name:  "nothing changed",
			first: []service.Service{web, api},
			apply: []service.Service{web, api},
			table: "-A -t 192.0.2.10:80 -s rr\n" +
				"-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1\n" +
				"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1\n" +
				"-A -t 192.0.2.11:443 -s mh\n" +
				"-a -t 192.0.2.11:443 -r 10.0.1.1:8443 -m -w 1",
		},
		{
			name:  "scheduler changed",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Scheduler = "wrr" })},
			calls: []string{"-E -t 192.0.2.10:80 -s wrr"},
			table: strings.Replace(webTable, "-s rr", "-s wrr", 1),
		},
		{
			name:  "persistence on",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Persistence = 5 * time.Minute })},
			calls: []string{"-E -t 192.0.2.10:80 -s rr -p 300"},
			table: strings.Replace(webTable, "-s rr", "-s rr -p 300", 1),
		},
		{
			name:  "persistence off",
			first: []service.Service{with(web, func(s *service.Service) { s.Persistence = 5 * time.Minute })},
			apply: []service.Service{web},
			calls: []string{"-E -t 192.0.2.10:80 -s rr"},
			table: webTable,
		},
		{
			name:  "weights changed",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends[1].Weight = 5 })},
			calls: []string{"-e -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 5"},
			table: strings.Replace(webTable, "10.0.0.2:80 -g -w 1", "10.0.0.2:80 -g -w 5", 1),
		},
		{
			name:  "drain keeps the backend at weight 0",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends[0].Weight = 0 })},
			calls: []string{"-e -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 0"},
			table: strings.Replace(webTable, "10.0.0.1:80 -g -w 1", "10.0.0.1:80 -g -w 0", 1),
		},
		{
			name:  "backend removed",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends = s.Backends[:1] })},
			calls: []string{"-d -t 192.0.2.10:80 -r 10.0.0.2:80"},
			table: "-A -t 192.0.2.10:80 -s rr\n-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1",
		},
		{
			name:  "backend added",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends = append(s.Backends, be("10.0.0.3:80", 2)) })},
			calls: []string{"-a -t 192.0.2.10:80 -r 10.0.0.3:80 -g -w 2"},
			table: webTable + "\n-a -t 192.0.2.10:80 -r 10.0.0.3:80 -g -w 2",
		},
		{
			name:  "forward method changed",
			first: []service.Service{web},
			apply: []service.Service{with(web, func(s *service.Service) { s.Forward = service.TUN })},
			calls: []string{
				"-e -t 192.0.2.10:80 -r 10.0.0.1:80 -i -w 1",
				"-e -t 192.0.2.10:80 -r 10.0.0.2:80 -i -w 1",
			},
			table: strings.ReplaceAll(webTable, "-g", "-i"),
		},
		{
			name:  "service halb owned removed",
			first: []service.Service{web, api},
			apply: []service.Service{web},
			calls: []string{"-D -t 192.0.2.11:443"},
			table: webTable,
		},
		{
			name:  "every service removed",
			first: []service.Service{web, api},
			apply: nil,
			calls: []string{"-D -t 192.0.2.10:80", "-D -t 192.0.2.11:443"},
		},
		{
			name:   "foreign services untouched",
			kernel: handMade,
			first:  []service.Service{web},
			apply:  nil,
			calls:  []string{"-D -t 192.0.2.10:80"},
			table:  handMadeTable,
		},
		{
			name:   "foreign services untouched while adding",
			kernel: handMade,
			apply:  []service.Service{web},
			calls: []string{
				"-A -t 192.0.2.10:80 -s rr",
				"-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1",
				"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1",
			},
			table: handMadeTable + "\n" + webTable,
		},
		{
			name:  "re-apply after ipvsadm -C",
			first: []service.Service{web},
			then:  (*fakeIPVS).flush,
			apply: []service.Service{web},
			calls: []string{
				"-A -t 192.0.2.10:80 -s rr",
				"-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1",
				"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1",
			},
			table: webTable,
		},
		{
			name:  "backend removed by hand is put back",
			first: []service.Service{web},
			then: func(k *fakeIPVS) {
				k.services[0].dests = k.services[0].dests[:1]
			},
			apply: []service.Service{web},
			calls: []string{"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1"},
			table: webTable,
		},
		{
			name:  "backend added by hand to a service of halb's is removed",
			first: []service.Service{web},
			then: func(k *fakeIPVS) {
				k.services[0].dests = append(k.services[0].dests, cfipvs.Destination{
					Address: netip.MustParseAddr("10.0.0.99"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1})
			},
			apply: []service.Service{web},
			calls: []string{"-d -t 192.0.2.10:80 -r 10.0.0.99:80"},
			table: webTable,
		},
		{
			name: "hand-made service with a configured key is taken over",
			kernel: func(k *fakeIPVS) {
				k.add(cfipvs.Service{Address: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET, Scheduler: "wlc", Flags: cfipvs.ServicePersistent, Timeout: 60},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.1"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.Masquerade, Weight: 7},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.9"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1})
			},
			apply: []service.Service{web},
			calls: []string{
				"-E -t 192.0.2.10:80 -s rr",
				"-e -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1",
				"-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1",
				"-d -t 192.0.2.10:80 -r 10.0.0.9:80",
			},
			table: webTable,
		},
		{
			name: "thresholds set by hand are cleared",
			kernel: func(k *fakeIPVS) {
				k.add(cfipvs.Service{Address: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET, Scheduler: "rr"},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.1"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1, UpperThreshold: 100},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.2"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1})
			},
			apply: []service.Service{web},
			calls: []string{"-e -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1"},
			table: webTable,
		},
		{
			name: "destination the kernel made local is left alone",
			kernel: func(k *fakeIPVS) {
				k.add(cfipvs.Service{Address: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET, Scheduler: "rr"},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.1"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.Local, Weight: 1},
					cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.2"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1})
			},
			apply: []service.Service{web},
			table: strings.Replace(webTable, "10.0.0.1:80 -g", "10.0.0.1:80 local", 1),
		},
		{
			name:  "IPv6",
			apply: []service.Service{v6},
			calls: []string{
				"-A -t [2001:db8::10]:443 -s mh",
				"-a -t [2001:db8::10]:443 -r [2001:db8:1::1]:443 -g -w 1",
				"-a -t [2001:db8::10]:443 -r [2001:db8:1::2]:443 -g -w 2",
			},
			table: "-A -t [2001:db8::10]:443 -s mh\n" +
				"-a -t [2001:db8::10]:443 -r [2001:db8:1::1]:443 -g -w 1\n" +
				"-a -t [2001:db8::10]:443 -r [2001:db8:1::2]:443 -g -w 2",
		},
		{
			name: "forward methods map to IPVS's",
			apply: []service.Service{
				svc("dr", "192.0.2.20:80", service.TCP, "rr", service.DR, be("10.0.0.1:80", 1)),
				svc("tun", "192.0.2.21:80", service.TCP, "rr", service.TUN, be("10.0.0.1:80", 1)),
				svc("nat", "192.0.2.22:80", service.TCP, "rr", service.NAT, be("10.0.0.1:8080", 1)),
				svc("tun46", "192.0.2.23:80", service.TCP, "rr", service.TUN, be("[2001:db8:1::1]:80", 1)),
			},
			calls: []string{
				"-A -t 192.0.2.20:80 -s rr",
				"-A -t 192.0.2.21:80 -s rr",
				"-A -t 192.0.2.22:80 -s rr",
				"-A -t 192.0.2.23:80 -s rr",
				"-a -t 192.0.2.20:80 -r 10.0.0.1:80 -g -w 1",
				"-a -t 192.0.2.21:80 -r 10.0.0.1:80 -i -w 1",
				"-a -t 192.0.2.22:80 -r 10.0.0.1:8080 -m -w 1",
				"-a -t 192.0.2.23:80 -r [2001:db8:1::1]:80 -i -w 1",
			},
			table: "-A -t 192.0.2.20:80 -s rr\n-a -t 192.0.2.20:80 -r 10.0.0.1:80 -g -w 1\n" +
				"-A -t 192.0.2.21:80 -s rr\n-a -t 192.0.2.21:80 -r 10.0.0.1:80 -i -w 1\n" +
				"-A -t 192.0.2.22:80 -s rr\n-a -t 192.0.2.22:80 -r 10.0.0.1:8080 -m -w 1\n" +
				"-A -t 192.0.2.23:80 -s rr\n-a -t 192.0.2.23:80 -r [2001:db8:1::1]:80 -i -w 1",
		},
		{
			name:  "UDP",
			apply: []service.Service{dns},
			calls: []string{
				"-A -u 192.0.2.53:53 -s sh",
				"-a -u 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1",
				"-a -u 192.0.2.53:53 -r 10.0.2.2:53 -g -w 1",
			},
			table: "-A -u 192.0.2.53:53 -s sh\n" +
				"-a -u 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1\n" +
				"-a -u 192.0.2.53:53 -r 10.0.2.2:53 -g -w 1",
		},
		{
			name: "TCP and UDP on one address and port are two services",
			apply: []service.Service{
				svc("dns-tcp", "192.0.2.53:53", service.TCP, "rr", service.DR, be("10.0.2.1:53", 1)),
				svc("dns-udp", "192.0.2.53:53", service.UDP, "rr", service.DR, be("10.0.2.1:53", 1)),
			},
			calls: []string{
				"-A -t 192.0.2.53:53 -s rr",
				"-A -u 192.0.2.53:53 -s rr",
				"-a -t 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1",
				"-a -u 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1",
			},
			table: "-A -t 192.0.2.53:53 -s rr\n-a -t 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1\n" +
				"-A -u 192.0.2.53:53 -s rr\n-a -u 192.0.2.53:53 -r 10.0.2.1:53 -g -w 1",
		},
		{
			name:  "service without backends",
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends = nil })},
			calls: []string{"-A -t 192.0.2.10:80 -s rr"},
			table: "-A -t 192.0.2.10:80 -s rr",
		},
		{
			name:  "persistence rounds up to whole seconds",
			apply: []service.Service{with(web, func(s *service.Service) { s.Backends = nil; s.Persistence = 1500 * time.Millisecond })},
			calls: []string{"-A -t 192.0.2.10:80 -s rr -p 2"},
			table: "-A -t 192.0.2.10:80 -s rr -p 2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &fakeIPVS{}
			if tc.kernel != nil {
				tc.kernel(k)
			}
			d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
			ctx := context.Background()
			if tc.first != nil {
				if err := d.Apply(ctx, tc.first); err != nil {
					t.Fatalf("first Apply: %v", err)
				}
			}
			if tc.then != nil {
				tc.then(k)
			}
			k.calls = nil
			if err := d.Apply(ctx, tc.apply); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !slices.Equal(k.calls, tc.calls) {
				t.Errorf("Apply made these changes:\n%s\nwant:\n%s", lines(k.calls), lines(tc.calls))
			}
			if got := k.table(); got != sortedTable(tc.table) {
				t.Errorf("table after Apply:\n%s\nwant:\n%s", got, sortedTable(tc.table))
			}

			// Idempotence: the same services again change nothing.
			k.calls, k.reads = nil, 0
			if err := d.Apply(ctx, tc.apply); err != nil {
				t.Fatalf("Apply again: %v", err)
			}
			if len(k.calls) != 0 {
				t.Errorf("Apply again made changes:\n%s", lines(k.calls))
			}
		})
	}
}

func lines(s []string) string {
	if len(s) == 0 {
		return "  (none)"
	}
	return "  " + strings.Join(s, "\n  ")
}

// sortedTable sorts a table written by hand the way fakeIPVS.table does:
// blocks of a service and its destinations, sorted.
func sortedTable(s string) string {
	if s == "" {
		return ""
	}
	var blocks []string
	var cur []string
	flush := func() {
		if cur != nil {
			slices.Sort(cur[1:])
			blocks = append(blocks, strings.Join(cur, "\n"))
		}
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "-A ") {
			flush()
			cur = []string{l}
			continue
		}
		cur = append(cur, l)
	}
	flush()
	slices.Sort(blocks)
	return strings.Join(blocks, "\n")
}

func TestApplyMissingSchedulerModule(t *testing.T) {
	k := &fakeIPVS{}
	mods := &fakeModules{missing: map[string]error{
		"ip_vs_wlc": &kmod.Error{Module: "ip_vs_wlc", Release: "6.1.0-18-amd64", Step: kmod.StepFind, Path: "/lib/modules/6.1.0-18-amd64/modules.dep",
			Err: errors.Join(errors.New("not listed"), kmod.ErrNotShipped), Fix: "install this kernel's modules"},
	}}
	state := filepath.Join(t.TempDir(), "ipvs-services")
	d, err := New(k, Options{Modules: mods, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Apply(context.Background(), []service.Service{web, with(api, func(s *service.Service) { s.Scheduler = "wlc" })})
	if !errors.Is(err, ErrSchedulerMissing) || !errors.Is(err, kmod.ErrNotShipped) {
		t.Fatalf("Apply = %v, want ErrSchedulerMissing and kmod.ErrNotShipped", err)
	}
	for _, s := range []string{"ip_vs_wlc", "api (192.0.2.11:443/tcp)", "nothing changed", "install this kernel's modules"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Apply error %q does not say %q", err, s)
		}
	}
	var se *SchedulerError
	if !errors.As(err, &se) || se.Scheduler != "wlc" {
		t.Errorf("Apply error %v: want a *SchedulerError for wlc", err)
	}
	// The modules are loaded before IPVS is asked anything.
	if k.reads != 0 || len(k.calls) != 0 {
		t.Errorf("Apply read the table %d times and made %q; want nothing before the modules are there", k.reads, k.calls)
	}
	if want := []string{"ip_vs", "ip_vs_rr", "ip_vs_wlc"}; !slices.Equal(mods.ensured, want) {
		t.Errorf("modules ensured: %q, want %q", mods.ensured, want)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file written (%v); want nothing changed", err)
	}
}

func TestApplyMissingIPVSModule(t *testing.T) {
	k := &fakeIPVS{}
	mods := &fakeModules{missing: map[string]error{
		"ip_vs": &kmod.Error{Module: "ip_vs", Step: kmod.StepRun, Path: "/sbin/modprobe", Err: kmod.ErrNoPermission, Fix: "run halb as root"},
	}}
	d, err := New(k, Options{Modules: mods, StateFile: filepath.Join(t.TempDir(), "s")})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Apply(context.Background(), []service.Service{web})
	if !errors.Is(err, kmod.ErrNoPermission) || !strings.Contains(err.Error(), "ip_vs") || errors.Is(err, ErrSchedulerMissing) {
		t.Errorf("Apply = %v, want kmod.ErrNoPermission naming ip_vs", err)
	}
	if k.reads != 0 {
		t.Errorf("Apply read the table without ip_vs")
	}
}

// The scheduler module goes away between the module check and the change
// (someone ran rmmod): the kernel answers ENOENT, and Apply undoes what it
// did in that pass.
func TestApplySchedulerMissingInKernel(t *testing.T) {
	k := &fakeIPVS{}
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
	ctx := context.Background()
	if err := d.Apply(ctx, []service.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	before := k.table()
	k.missing = map[string]bool{"wlc": true}
	k.calls = nil

	err := d.Apply(ctx, []service.Service{
		with(web, func(s *service.Service) { s.Scheduler = "wrr"; s.Backends[0].Weight = 9 }),
		v6,
		with(api, func(s *service.Service) { s.Scheduler = "wlc" }),
	})
	if !errors.Is(err, ErrSchedulerMissing) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Apply = %v, want ErrSchedulerMissing from ENOENT", err)
	}
	for _, s := range []string{"ip_vs_wlc", "modprobe ip_vs_wlc", "api (192.0.2.11:443/tcp)", "nothing changed"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Apply error %q does not say %q", err, s)
		}
	}
	if got := k.table(); got != before {
		t.Errorf("table changed:\n%s\nwant, as before:\n%s", got, before)
	}
	want := []string{
		"-E -t 192.0.2.10:80 -s wrr",
		"-A -t [2001:db8::10]:443 -s mh",
		"-A -t 192.0.2.11:443 -s wlc",
		"-D -t [2001:db8::10]:443", // undone, newest first
		"-E -t 192.0.2.10:80 -s rr",
	}
	if !slices.Equal(k.calls, want) {
		t.Errorf("calls:\n%s\nwant:\n%s", lines(k.calls), lines(want))
	}
}

func TestApplyRejectsBadServices(t *testing.T) {
	k := &fakeIPVS{}
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
	err := d.Apply(context.Background(), []service.Service{
		web,
		with(web, func(s *service.Service) { s.Name = "web-again" }),
		svc("mixed", "192.0.2.30:80", service.TCP, "rr", service.DR, be("[2001:db8:1::1]:80", 1)),
		svc("heavy", "192.0.2.31:80", service.TCP, "rr", service.NAT, be("10.0.0.1:80", 1<<31)),
		svc("twice", "192.0.2.32:80", service.TCP, "rr", service.NAT, be("10.0.0.1:80", 1), be("10.0.0.1:80", 2)),
		svc("typo", "192.0.2.33:80", service.TCP, "roundrobin", service.DR),
		svc("sctp", "192.0.2.34:80", service.Protocol(132), "rr", service.DR),
		with(web, func(s *service.Service) { s.Name = "forever"; s.Key.Port = 81; s.Persistence = 100 * 24 * time.Hour }),
		svc("zoned", "[fe80::1%eth0]:80", service.TCP, "rr", service.DR),
	})
	for _, s := range []string{
		"service web-again (192.0.2.10:80/tcp): 192.0.2.10:80/tcp is also service web",
		"service mixed (192.0.2.30:80/tcp): backend [2001:db8:1::1]:80 is not of the VIP's address family",
		"service heavy (192.0.2.31:80/tcp): backend 10.0.0.1:80: weight 2147483648",
		"service twice (192.0.2.32:80/tcp): backend 10.0.0.1:80 is listed twice",
		`service typo (192.0.2.33:80/tcp): scheduler "roundrobin"`,
		"service sctp (192.0.2.34:80/proto(132)): protocol proto(132)",
		"service forever (192.0.2.10:81/tcp): persistence 2400h0m0s is longer than IPVS keeps",
		"service zoned ([fe80::1%eth0]:80/tcp): VIP fe80::1%eth0 has a zone",
	} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Apply error %v\ndoes not say %q", err, s)
		}
	}
	if k.reads != 0 || len(k.calls) != 0 {
		t.Errorf("Apply touched the table for services it rejected: %q", k.calls)
	}
}

// A restarted halb removes what it made and what left its configuration
// while it was down, and leaves alone what someone made by hand.
func TestRestart(t *testing.T) {
	k := &fakeIPVS{}
	state := filepath.Join(t.TempDir(), "ipvs-services")
	ctx := context.Background()
	d1, err := New(k, Options{Modules: &fakeModules{}, StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Apply(ctx, []service.Service{web, api, dns}); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	handMade(k)

	d2 := newTestDatapath(t, k, state)
	k.calls = nil
	if err := d2.Apply(ctx, []service.Service{web}); err != nil {
		t.Fatal(err)
	}
	want := []string{"-D -t 192.0.2.11:443", "-D -u 192.0.2.53:53"}
	if !slices.Equal(k.calls, want) {
		t.Errorf("calls:\n%s\nwant:\n%s", lines(k.calls), lines(want))
	}
	if got, want := k.table(), sortedTable(handMadeTable+"\n"+webTable); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(keyLines(string(data)), " "); got != "192.0.2.10:80/tcp" {
		t.Errorf("state file lists %q, want only web's key", got)
	}
}

// Without its state file a restarted halb cannot know what it made before:
// it leaves those services alone rather than guess.
func TestRestartWithoutStateFile(t *testing.T) {
	k := &fakeIPVS{}
	state := filepath.Join(t.TempDir(), "ipvs-services")
	ctx := context.Background()
	d1 := newTestDatapath(t, k, state)
	if err := d1.Apply(ctx, []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}
	d1.Close()
	if err := os.Remove(state); err != nil {
		t.Fatal(err)
	}
	d2 := newTestDatapath(t, k, state)
	k.calls = nil
	if err := d2.Apply(ctx, []service.Service{web}); err != nil {
		t.Fatal(err)
	}
	if len(k.calls) != 0 {
		t.Errorf("Apply made changes without knowing what it owns: %q", k.calls)
	}
}

// The state file lists a service before the service is created, so that a
// halb that dies in between still knows it.
func TestStateWrittenBeforeChanges(t *testing.T) {
	k := &fakeIPVS{}
	state := filepath.Join(t.TempDir(), "ipvs-services")
	d := newTestDatapath(t, k, state)
	k.beforeChange = func(call string) {
		data, _ := os.ReadFile(state)
		if strings.HasPrefix(call, "-A -t 192.0.2.11:443") && !slices.Contains(keyLines(string(data)), "192.0.2.11:443/tcp") {
			t.Errorf("%q before the state file lists the service; it has:\n%s", call, data)
		}
	}
	if err := d.Apply(context.Background(), []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}

	// Nothing changed, nothing written: the file is the same one.
	before, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(context.Background(), []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("Apply rewrote the state file with nothing changed")
	}
}

// A service whose removal fails stays in the state file, so the next Apply,
// or the next halb, removes it.
func TestRemoveFailureKeepsOwnership(t *testing.T) {
	k := &fakeIPVS{}
	state := filepath.Join(t.TempDir(), "ipvs-services")
	d := newTestDatapath(t, k, state)
	ctx := context.Background()
	if err := d.Apply(ctx, []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}
	k.fail = map[string]error{"-D": kernelErr(syscall.EBUSY)}
	err := d.Apply(ctx, []service.Service{web})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "192.0.2.11:443/tcp") {
		t.Fatalf("Apply = %v, want EBUSY naming api's key", err)
	}
	data, _ := os.ReadFile(state)
	if !slices.Contains(keyLines(string(data)), "192.0.2.11:443/tcp") {
		t.Errorf("state file dropped a service still in the kernel:\n%s", data)
	}
	k.fail = nil
	k.calls = nil
	d2 := newTestDatapath(t, k, state)
	if err := d2.Apply(ctx, []service.Service{web}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"-D -t 192.0.2.11:443"}; !slices.Equal(k.calls, want) {
		t.Errorf("calls %q, want %q", k.calls, want)
	}
}

// One backend the kernel refuses does not stop the others.
func TestApplyCarriesOnAfterAFailure(t *testing.T) {
	k := &fakeIPVS{fail: map[string]error{"-a": kernelErr(syscall.ENOMEM)}}
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
	err := d.Apply(context.Background(), []service.Service{web, dns})
	if !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("Apply = %v, want ENOMEM", err)
	}
	for _, s := range []string{"add backend 10.0.0.1:80 to IPVS service web", "add backend 10.0.2.2:53 to IPVS service dns"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Apply error %q does not say %q", err, s)
		}
	}
	if got, want := k.table(), "-A -t 192.0.2.10:80 -s rr\n-A -u 192.0.2.53:53 -s sh"; got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	// The next pass finishes the job.
	k.fail, k.calls = nil, nil
	if err := d.Apply(context.Background(), []service.Service{web, dns}); err != nil {
		t.Fatal(err)
	}
	if len(k.calls) != 4 {
		t.Errorf("second Apply made %q, want the four backends", k.calls)
	}
}

func TestApplyListErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"family gone", kernelErr(syscall.ENOENT), ErrFamilyMissing},
		{"other", kernelErr(syscall.EPERM), syscall.EPERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &fakeIPVS{listErr: tc.err}
			d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "ipvs-services"))
			err := d.Apply(context.Background(), []service.Service{web})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "list IPVS services") {
				t.Errorf("Apply = %v, want %v", err, tc.want)
			}
			if errors.Is(err, ErrEmptyTable) || len(k.calls) != 0 {
				t.Errorf("Apply = %v with changes %q; want a failure before any change", err, k.calls)
			}
		})
	}
}

func TestApplyAfterClose(t *testing.T) {
	d := newTestDatapath(t, &fakeIPVS{}, filepath.Join(t.TempDir(), "s"))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(context.Background(), nil); !errors.Is(err, service.ErrClosed) {
		t.Errorf("Apply after Close: %v, want ErrClosed", err)
	}
	if d.Name() != "ipvs" {
		t.Errorf("Name() = %q", d.Name())
	}
}

func TestApplyCancelled(t *testing.T) {
	k := &fakeIPVS{}
	d := newTestDatapath(t, k, filepath.Join(t.TempDir(), "s"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := d.Apply(ctx, []service.Service{web})
	if !errors.Is(err, context.Canceled) || len(k.calls) != 0 {
		t.Errorf("Apply = %v with changes %q, want context.Canceled and none", err, k.calls)
	}
}

// keyLines returns the keys a state file lists.
func keyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// Taking over a service someone made is logged, once.
func TestTakeOverLogged(t *testing.T) {
	k := &fakeIPVS{}
	k.add(cfipvs.Service{Address: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET, Scheduler: "wlc"})
	var logs strings.Builder
	d, err := New(k, Options{Modules: &fakeModules{}, StateFile: filepath.Join(t.TempDir(), "s"), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.Apply(context.Background(), []service.Service{web}); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "existed before halb took it over"); n != 1 {
		t.Errorf("take-over logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `service="web (192.0.2.10:80/tcp)" scheduler=wlc`) {
		t.Errorf("take-over log does not name the service and what it was:\n%s", logs.String())
	}
}

// Cleanup (halb run --cleanup) removes what halb made and nothing else.
func TestCleanup(t *testing.T) {
	k := &fakeIPVS{}
	handMade(k)
	d, err := New(k, Options{Modules: &fakeModules{}, StateFile: filepath.Join(t.TempDir(), "ipvs-services")})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(context.Background(), []service.Service{web, api}); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got, want := k.table(), sortedTable(handMadeTable); got != want {
		t.Errorf("table after cleanup:\n%s\nwant only the hand-made services:\n%s", got, want)
	}
}
