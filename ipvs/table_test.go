package ipvs

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/service"
)

// A resync that finds the table as the last pass left it reads it once,
// whole, and nothing else: no netlink listing (one of the services and one
// per service before), no module check, no change.
func TestResyncReadsOnce(t *testing.T) {
	k := &fakeIPVS{}
	mods := &fakeModules{}
	d, err := New(k, Options{Modules: mods, StateFile: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	all := []service.Service{web, api, dns, v6}
	if err := d.Apply(ctx, all); err != nil {
		t.Fatal(err)
	}
	if k.reads == 0 {
		t.Fatal("the first Apply listed nothing over netlink")
	}
	for range 3 {
		k.reads, k.tableReads, k.calls, mods.ensured = 0, 0, nil, nil
		if err := d.Apply(ctx, all); err != nil {
			t.Fatal(err)
		}
		if k.reads != 0 || k.tableReads != 1 || len(k.calls) != 0 || len(mods.ensured) != 0 {
			t.Fatalf("a resync with nothing changed: %d netlink listings, %d table reads, changes %q, modules %q; want 0, 1, none, none",
				k.reads, k.tableReads, k.calls, mods.ensured)
		}
	}
}

// What the one read shows differing from what halb wrote sends the pass
// the long way, which reads the services and their destinations and puts
// back what halb owns.
func TestResyncFindsDrift(t *testing.T) {
	webVIP := cfipvs.Service{Address: netip.MustParseAddr("192.0.2.10"), Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET}
	for _, c := range []struct {
		name  string
		drift func(*fakeIPVS)
		calls string
	}{
		{"flushed", (*fakeIPVS).flush, "-A -t 192.0.2.10:80 -s rr\n-a -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1\n-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1"},
		{"backend removed", func(k *fakeIPVS) {
			_ = k.RemoveDestination(webVIP, cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.2"), Port: 80})
		}, "-a -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1"},
		{"weight changed", func(k *fakeIPVS) {
			k.find(webVIP).dests[0].Weight = 7
		}, "-e -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1"},
		{"method changed", func(k *fakeIPVS) {
			k.find(webVIP).dests[1].FwdMethod = cfipvs.Masquerade
		}, "-e -t 192.0.2.10:80 -r 10.0.0.2:80 -g -w 1"},
		{"scheduler changed", func(k *fakeIPVS) {
			k.find(webVIP).svc.Scheduler = "wlc"
		}, "-E -t 192.0.2.10:80 -s rr"},
		{"backend added", func(k *fakeIPVS) {
			f := k.find(webVIP)
			f.dests = append(f.dests, cfipvs.Destination{Address: netip.MustParseAddr("10.0.0.9"), Port: 80, Family: cfipvs.INET, FwdMethod: cfipvs.DirectRoute, Weight: 1})
		}, "-d -t 192.0.2.10:80 -r 10.0.0.9:80"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := &fakeIPVS{}
			d := newTestDatapath(t, k, t.TempDir()+"/state")
			ctx := context.Background()
			if err := d.Apply(ctx, []service.Service{web}); err != nil {
				t.Fatal(err)
			}
			c.drift(k)
			k.reads, k.calls = 0, nil
			if err := d.Apply(ctx, []service.Service{web}); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(k.calls, "\n"); got != c.calls {
				t.Errorf("changes:\n%s\nwant:\n%s", got, c.calls)
			}
			if k.reads == 0 {
				t.Error("the drift was mended without listing the table over netlink")
			}
			if got := k.table(); got != sortedTable(webTable) {
				t.Errorf("table:\n%s\nwant:\n%s", got, sortedTable(webTable))
			}
		})
	}
}

// A persistence timeout changed by hand shows in the one read only in
// jiffies, which halb cannot turn into seconds: the read right after the
// last pass is what the resync compares it with.
func TestResyncFindsTimeoutDrift(t *testing.T) {
	sticky := with(web, func(s *service.Service) { s.Persistence = 300 * time.Second })
	k := &fakeIPVS{}
	d := newTestDatapath(t, k, t.TempDir()+"/state")
	ctx := context.Background()
	if err := d.Apply(ctx, []service.Service{sticky}); err != nil {
		t.Fatal(err)
	}
	k.find(cfipvs.Service{Address: sticky.Key.VIP, Port: 80, Protocol: cfipvs.TCP, Family: cfipvs.INET}).svc.Timeout = 100
	k.reads, k.calls = 0, nil
	if err := d.Apply(ctx, []service.Service{sticky}); err != nil {
		t.Fatal(err)
	}
	if want := "-E -t 192.0.2.10:80 -s rr -p 300"; k.reads == 0 || strings.Join(k.calls, "\n") != want {
		t.Errorf("after the timeout was changed to 100 s: %d listings, changes %q; want the long way and %q", k.reads, k.calls, want)
	}
}

// misreading is a kernel whose table, read whole, lacks a destination that
// is there: a parser that gets some kernel's text wrong.
type misreading struct{ *fakeIPVS }

func (m misreading) Table() (map[service.Key]*current, error) {
	have, err := m.fakeIPVS.Table()
	for _, c := range have {
		c.dests = c.dests[1:]
	}
	return have, err
}

// A table that does not read whole as the pass just wrote it is not
// trusted: every resync takes the long way, which is right though slower,
// and the daemon says so.
func TestSettleDistrustsMisreading(t *testing.T) {
	k := &fakeIPVS{}
	var log strings.Builder
	d, err := New(misreading{k}, Options{Modules: &fakeModules{}, StateFile: t.TempDir() + "/state",
		Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 2 {
		k.reads = 0
		if err := d.Apply(ctx, []service.Service{web}); err != nil {
			t.Fatal(err)
		}
		if k.reads == 0 {
			t.Fatal("a resync trusted a table that did not read as written")
		}
	}
	if !strings.Contains(log.String(), "does not show what was just written") {
		t.Errorf("nothing logged of the misreading:\n%s", log.String())
	}
}

// A pass that failed is not taken as written: the next one reads the long
// way, though nothing was asked of it that the failed one was not, and
// mends what failed.
func TestResyncAfterFailure(t *testing.T) {
	k := &fakeIPVS{fail: map[string]error{"-a": errors.New("netlink receive: cannot allocate memory")}}
	d := newTestDatapath(t, k, t.TempDir()+"/state")
	ctx := context.Background()
	if err := d.Apply(ctx, []service.Service{web}); err == nil {
		t.Fatal("the first Apply did not fail")
	}
	k.fail = nil
	k.reads, k.calls = 0, nil
	if err := d.Apply(ctx, []service.Service{web}); err != nil {
		t.Fatal(err)
	}
	if k.reads == 0 || len(k.calls) != 2 {
		t.Errorf("after a failed pass: %d listings, changes %q; want the long way and the two backends added", k.reads, k.calls)
	}
	// A table that cannot be read whole also goes the long way.
	k.listErr = syscall.EIO
	k.reads = 0
	if err := d.Apply(ctx, []service.Service{web}); err == nil || k.reads != 1 {
		t.Errorf("with the table unreadable: err %v after %d listings; want the netlink listing's error", err, k.reads)
	}
}

// /proc/net/ip_vs as the kernel writes it (ip_vs_info_seq_show).
const procSample = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C000020A:0050 rr 
  -> 0A000001:0050      Route   1      0          0         
  -> 0A000002:0050      Local   3      12         40        
UDP  C0000235:0035 sh persistent 300 FFFFFFFF
  -> 0A000201:0035      Masq    0      0          0         
FWM  00000007 rr 
  -> 0A090909:0000      Route   1      0          0         
TCP  [2001:0db8:0000:0000:0000:0000:0000:0010]:01BB mh 
  -> [2001:0db8:0001:0000:0000:0000:0000:0001]:01BB Tunnel  2      0          0         
`

func TestParseProcTable(t *testing.T) {
	have, err := parseProcTable(strings.NewReader(procSample))
	if err != nil {
		t.Fatal(err)
	}
	got := procLines(have)
	want := []string{
		"192.0.2.10:80/tcp rr -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1 -t 192.0.2.10:80 -r 10.0.0.2:80 local -w 3",
		"192.0.2.53:53/udp sh persistent -u 192.0.2.53:53 -r 10.0.2.1:53 -m -w 0",
		"[2001:db8::10]:443/tcp mh -t [2001:db8::10]:443 -r [2001:db8:1::1]:443 -i -w 2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("parsed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, bad := range []string{
		"TCP  C000020A:0050\n", // no scheduler
		"TCP  C000020A:0050 rr\n  -> 0A000001:0050 Bypass 1 0 0\n", // unknown method
		"TCP  192.0.2.10:80 rr\n",                                  // not hex
		"ICMP  C000020A:0050 rr\n",                                 // unknown protocol
		"TCP  C000020A:0050 rr\n  -> 0A000001:0050 Route x 0 0\n",  // weight
	} {
		if _, err := parseProcTable(strings.NewReader(bad)); err == nil {
			t.Errorf("parsed %q without an error", bad)
		}
	}
}

// procLines is a parsed table, a service a line with its destinations as
// ipvsadm arguments, sorted.
func procLines(have map[service.Key]*current) []string {
	var got []string
	for k, c := range have {
		line := k.String() + " " + c.svc.Scheduler
		if c.svc.Flags&cfipvs.ServicePersistent != 0 {
			line += " persistent"
		}
		for _, d := range c.dests {
			line += " " + destArgs(c.svc, d)
		}
		got = append(got, line)
	}
	slices.Sort(got)
	return got
}

// shapes are the services of test/vm/halb-ipvs-shapes.yaml, one of each
// shape /proc/net/ip_vs shows differently.
var shapes = []service.Service{
	svc("web4", "192.0.2.10:80", service.TCP, "wrr", service.NAT, be("198.51.100.10:8080", 3), be("198.51.100.14:8080", 0)),
	with(svc("dns4", "192.0.2.11:53", service.UDP, "sh", service.DR, be("198.51.100.21:53", 1), be("198.51.100.22:53", 65535)),
		func(s *service.Service) { s.Persistence = 300 * time.Second }),
	svc("tun4", "192.0.2.12:8443", service.TCP, "lc", service.TUN, be("198.51.100.30:8443", 2), be("198.51.100.31:8443", 5)),
	with(svc("web6", "[2001:db8::10]:443", service.TCP, "mh", service.TUN, be("[2001:db8:1::11]:443", 1), be("[2001:db8:1::12]:443", 0)),
		func(s *service.Service) { s.Persistence = time.Minute }),
	svc("dns6", "[2001:db8::11]:53", service.UDP, "rr", service.NAT, be("[2001:db8:2::21]:5353", 1)),
	svc("dr6", "[2001:db8:0:0:1::12]:80", service.TCP, "wlc", service.DR, be("[2001:db8::ab:cdef]:80", 7)),
}

// procShapes is /proc/net/ip_vs as Debian 12's kernel (6.1.0-57-amd64,
// HZ=250) wrote it with shapes programmed by halb, captured in the VM test
// (scenario halb-ipvs-table). What it shows that a reading of the kernel's
// source could miss: two blanks after an IPv4 service's scheduler (the
// empty "ops " flag), one after an IPv6 one's, the persistence timeout in
// jiffies (75000 for 300 s), an IPv6 service's netmask as its prefix length
// in the top byte (80000000), destinations newest first.
const procShapes = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
UDP  [2001:0db8:0000:0000:0000:0000:0000:0011]:0035 rr 
  -> [2001:0db8:0002:0000:0000:0000:0000:0021]:14E9      Masq    1      0          0         
TCP  [2001:0db8:0000:0000:0001:0000:0000:0012]:0050 wlc 
  -> [2001:0db8:0000:0000:0000:0000:00ab:cdef]:0050      Route   7      0          0         
TCP  C000020C:20FB lc  
  -> C633641F:20FB      Tunnel  5      0          0         
  -> C633641E:20FB      Tunnel  2      0          0         
UDP  C000020B:0035 sh  persistent 75000 FFFFFFFF
  -> C6336416:0035      Route   65535  0          0         
  -> C6336415:0035      Route   1      0          0         
TCP  [2001:0db8:0000:0000:0000:0000:0000:0010]:01BB mh persistent 15000 80000000
  -> [2001:0db8:0001:0000:0000:0000:0000:0012]:01BB      Tunnel  0      0          0         
  -> [2001:0db8:0001:0000:0000:0000:0000:0011]:01BB      Tunnel  1      0          0         
TCP  C000020A:0050 wrr  
  -> C633640E:1F90      Masq    0      0          0         
  -> C633640A:1F90      Masq    3      0          0         
`

// The real kernel's text reads as the services halb wrote, and a resync
// that read it would find the table as the last pass left it; each change
// the VM scenario makes by hand (and a few more) would send it the long
// way.
func TestParseProcTableFromKernel(t *testing.T) {
	have, err := parseProcTable(strings.NewReader(procShapes))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"192.0.2.10:80/tcp wrr -t 192.0.2.10:80 -r 198.51.100.14:8080 -m -w 0 -t 192.0.2.10:80 -r 198.51.100.10:8080 -m -w 3",
		"192.0.2.11:53/udp sh persistent -u 192.0.2.11:53 -r 198.51.100.22:53 -g -w 65535 -u 192.0.2.11:53 -r 198.51.100.21:53 -g -w 1",
		"192.0.2.12:8443/tcp lc -t 192.0.2.12:8443 -r 198.51.100.31:8443 -i -w 5 -t 192.0.2.12:8443 -r 198.51.100.30:8443 -i -w 2",
		"[2001:db8::10]:443/tcp mh persistent -t [2001:db8::10]:443 -r [2001:db8:1::12]:443 -i -w 0 -t [2001:db8::10]:443 -r [2001:db8:1::11]:443 -i -w 1",
		"[2001:db8::11]:53/udp rr -u [2001:db8::11]:53 -r [2001:db8:2::21]:5353 -m -w 1",
		"[2001:db8::1:0:0:12]:80/tcp wlc -t [2001:db8::1:0:0:12]:80 -r [2001:db8::ab:cdef]:80 -g -w 7",
	}
	if got := procLines(have); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("parsed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	dns4, web6 := service.Key{VIP: netip.MustParseAddr("192.0.2.11"), Port: 53, Proto: service.UDP},
		service.Key{VIP: netip.MustParseAddr("2001:db8::10"), Port: 443, Proto: service.TCP}
	if have[dns4].persist != "75000 FFFFFFFF" || have[web6].persist != "15000 80000000" {
		t.Errorf("persistence read as %q and %q, want %q and %q", have[dns4].persist, have[web6].persist, "75000 FFFFFFFF", "15000 80000000")
	}
	seen := map[service.Key]string{dns4: "75000 FFFFFFFF", web6: "15000 80000000"}

	wrote, err := targets(shapes)
	if err != nil {
		t.Fatal(err)
	}
	owned := keySet{}
	for _, s := range shapes {
		owned[s.Key] = true
	}
	if !holds(have, wrote, owned) || !samePersist(have, seen) {
		t.Fatal("the table halb wrote does not hold what it wrote")
	}
	for _, c := range []struct{ name, from, to string }{
		{"weight (ipvsadm -e)", "C633640A:1F90      Masq    3", "C633640A:1F90      Masq    9"},
		{"IPv6 destination removed (ipvsadm -d)", "  -> [2001:0db8:0002:0000:0000:0000:0000:0021]:14E9      Masq    1      0          0         \n", ""},
		{"persistence off", "sh  persistent 75000 FFFFFFFF", "sh  "},
		{"persistence on", "lc  ", "lc  persistent 75000 FFFFFFFF"},
		{"scheduler", "mh persistent", "sh persistent"},
		{"forwarding method", "C6336415:0035      Route", "C6336415:0035      Masq "},
		{"IPv6 service removed", "TCP  [2001:0db8:0000:0000:0001:0000:0000:0012]:0050 wlc \n" +
			"  -> [2001:0db8:0000:0000:0000:0000:00ab:cdef]:0050      Route   7      0          0         \n", ""},
		{"port", "C633641F:20FB", "C633641F:20FC"},
		{"persistence timeout (ipvsadm -E -p 100)", "persistent 75000", "persistent 25000"},
	} {
		text := strings.Replace(procShapes, c.from, c.to, 1)
		if text == procShapes {
			t.Fatalf("%s: the fixture has no %q", c.name, c.from)
		}
		have, err := parseProcTable(strings.NewReader(text))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if holds(have, wrote, owned) && samePersist(have, seen) {
			t.Errorf("%s: the table read as the last pass left it", c.name)
		}
	}
}
