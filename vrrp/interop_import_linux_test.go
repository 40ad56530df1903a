package vrrp

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
	kaconf "github.com/halb-lb/halb/keepalived"
)

// halbNodeConfig is the configuration of the halb node (node 0) of an
// interop case: halb's own, or the import of the keepalived.conf a
// keepalived would run on node 0.
func (c interop) halbNodeConfig(t *testing.T, l *lan, priority int) string {
	t.Helper()
	if !c.imported {
		return c.halbConfig(l, 0, priority)
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(c.keepalivedConfig(l, 0, priority)), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := kaconf.Import(path, kaconf.ImportOptions{})
	if err != nil {
		t.Fatalf("halb import: %v", err)
	}
	// The one keyword of these files halb has no use for is the router
	// name; everything VRRP speaks on the wire must carry across.
	for _, n := range res.Notes {
		if n.Keyword != "router_id" {
			t.Errorf("halb import did not carry %s across exactly: %s", n.Keyword, n)
		}
	}
	t.Logf("halb import of node 0's keepalived.conf:\n%s", res.YAML)
	return "log: {level: debug}\n" + string(res.YAML)
}

// TestKeepalivedInteropImported: the migration path. keepalived runs its
// own configuration on one node; halb runs `halb import` of the
// configuration the other node's keepalived had. The two form a pair,
// each way round, through the steps of TestKeepalivedInterop: the higher
// priority holds the VIP, SIGKILL and SIGTERM of the master move it, the
// returning master pre-empts.
func TestKeepalivedInteropImported(t *testing.T) {
	netnstest.Require(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		netnstest.SkipOrFail(t, "keepalived not installed (apt-get install -y keepalived): %v", err)
	}
	for _, c := range interops {
		if !strings.Contains(c.name, "auth") && !strings.Contains(c.name, "unicast") {
			continue // the multicast cases add nothing to what import carries
		}
		c.imported = true
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, halbMaster := range []bool{true, false} {
				name := map[bool]string{true: "halb-master", false: "keepalived-master"}[halbMaster]
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runInterop(t, c, halbMaster)
				})
			}
		})
	}
}
