package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The bgp section decodes with its defaults; bfd is on only when written;
// announce takes the mode alone or a mapping.
func TestBGPDecode(t *testing.T) {
	cfg, err := Parse([]byte(`
datapath: {interfaces: [eth0]}
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, virtual_ips: [192.0.2.100/24]}
bgp:
  asn: 4200000001
  router_id: 192.0.2.1
  peers:
    - {address: 192.0.2.254, asn: 65000}
    - {address: 192.0.2.253, asn: 65000, bfd: {}}
    - {address: 192.0.2.252, asn: 65000, bfd: {min_rx: 100ms}}
services:
  - {name: a, vip: 192.0.2.100, port: 80, backends: [{address: 198.51.100.11}], announce: master}
  - {name: b, vip: 192.0.2.101, port: 80, backends: [{address: 198.51.100.11}], announce: {when: always, med: 5}}
  - {name: c, vip: 192.0.2.102, port: 80, backends: [{address: 198.51.100.11}]}
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.BGP
	if b == nil || b.ASN != 4200000001 || b.DrainTime != 10*time.Second || b.ListenPort != 0 {
		t.Fatalf("bgp = %+v", b)
	}
	p := b.Peers
	if p[0].Port != 179 || p[0].HoldTime != 90*time.Second || p[0].KeepaliveInterval != 0 || p[0].BFD != nil {
		t.Errorf("peer 0 = %+v: want port 179, hold 90s, no BFD", p[0])
	}
	if p[1].BFD == nil || *p[1].BFD != defaultBFD {
		t.Errorf("bfd: {} = %+v, want the defaults %+v", p[1].BFD, defaultBFD)
	}
	if p[2].BFD == nil || p[2].BFD.MinRx != 100*time.Millisecond || p[2].BFD.MinTx != defaultBFD.MinTx {
		t.Errorf("bfd: {min_rx: 100ms} = %+v", p[2].BFD)
	}
	s := cfg.Services
	if s[0].Announce.When != AnnounceMaster || s[0].Announce.LocalPref != 100 {
		t.Errorf("announce: master = %+v", s[0].Announce)
	}
	if s[1].Announce.When != AnnounceAlways || s[1].Announce.MED != 5 || s[1].Announce.LocalPref != 100 {
		t.Errorf("announce: {when: always, med: 5} = %+v", s[1].Announce)
	}
	if s[2].Announce.When != AnnounceNever {
		t.Errorf("no announce key = %+v, want never", s[2].Announce)
	}

	none, err := Parse([]byte("log: {level: info}\n"), "t.yaml")
	if err != nil || none.BGP != nil {
		t.Errorf("a file without bgp: BGP = %+v, %v; want nil", none.BGP, err)
	}
}

// Each bad bgp value is a problem naming its field and the fix.
func TestBGPProblems(t *testing.T) {
	const head = `
datapath: {interfaces: [eth0]}
vrrp:
  instances:
    - {name: VI_1, interface: eth0, vrid: 51, virtual_ips: [192.0.2.100/24], unicast_src: 192.0.2.1}
bgp:
  asn: 65001
  peers:
`
	cases := []struct {
		name, peer, path, want string
	}{
		{"asn 0", "{address: 192.0.2.254, asn: 0}", "bgp.peers[0].asn", "AS number is required"},
		{"as_trans", "{address: 192.0.2.254, asn: 23456}", "bgp.peers[0].asn", "AS_TRANS"},
		{"asn 65535", "{address: 192.0.2.254, asn: 65535}", "bgp.peers[0].asn", "reserved"},
		{"asn negative", "{address: 192.0.2.254, asn: -1}", "bgp.peers[0].asn", "not an AS number"},
		{"peer is unicast_src", "{address: 192.0.2.1, asn: 65000}", "bgp.peers[0].address", "vrrp.instances[0].unicast_src"},
		{"peer is a vip", "{address: 192.0.2.100, asn: 65000}", "bgp.peers[0].address", "an address of this node"},
		{"peer multicast", "{address: 224.0.0.5, asn: 65000}", "bgp.peers[0].address", "multicast"},
		{"password", "{address: 192.0.2.254, asn: 65000, password: " + strings.Repeat("x", 81) + "}", "bgp.peers[0].password", "at most 80 bytes"},
		{"hold not whole", "{address: 192.0.2.254, asn: 65000, hold_time: 3500ms}", "bgp.peers[0].hold_time", "whole seconds"},
		{"keepalive too long", "{address: 192.0.2.254, asn: 65000, hold_time: 9s, keepalive_interval: 9s}", "bgp.peers[0].keepalive_interval", "not shorter than hold_time"},
		{"multihop ibgp", "{address: 192.0.2.254, asn: 65001, ebgp_multihop: 2}", "bgp.peers[0].ebgp_multihop", "for eBGP peers"},
		{"multihop range", "{address: 192.0.2.254, asn: 65000, ebgp_multihop: 256}", "bgp.peers[0].ebgp_multihop", "out of range"},
		{"bfd multihop", "{address: 192.0.2.254, asn: 65000, ebgp_multihop: 2, bfd: {}}", "bgp.peers[0].bfd", "single-hop only"},
		{"bfd timer", "{address: 192.0.2.254, asn: 65000, bfd: {min_tx: 1ms}}", "bgp.peers[0].bfd.min_tx", "out of range"},
		{"bfd multiplier", "{address: 192.0.2.254, asn: 65000, bfd: {multiplier: 0}}", "bgp.peers[0].bfd.multiplier", "out of range"},
		{"source family", "{address: 192.0.2.254, asn: 65000, source_address: 2001:db8::1}", "bgp.peers[0].source_address", "one family"},
		{"source is peer", "{address: 192.0.2.254, asn: 65000, source_address: 192.0.2.254}", "bgp.peers[0].source_address", "peer's own address"},
		{"port", "{address: 192.0.2.254, asn: 65000, port: 0}", "bgp.peers[0].port", "out of range"},
		{"twice", "{address: 192.0.2.254, asn: 65000}\n    - {address: 192.0.2.254, asn: 65002}", "bgp.peers[1].address", "already bgp.peers[0]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(head+"    - "+c.peer+"\n"), "t.yaml")
			wantProblem(t, err, c.path, c.want)
		})
	}
	_, err := Parse([]byte("bgp: {asn: 65001, peers: []}\n"), "t.yaml")
	wantProblem(t, err, "bgp.peers", "at least one peer")
	_, err = Parse([]byte("bgp: {asn: 65001, listen_port: 70000, peers: [{address: 192.0.2.254, asn: 65000}]}\n"), "t.yaml")
	wantProblem(t, err, "bgp.listen_port", "out of range")
}

func wantProblem(t *testing.T, err error, path, text string) {
	t.Helper()
	wantProblemAt(t, err, path, text, true)
}

// wantProblemAt fails t unless err has a problem at path containing text,
// with its line when withLine.
func wantProblemAt(t *testing.T, err error, path, text string, withLine bool) {
	t.Helper()
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v, want a *config.Error", err)
	}
	for _, p := range cerr.Problems {
		if p.Path == path && strings.Contains(p.Msg, text) && (p.Line > 0 || !withLine) {
			return
		}
	}
	t.Errorf("no problem at %s containing %q (with its line: %v):\n%v", path, text, withLine, err)
}

func TestParseCommunity(t *testing.T) {
	good := map[string]uint32{
		"65000:100": 65000<<16 | 100, "0:0": 0, "65535:65535": 0xFFFFFFFF,
		"no-export": 0xFFFFFF01, "NO-ADVERTISE": 0xFFFFFF02, "blackhole": 0xFFFF029A,
	}
	for s, want := range good {
		if got, err := ParseCommunity(s); err != nil || got != want {
			t.Errorf("ParseCommunity(%q) = %#x, %v; want %#x", s, got, err, want)
		}
	}
	for _, s := range []string{"", "65000", "65536:1", "1:65536", "a:b", "1:2:3", "-1:2", " 1:2"} {
		if _, err := ParseCommunity(s); err == nil {
			t.Errorf("ParseCommunity(%q) accepted", s)
		}
	}
	if got, err := ParseLargeCommunity("4200000000:1:4294967295"); err != nil || got != [3]uint32{4200000000, 1, 4294967295} {
		t.Errorf("ParseLargeCommunity = %v, %v", got, err)
	}
	for _, s := range []string{"", "1:2", "1:2:3:4", "4294967296:1:2", "a:1:2"} {
		if _, err := ParseLargeCommunity(s); err == nil {
			t.Errorf("ParseLargeCommunity(%q) accepted", s)
		}
	}
}

// HALB_BGP_* variables override the bgp section's keys outside its peers:
// one file for every node of an active-active group, each node's router
// id from its environment.
func TestBGPEnvironment(t *testing.T) {
	const file = `
bgp:
  asn: 65001
  router_id: 192.0.2.1
  peers: [{address: 192.0.2.254, asn: 65000}]
`
	t.Setenv("HALB_BGP_ROUTER_ID", "192.0.2.9")
	t.Setenv("HALB_BGP_ASN", "4200000009")
	t.Setenv("HALB_BGP_DRAIN_TIME", "30s")
	cfg, err := Parse([]byte(file), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.BGP; b.RouterID.String() != "192.0.2.9" || b.ASN != 4200000009 || b.DrainTime != 30*time.Second || len(b.Peers) != 1 {
		t.Errorf("bgp = %+v", b)
	}

	t.Setenv("HALB_BGP_ROUTER_ID", "not-an-address")
	_, err = Parse([]byte(file), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Path != "bgp.router_id" || cerr.Problems[0].Env != "HALB_BGP_ROUTER_ID" {
		t.Errorf("a bad HALB_BGP_ROUTER_ID: %v; want one problem at bgp.router_id set by HALB_BGP_ROUTER_ID", err)
	}

	// Without a bgp section the variable makes one, which then needs
	// its peers: a forgotten variable does not pass unnoticed.
	t.Setenv("HALB_BGP_ROUTER_ID", "192.0.2.9")
	_, err = Parse([]byte("log: {level: info}\n"), "t.yaml")
	wantProblemAt(t, err, "bgp.peers", "at least one peer", false)
}
