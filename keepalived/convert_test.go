package keepalived

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
)

// parseYAML converts text and decodes the result with halb's own loader.
func parseYAML(t *testing.T, text string) (*config.Config, *Result) {
	t.Helper()
	res := importText(t, text)
	cfg, err := config.Parse(res.YAML, "import.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, res.YAML)
	}
	return cfg, res
}

const weightedInstance = `vrrp_script up {
    script /usr/bin/true
    interval 2
    timeout 1
    weight 20
}
vrrp_script down {
    script /usr/bin/false
    interval 2
    timeout 1
    weight -30
}
vrrp_instance V {
    interface eth0
    virtual_router_id 9
    priority 100
    virtual_ipaddress {
        192.0.2.9/24
    }
    track_script {
        up
        down
    }
    track_interface {
        eth1 weight 5
    }
}
`

// TestPositiveWeights: keepalived adds a positive weight while the
// tracked thing is up; halb subtracts while it is down. The base priority
// takes the weights, so every state has the priority keepalived gives it.
func TestPositiveWeights(t *testing.T) {
	cfg, res := parseYAML(t, weightedInstance)
	in := cfg.VRRP.Instances[0]
	if in.Priority != 125 {
		t.Errorf("priority %d, want 100 + 20 + 5", in.Priority)
	}
	if w := in.TrackScripts[0].Weight; w != -20 {
		t.Errorf("script up's weight %d, want -20", w)
	}
	if w := in.TrackScripts[1].Weight; w != -30 {
		t.Errorf("script down's weight %d, want -30", w)
	}
	if w := in.TrackInterfaces[0].Weight; w != -5 {
		t.Errorf("eth1's weight %d, want -5", w)
	}
	if !res.Exact() {
		t.Errorf("not exact: %v", res.Notes)
	}
	// All up: 125 here, 100+20+5 in keepalived; up fails: 105 both.
}

// TestSyncGroupWeights: in a sync group keepalived tracks with weight 0
// (fault) unless the group says sync_group_tracking_weight.
func TestSyncGroupWeights(t *testing.T) {
	group := "vrrp_instance W {\ninterface eth0\nvirtual_router_id 10\nvirtual_ipaddress {\n192.0.2.10/24\n}\n}\nvrrp_sync_group G {\ngroup {\nV\nW\n}\n%s}\n"
	cfg, _ := parseYAML(t, weightedInstance+strings.Replace(group, "%s", "", 1))
	in := cfg.VRRP.Instances[0]
	if in.Priority != 100 || in.TrackScripts[0].Weight != 0 || in.TrackScripts[1].Weight != 0 || in.TrackInterfaces[0].Weight != 0 {
		t.Errorf("in a group: priority %d, weights %d %d %d; want 100 and 0s", in.Priority, in.TrackScripts[0].Weight, in.TrackScripts[1].Weight, in.TrackInterfaces[0].Weight)
	}
	cfg, _ = parseYAML(t, weightedInstance+strings.Replace(group, "%s", "sync_group_tracking_weight\n", 1))
	if in := cfg.VRRP.Instances[0]; in.Priority != 125 || in.TrackScripts[1].Weight != -30 {
		t.Errorf("with sync_group_tracking_weight: priority %d, weight %d; want 125, -30", in.Priority, in.TrackScripts[1].Weight)
	}
}

// TestNotifyArguments: halb's notify is a program with keepalived's four
// arguments; what keepalived would have put before them is reported.
func TestNotifyArguments(t *testing.T) {
	base := "vrrp_instance V {\ninterface eth0\nvirtual_router_id 9\nvirtual_ipaddress {\n192.0.2.9/24\n}\n%s\n}\n"
	cfg, res := parseYAML(t, strings.Replace(base, "%s", `notify "/usr/bin/logger -t vrrp"`, 1))
	if cfg.VRRP.Instances[0].Notify != "/usr/bin/logger" || res.Exact() || !strings.Contains(res.Notes[0].Msg, `the arguments "-t vrrp" are dropped`) {
		t.Errorf("notify %q, notes %v", cfg.VRRP.Instances[0].Notify, res.Notes)
	}
	cfg, res = parseYAML(t, strings.Replace(base, "%s", `notify "/usr/bin/logger x | cat"`, 1))
	if cfg.VRRP.Instances[0].Notify != "" || res.Exact() || res.Notes[0].Kind != Dropped {
		t.Errorf("shell notify %q, notes %v; want it dropped", cfg.VRRP.Instances[0].Notify, res.Notes)
	}
}

// TestConvertErrors: a file that parses but cannot become a valid halb
// configuration names the line.
func TestConvertErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"vrrp_instance V {\nvirtual_router_id 1\nvirtual_ipaddress {\n192.0.2.1\n}\n}\n", "k.conf:1: vrrp_instance: the instance names no interface"},
		{"vrrp_instance V {\ninterface eth0\nvirtual_router_id 300\nvirtual_ipaddress {\n192.0.2.1\n}\n}\n", "k.conf:3: virtual_router_id: \"300\" is not a whole number from 1 to 255"},
		{"vrrp_instance V {\ninterface eth0\nvirtual_router_id 1\nvirtual_ipaddress {\nnot-an-address\n}\n}\n", "k.conf:5: not-an-address:"},
		{"vrrp_instance V {\ninterface eth0\nvirtual_router_id 1\nvirtual_ipaddress {\n192.0.2.1\n}\ntrack_script {\nnone\n}\n}\n", "k.conf:8: none: no vrrp_script is named"},
		{"virtual_server 192.0.2.1 80 {\nlb_kind DR\n}\n", "k.conf:1: virtual_server: the virtual_server has no real_server"},
		{"virtual_server 192.0.2.1 80 {\nprotocol SCTP\nreal_server 192.0.2.2 80 {\n}\n}\n", "k.conf:2: protocol: \"SCTP\": halb balances TCP and UDP only"},
	} {
		path := writeFiles(t, map[string]string{"k.conf": tc.text}) + "/k.conf"
		_, err := Import(path, ImportOptions{})
		if ce, ok := err.(*ConvertError); !ok || !strings.Contains(ce.Error(), tc.want) {
			t.Errorf("%v; want a ConvertError saying %q", err, tc.want)
		}
	}
}

// TestSharedFileQuirks: what a keepalived.conf accepts and halb's schema
// refuses is converted to what keepalived does, with a note: an address
// of the other family among the VIPs, the node's own address among its
// unicast peers, a fractional VRRPv2 advert interval.
func TestSharedFileQuirks(t *testing.T) {
	cfg, res := parseYAML(t, `vrrp_instance V {
    interface eth0
    virtual_router_id 9
    advert_int 1.5
    unicast_src_ip 192.0.2.1
    unicast_peer {
        192.0.2.1
        192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.9/24
        2001:db8::9/64
    }
}
`)
	in := cfg.VRRP.Instances[0]
	if len(in.UnicastPeers) != 1 || in.UnicastPeers[0].String() != "192.0.2.2" {
		t.Errorf("unicast_peers %v, want [192.0.2.2]", in.UnicastPeers)
	}
	if in.AdvertInterval.String() != "2s" {
		t.Errorf("advert_interval %v, want 2s", in.AdvertInterval)
	}
	if !strings.Contains(string(res.YAML), "virtual_ips_excluded:\n        - 2001:db8::9/64") {
		t.Errorf("the IPv6 address is not excluded:\n%s", res.YAML)
	}
	var lines []int
	for _, n := range res.Notes {
		lines = append(lines, n.Line)
	}
	// In the file's order, though the conversion meets them the other
	// way round.
	if !slices.Equal(lines, []int{4, 7, 12}) {
		t.Errorf("notes on lines %v, want 4 (advert_int), 7 (the own peer), 12 (the IPv6 VIP): %v", lines, res.Notes)
	}
}

// TestNames: a keepalived name halb's names cannot hold is written with
// '_' for what they cannot, the same in the instance and its sync group.
func TestNames(t *testing.T) {
	cfg, res := parseYAML(t, `vrrp_instance "web front" {
    interface eth0
    virtual_router_id 9
    virtual_ipaddress {
        192.0.2.9/24
    }
}
vrrp_instance back {
    interface eth1
    virtual_router_id 10
    virtual_ipaddress {
        198.51.100.9/24
    }
}
vrrp_sync_group "all:1" {
    group {
        "web front"
        back
    }
}
`)
	if got := cfg.VRRP.Instances[0].Name; got != "web_front" {
		t.Errorf("instance name %q, want web_front", got)
	}
	if g := cfg.VRRP.SyncGroups[0]; g.Name != "all_1" || !slices.Equal(g.Instances, []string{"web_front", "back"}) {
		t.Errorf("sync group %q %v, want all_1 [web_front back]", g.Name, g.Instances)
	}
	if len(res.Notes) != 2 {
		t.Errorf("notes %v, want one for each renamed name", res.Notes)
	}
}

// TestDatapathInterfaces: the data path attaches where the services' VIPs
// live: a VIP with its own dev is on that interface, not the instance's.
func TestDatapathInterfaces(t *testing.T) {
	cfg, res := parseYAML(t, `vrrp_instance V {
    interface eth0
    virtual_router_id 9
    virtual_ipaddress {
        192.0.2.9/24 dev eth0
        198.51.100.9/24 dev eth1
    }
}
virtual_server 198.51.100.9 80 {
    lb_algo rr
    lb_kind DR
    real_server 198.51.100.20 80 {
    }
}
`)
	if !slices.Equal(cfg.Datapath.Interfaces, []string{"eth1"}) {
		t.Errorf("datapath.interfaces %v, want [eth1]", cfg.Datapath.Interfaces)
	}
	// dev eth0 on an instance of eth0 is written as a plain entry.
	if !strings.Contains(string(res.YAML), "\n        - 192.0.2.9/24\n") {
		t.Errorf("a VIP on the instance's own interface is not plain:\n%s", res.YAML)
	}
}

// TestRefused: what keepalived takes and halb's validation refuses (one
// VRID twice on an interface) is an error naming halb's field, and no
// output.
func TestRefused(t *testing.T) {
	path := writeFiles(t, map[string]string{"k.conf": `vrrp_instance A {
    interface eth0
    virtual_router_id 7
    virtual_ipaddress {
        192.0.2.7/24
    }
}
vrrp_instance B {
    interface eth0
    virtual_router_id 7
    virtual_ipaddress {
        192.0.2.8/24
    }
}
`}) + "/k.conf"
	res, err := Import(path, ImportOptions{})
	var rf *RefusedError
	if !errors.As(err, &rf) || res != nil || !strings.Contains(err.Error(), "vrrp.instances[1].vrid: vrid 7 is already used on eth0") {
		t.Fatalf("%v, %v; want a RefusedError naming vrrp.instances[1].vrid", res, err)
	}
}

// TestRouteTableNames: the tables the kernel names alike everywhere
// (main, local, default) are carried across as their numbers, in routes
// and in rules (`table` and `lookup`); any other name is the host's
// rt_tables, which the import cannot read for the node it is meant for.
func TestRouteTableNames(t *testing.T) {
	res := importText(t, keywordConfig("instance",
		"virtual_routes {\nto 203.0.113.0/24 via 192.0.2.254 table local\n}\nvirtual_rules {\nfrom 192.0.2.100/32 lookup main priority 10\nto 198.51.100.0/24 table default priority 11\n}"))
	for _, want := range []string{"table: 255", "table: 254", "table: 253"} {
		if !strings.Contains(string(res.YAML), want) {
			t.Errorf("want %q in\n%s", want, res.YAML)
		}
	}
	path := writeFiles(t, map[string]string{"k.conf": keywordConfig("instance", "virtual_rules {\nfrom 192.0.2.100/32 lookup web priority 10\n}")}) + "/k.conf"
	_, err := Import(path, ImportOptions{})
	if ce, ok := err.(*ConvertError); !ok || !strings.Contains(ce.Error(), `table "web": halb takes table numbers, not names from rt_tables`) {
		t.Errorf("%v; want a ConvertError naming the table", err)
	}
}
