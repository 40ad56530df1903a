package vrrp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	text, id := c.keepalivedConfig(l, 0, priority), ""
	if c.shared {
		text, id = sharedConfig(l, priority, c.peerPriority), "node0"
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := kaconf.Import(path, kaconf.ImportOptions{Options: kaconf.Options{ConfigID: id}})
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

// keepalivedPeer is the keepalived node (node 1) of an interop case: its
// own configuration, or with shared, the file both nodes share, read
// with -i node1.
func (c interop) keepalivedPeer(t *testing.T, l *lan, halbPriority, kaPriority int) *keepalived {
	if !c.shared {
		return newKeepalived(t, "keepalived", l.ns[1], c.keepalivedConfig(l, 1, kaPriority))
	}
	k := newKeepalived(t, "keepalived", l.ns[1], sharedConfig(l, halbPriority, kaPriority))
	k.args = []string{"-i", "node1"}
	return k
}

// sharedConfig is one keepalived.conf for both nodes, as configuration
// management writes it: what differs is on @node0 / @node1 lines, and a
// track script every node runs.
func sharedConfig(l *lan, p0, p1 int) string {
	return fmt.Sprintf(`global_defs {
    @node0 router_id node0
    @node1 router_id node1
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 1
}
vrrp_script alive {
    script "/bin/true"
    interval 2
    timeout 1
    weight -10
}
vrrp_instance VI_T {
    state BACKUP
    interface lan0
    virtual_router_id 51
    version 3
    advert_int 0.2
    @node0 priority %d
    @node1 priority %d
    @node0 unicast_src_ip %s
    @node1 unicast_src_ip %s
    unicast_peer {
        @^node0 %s
        @^node1 %s
    }
    virtual_ipaddress {
        192.0.2.100/24
    }
    track_script {
        alive
    }
}
`, p0, p1, l.addr[0], l.addr[1], l.addr[0], l.addr[1])
}

// TestKeepalivedInteropSharedFile: the file a pair of keepalived nodes
// shares, with @ID lines for what differs. keepalived reads it with -i
// node1, halb runs its import for --config-id node0, and the two form a
// pair each way round, as in TestKeepalivedInteropImported.
func TestKeepalivedInteropSharedFile(t *testing.T) {
	netnstest.Require(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		netnstest.SkipOrFail(t, "keepalived not installed (apt-get install -y keepalived): %v", err)
	}
	c := interop{variant: variant{name: "v3-ipv4-unicast-shared", version: 3, unicast: true, interval: 200 * time.Millisecond},
		imported: true, shared: true}
	for _, halbMaster := range []bool{true, false} {
		name := map[bool]string{true: "halb-master", false: "keepalived-master"}[halbMaster]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := c
			c.peerPriority = map[bool]int{true: 100, false: 150}[halbMaster]
			runInterop(t, c, halbMaster)
		})
	}
}
