package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

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
	want := []string{
		"192.0.2.10:80/tcp rr -t 192.0.2.10:80 -r 10.0.0.1:80 -g -w 1 -t 192.0.2.10:80 -r 10.0.0.2:80 local -w 3",
		"192.0.2.53:53/udp sh persistent -u 192.0.2.53:53 -r 10.0.2.1:53 -m -w 0",
		"[2001:db8::10]:443/tcp mh -t [2001:db8::10]:443 -r [2001:db8:1::1]:443 -i -w 2",
	}
	slices.Sort(got)
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
