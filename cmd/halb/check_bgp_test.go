package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// On a host with no IPv4 address and no network the BGP peer is on,
// `halb check` warns, naming each field, that halb run would refuse the
// bgp section there (no router ID to take, BFD to a peer on no connected
// network), and exits 0: the file is valid, and may be meant for another
// host.
func TestCheckWarnsBGPHostFacts(t *testing.T) {
	ns := netnstest.New(t) // loopback only
	file := filepath.Join(t.TempDir(), "bgp.yaml")
	if err := os.WriteFile(file, []byte(`
bgp:
  asn: 65001
  peers:
    - address: 192.0.2.254
      asn: 65000
      bfd: {}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	for _, w := range []struct{ line, text string }{
		{"2", `bgp.router_id: warning: halb run refuses this on this host: this host has no IPv4 address`},
		{"7", `bgp.peers[0].bfd: warning: halb run refuses this on this host: 192.0.2.254 is on no network directly connected`},
	} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + `:` + w.line + `: ` + regexp.QuoteMeta(w.text))
		if !re.MatchString(out) {
			t.Errorf("no warning FILE:%s: %s ...:\n%s", w.line, w.text, out)
		}
	}
}

// `halb check` says where halb run puts the VIPs of announce: always
// services, and how no node answers ARP for them.
func TestCheckSaysWhereAlwaysVIPsLive(t *testing.T) {
	file := filepath.Join(t.TempDir(), "always.yaml")
	if err := os.WriteFile(file, []byte(`
datapath: {interfaces: [eth0]}
services:
  - {name: web, vip: 192.0.2.100, port: 80, backends: [{address: 198.51.100.11}], announce: always}
  - {name: web6, vip: "2001:db8::100", port: 80, forward: tun, backends: [{address: "2001:db8:1::11"}], announce: always}
  - {name: dns, vip: 192.0.2.101, port: 53, protocol: udp, backends: [{address: 198.51.100.21}]}
bgp:
  asn: 65001
  router_id: 192.0.2.1
  peers: [{address: 203.0.113.254, asn: 65000}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	want := "bgp       announce: always vips 192.0.2.100/32, 2001:db8::100/128 go on lo while halb runs, and leave at stop; " +
		"no interface answers ARP for them: halb sets net.ipv4.conf.all.arp_ignore=1 and arp_announce=2"
	if !strings.Contains(out, want) {
		t.Errorf("halb check does not say where the always vips live:\n%s", out)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, "announce: always vips") && strings.Contains(line, "192.0.2.101") {
			t.Errorf("a service that is not announced is said to live on lo:\n%s", out)
		}
	}
}

// `halb check` shows what the routers will be told before halb runs: the
// speaker, each peer with its session's settings, and each service's host
// route with when it is announced and with which attributes.
func TestCheckSummaryShowsBGP(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bgp.yaml")
	if err := os.WriteFile(file, []byte(`
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, priority: 100, virtual_ips: [192.0.2.101/24]}
datapath: {interfaces: [eth0]}
services:
  - {name: web, vip: 192.0.2.100, port: 80, quorum: 2, backends: [{address: 198.51.100.11}, {address: 198.51.100.12}],
     announce: {when: always, communities: ["65000:100", no-export], large_communities: ["65000:1:2"], med: 10}}
  - {name: dns, vip: 192.0.2.101, port: 53, protocol: udp, backends: [{address: 198.51.100.21}], announce: master}
  - {name: web6, vip: "2001:db8::100", port: 80, forward: tun, backends: [{address: "2001:db8:1::11"}]}
bgp:
  asn: 65001
  listen_port: 179
  drain_time: 5s
  peers:
    - {address: 192.0.2.254, asn: 65000, hold_time: 9s, password: secret, bfd: {}, graceful_restart: true}
    - {address: 203.0.113.254, asn: 65001, port: 1179, keepalive_interval: 10s, source_address: 192.0.2.1}
    - {address: 198.51.100.254, asn: 65002, ebgp_multihop: 2}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	i := strings.Index(out, "\nBGP ")
	if i < 0 {
		t.Fatalf("the summary has no BGP part:\n%s", out)
	}
	want := `
BGP  AS 65001, router id from the host (first IPv4 peer's source_address, else lowest global IPv4), listen 179, drain 5s

PEER                 ASN    SESSION               HOLD  KEEPALIVE  SOURCE             MD5  BFD                            GRACEFUL RESTART
192.0.2.254:179      65000  ebgp                  9s    3s         (kernel's choice)  yes  rx 300ms tx 300ms x3 (udp 3784)  yes
203.0.113.254:1179   65001  ibgp                  1m30s 10s        192.0.2.1          no   no                             no
198.51.100.254:179   65002  ebgp multihop ttl 2   1m30s 30s        (kernel's choice)  no   no                             no

SERVICE  ROUTE              ANNOUNCED                                                   ATTRIBUTES
web      192.0.2.100/32     always: while this node serves it with at least 2 healthy backend(s)  med 10, local_pref 100 (ibgp peers), communities 65000:100 no-export, large_communities 65000:1:2
dns      192.0.2.101/32     master: while VI_1 is MASTER                                med 0, local_pref 100 (ibgp peers)
web6     2001:db8::100/128  never                                                       -
`
	if got := out[i:]; squeeze(got) != squeeze(want) {
		t.Errorf("the summary's BGP part:\n%s\nwant (spacing aside):\n%s", got, want)
	}
}

// squeeze collapses runs of spaces, so that a test states the columns'
// contents without restating tabwriter's padding.
func squeeze(s string) string {
	return regexp.MustCompile(` +`).ReplaceAllString(s, " ")
}
