package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// readmeFRRMarker is the line above the README's FRR configuration.
const readmeFRRMarker = "<!-- frr.conf: test/e2e/bgp_readme_linux_test.go starts FRR with this block -->"

// TestBGPReadmeRouterConfig is the README's promise that its FRR
// configuration works with the example: FRR runs the README's block as it
// is, in a router namespace at 192.0.2.254 on the example's LAN, and halb
// runs the example with one change, web's `announce: master` (the README's
// advice for the example's pair). The session comes up, 192.0.2.100/32
// reaches the router's kernel through 192.0.2.1 with the example's
// communities, and halb's status shows the session and the announcement.
func TestBGPReadmeRouterConfig(t *testing.T) {
	frrtest.Require(t)
	conf := readmeFRRConf(t)
	halb := halbtest.Build(t)
	n := newExampleNet(t)
	file := exampleWith(t, n.dir, "      when: never ", "      when: master ")

	router := netnstest.New(t)
	n.lan.plug(router, "sw-router", netip.MustParseAddr("192.0.2.254"))
	frr := frrtest.Start(t, router, conf)

	d := &daemon{t: t, bin: halb, cfg: file, sock: filepath.Join(n.dir, "halb.sock"), pins: filepath.Join(n.fs, "halb")}
	t.Setenv("HALB_CONTROL_SOCKET", d.sock)
	t.Setenv("HALB_DATAPATH_BPFFS", d.pins)
	d.start(n.lb)

	frrtest.Eventually(t, bgpSessionWait, "the router's session with 192.0.2.1 established", func() error {
		nb, err := frr.Neighbors()
		if err != nil {
			return err
		}
		if s := nb["192.0.2.1"].State; s != "Established" {
			return fmt.Errorf("192.0.2.1 is %q", s)
		}
		return nil
	})
	frrtest.Eventually(t, bgpRouteWait, "192.0.2.100/32 in the router's kernel through 192.0.2.1", func() error {
		proto, nhs, err := frr.Installed("ip", "192.0.2.100/32")
		if err != nil {
			return err
		}
		if proto != "bgp" || !slices.Equal(nhs, []string{"192.0.2.1"}) {
			return fmt.Errorf("installed by %q through %v", proto, nhs)
		}
		return nil
	})
	paths, err := frr.Paths("ipv4", "192.0.2.100/32")
	if err != nil || len(paths) != 1 {
		t.Fatalf("the router's RIB for 192.0.2.100/32: %+v (%v), want one path", paths, err)
	}
	if c := paths[0].Community.String; c != "65000:100 no-export" {
		t.Errorf("the path's communities are %q, want the example's 65000:100 no-export", c)
	}
	if c := paths[0].LargeCommunity.String; c != "65000:1:2" {
		t.Errorf("the path's large communities are %q, want the example's 65000:1:2", c)
	}
	// dns (192.0.2.101) keeps the example's announce: never.
	if paths, err := frr.Paths("ipv4", "192.0.2.101/32"); err != nil || len(paths) != 0 {
		t.Errorf("the router's RIB for 192.0.2.101/32: %+v (%v), want none: dns is not announced", paths, err)
	}
	out, err := runOut(halb, "status", "-s", d.sock)
	if err != nil {
		t.Fatalf("halb status: %v\n%s", err, out)
	}
	t.Logf("halb status:\n%s", out)
	for _, want := range []string{"192.0.2.254", "established", "vrrp instance VI_WEB4 is MASTER"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("halb status does not show %q", want)
		}
	}

	d.stop()
	if proto, nhs, err := frr.Installed("ip", "192.0.2.100/32"); err != nil || proto != "" {
		t.Errorf("after halb stopped the router still routes 192.0.2.100/32: %q through %v (%v)", proto, nhs, err)
	}
}

// readmeFRRConf is the fenced block below readmeFRRMarker in the README.
func readmeFRRConf(t testing.TB) string { return readmeBlock(t, readmeFRRMarker, "```") }

// readmeBlock is the fenced block that opens with fence on the line below
// marker in the README.
func readmeBlock(t testing.TB, marker, fence string) string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), marker+"\n"+fence+"\n")
	if !ok {
		t.Fatalf("README.md has no fenced block below %q", marker)
	}
	block, _, ok := strings.Cut(after, "```\n")
	if !ok {
		t.Fatalf("README.md: the block below %q is not closed", marker)
	}
	return block
}

// exampleWith writes the example configuration into dir with the one
// line that starts with from changed to start with to, and returns the
// file's path.
func exampleWith(t testing.TB, dir, from, to string) string {
	t.Helper()
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(data), "\n"+from) != 1 {
		t.Fatalf("%s has not exactly one line starting %q", exampleConfig, from)
	}
	file := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(file, []byte(strings.Replace(string(data), "\n"+from, "\n"+to, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
