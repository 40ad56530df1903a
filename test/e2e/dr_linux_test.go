package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// TestDR runs halb's eBPF data path in a balancer namespace, through the
// loader's Datapath as `halb run` does, in front of three real TCP
// servers, and shows: flows spread evenly over the backends; the data path
// forwards while halb is stopped and after it restarts; a drained backend
// gets no new connection and keeps the one it has; bpftool reads the
// pinned maps and finds the program by name; Cleanup leaves nothing. It
// does so on each hook the data path attaches to.
func TestDR(t *testing.T) {
	netnstest.Require(t)
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		netnstest.SkipOrFail(t, "bpftool is not installed (Debian: apt-get install bpftool)")
	}
	for _, v := range []struct {
		mode, xdpMode string
		hook          loader.Hook
		prog          string
	}{
		{config.ModeXDP, "native", loader.HookXDPNative, "halb_xdp_lb"},
		{config.ModeXDP, "generic", loader.HookXDPGeneric, "halb_xdp_lb"},
		{config.ModeTC, "auto", loader.HookTCX, "halb_tc_lb"},
	} {
		t.Run(string(v.hook), func(t *testing.T) {
			testDR(t, bpftool, v.mode, v.xdpMode, v.hook, v.prog)
		})
	}
}

func testDR(t *testing.T, bpftool, mode, xdpMode string, hook loader.Hook, prog string) {
	bed := newBed(t, hook)
	lb := bed.lb
	cfg := datapathConfig(t, mode, xdpMode)
	services := []service.Service{webService("web", webKey, service.DR)}
	ctx := context.Background()

	dp := start(t, lb, cfg)
	if got := dp.Attachments(); len(got) != 1 || got[0].Hook != hook {
		t.Fatalf("attachments %v, want %s on eth0", got, hook)
	}
	if hook == loader.HookTCX {
		if n := tcxPrograms(t, lb, lbIndex(t, lb)); n != 1 {
			t.Fatalf("%d tcx programs on the balancer's eth0, want 1", n)
		}
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 3)

	t.Run("bpftool reads the pins", func(t *testing.T) {
		out := run(t, bpftool, "map", "dump", "pinned", filepath.Join(cfg.BPFFS, "halb_services"))
		for _, field := range []string{`"vip"`, `"port": 80`, `"proto": 6`, `"family": "FAMILY_IPV4"`, `"forward": "FORWARD_DR"`} {
			if !strings.Contains(out, field) {
				t.Errorf("bpftool map dump of halb_services lacks %s:\n%s", field, out)
			}
		}
		out = run(t, bpftool, "map", "dump", "pinned", filepath.Join(cfg.BPFFS, "halb_backends"))
		for _, field := range []string{`"mac"`, `"weight": 1`, `"flags": "BACKEND_F_ACTIVE"`} {
			if !strings.Contains(out, field) {
				t.Errorf("bpftool map dump of halb_backends lacks %s", field)
			}
		}
		out = run(t, bpftool, "prog", "show", "name", prog)
		if !strings.Contains(out, "name "+prog) {
			t.Errorf("bpftool prog show name %s:\n%s", prog, out)
		}
	})

	c := bed.client
	counts := c.spread(t, 40000, 300)
	t.Logf("300 connections: %v", counts)
	checkSpread(t, "300 connections", counts, 300)
	logStatus(t, dp)

	// A connection that stays open through the restart and the drain.
	keep := c.connect(t, 39999)
	defer keep.Close()
	keep.ping(t, "before the restart")

	// halb stops: the program stays attached and keeps forwarding.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	keep.ping(t, "while halb is stopped")
	if n := total(c.spread(t, 40400, 30)); n != 30 {
		t.Errorf("%d of 30 connections while halb was stopped", n)
	}

	// halb starts again and adopts what is pinned.
	dp = start(t, lb, cfg)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 3)
	keep.ping(t, "after the restart")

	// Drain keep's backend.
	drain(&services[0], keep.backend)
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, 2)
	counts = c.spread(t, 41000, 150)
	t.Logf("150 connections with %s drained: %v", keep.backend, counts)
	if counts[keep.backend] != 0 {
		t.Errorf("drained %s got %d new connections", keep.backend, counts[keep.backend])
	}
	if total(counts) != 150 || len(counts) != 2 {
		t.Errorf("%v: want all 150 connections on the two live backends", counts)
	}
	keep.ping(t, "after the drain")
	logStatus(t, dp)

	// Cleanup: nothing attached, nothing pinned.
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
	l, err := lb.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("XDP program %d still on the balancer's eth0 after Cleanup", x.ProgId)
	}
	if n := tcxPrograms(t, lb, l.Attrs().Index); n != 0 {
		t.Errorf("%d tcx programs still on the balancer's eth0 after Cleanup", n)
	}
	if _, err := os.Stat(cfg.BPFFS); !os.IsNotExist(err) {
		t.Errorf("%s still there after Cleanup (%v)", cfg.BPFFS, err)
	}
}

func lbIndex(t *testing.T, lb *netnstest.NS) int {
	t.Helper()
	l, err := lb.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// tcxPrograms counts the programs on ifindex's tcx ingress.
func tcxPrograms(t *testing.T, ns *netnstest.NS, ifindex int) int {
	t.Helper()
	var n int
	err := ns.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx ingress of the balancer's eth0: %v", err)
	}
	return n
}
