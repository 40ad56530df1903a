package vrrp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// halb itself: a v3 Master with accept: false filters its VIP, one with
// accept: true or as the address owner does not, and clears a table a
// killed halb left; a reload that turns accept on removes the filter, and
// exit removes it.
func TestAcceptMode(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.100")
	sock := t.TempDir() + "/halb.sock"
	conf := func(priority int, accept bool) string {
		// Metrics on the node namespace's own loopback.
		return fmt.Sprintf(`log: {level: debug}
control: {socket: `+sock+`, metrics: "127.0.0.1:9470"}
vrrp:
  instances:
    - name: VI_A
      interface: lan0
      vrid: 51
      version: 3
      priority: %d
      accept: %v
      advert_interval: 100ms
      garp_master_delay: 1s
      garp_master_repeat: 1
      virtual_ips: [192.0.2.100/24]
`, priority, accept)
	}
	open := reach{true, true, true}
	// Without services there is no data path; the service port is as
	// closed as any other port. TestAcceptTable covers the service
	// exception.
	closed := reach{}

	for _, tc := range []struct {
		name     string
		priority int
		accept   bool
		want     reach
	}{
		{"accept false", 100, false, closed},
		{"accept true", 100, true, open},
		{"address owner", 255, false, open},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLAN(t, false)
			serveTCP(t, l.ns[0], servicePort)
			serveTCP(t, l.ns[0], otherPort)
			table, err := OpenAcceptTable(int(l.ns[0].Handle()))
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != closed {
				// A table left by a killed halb that filtered: the start
				// must clear it.
				left := &config.Config{VRRP: config.VRRP{Instances: []config.Instance{{Name: "VI_A", Version: 3, Priority: 100,
					VirtualIPs: config.PlainVIPs(netip.PrefixFrom(vip, 24))}}}}
				if err := table.Apply(AcceptRules(left)); err != nil {
					t.Fatal(err)
				}
			}
			n := newNode(t, "a", l.ns[0], conf(tc.priority, tc.accept))
			n.start(t)
			waitAddr(t, l.h[0], vip, true, 10*time.Second)
			// The node's own address answers whatever the mode, which
			// also has the peer resolve the node's MAC.
			if err := eventually(openWait, func() error {
				return dial(l.ns[1], netip.AddrPortFrom(l.addr[0], otherPort), blockedWait)
			}); err != nil {
				t.Fatalf("node address: %v", err)
			}
			var got reach
			_ = eventually(openWait, func() error {
				if got = probe(l, vip); got != tc.want {
					return errors.New("not yet")
				}
				return nil
			})
			if got != tc.want {
				t.Errorf("VIP reach = %+v, want %+v", got, tc.want)
			}
			if tc.want == closed {
				// The probes the filter dropped are counted.
				var body string
				counted := regexp.MustCompile(`halb_vrrp_accept_dropped_total\{vip="192.0.2.100"\} [1-9]`)
				if err := eventually(openWait, func() error {
					if body = scrapeIn(l.ns[0], "127.0.0.1:9470"); !counted.MatchString(body) {
						return errors.New("not yet")
					}
					return nil
				}); err != nil {
					t.Errorf("no drops counted in halb_vrrp_accept_dropped_total:\n%s", body)
				}
			}
			if installed, want := table.Installed(), tc.want == closed; installed != want {
				t.Errorf("table inet %s installed = %v, want %v", AcceptTableName, installed, want)
			}
			if tc.want == closed {
				// Reload with accept: true: the filter goes.
				if err := os.WriteFile(n.cfg, []byte(conf(tc.priority, true)), 0o600); err != nil {
					t.Fatal(err)
				}
				_ = n.cmd.Process.Signal(syscall.SIGHUP)
				_ = eventually(openWait, func() error {
					if got = probe(l, vip); got != open {
						return errors.New("not yet")
					}
					return nil
				})
				if got != open || table.Installed() {
					t.Errorf("after reload to accept: true, VIP reach = %+v and table installed = %v", got, table.Installed())
				}
				// And back, so that exit has a table to remove.
				if err := os.WriteFile(n.cfg, []byte(conf(tc.priority, false)), 0o600); err != nil {
					t.Fatal(err)
				}
				_ = n.cmd.Process.Signal(syscall.SIGHUP)
				waitLogCount(t, n, "config reloaded", 2)
				if !table.Installed() {
					t.Errorf("after reload to accept: false the table is missing")
				}
			}
			n.stop(syscall.SIGTERM)
			if table.Installed() {
				t.Errorf("table inet %s left behind after exit", AcceptTableName)
			}
			if tc.want == closed {
				if !strings.Contains(n.log.String(), "accept_mode filter installed") {
					t.Errorf("halb did not log the filter:\n%s", n.log)
				}
				// accept changes the filter only: the instance keeps
				// running as Master through the reloads.
				if strings.Contains(n.log.String(), "vrrp instance changed") {
					t.Errorf("changing accept restarted the instance:\n%s", n.log)
				}
			}
		})
	}
}

// scrapeIn GETs /metrics from addr inside ns, on a connection made on
// the namespace's thread (an http.Client would dial from any thread); ""
// when it cannot.
func scrapeIn(ns *netnstest.NS, addr string) string {
	var body []byte
	_ = ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	})
	return string(body)
}
