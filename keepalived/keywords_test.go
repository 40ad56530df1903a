package keepalived

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
)

// keywordBase is a configuration that converts exactly; each keyword case
// puts its line in one of the %...% places.
const keywordBase = `global_defs {
%global%
}
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 1
    priority 100
    advert_int 1
    virtual_ipaddress {
        192.0.2.100/24
    }
%instance%
}
vrrp_instance VI_2 {
    interface eth0
    virtual_router_id 2
    advert_int 1
    virtual_ipaddress {
        192.0.2.101/24
    }
}
vrrp_sync_group G {
    group {
        VI_1
        VI_2
    }
%group%
}
virtual_server 192.0.2.100 80 {
    delay_loop 5
    lb_algo rr
    lb_kind DR
    protocol TCP
%vs%
    real_server 198.51.100.11 80 {
%rs%
        TCP_CHECK {
            connect_timeout 1
%check%
        }
    }
}
%top%
`

// outcome is what the README's table says becomes of a keyword.
type outcome int

const (
	exact outcome = iota
	approximated
	dropped
)

// keywordCase: where the keyword's line goes, the line, and the keyword
// its note names when it is not exact.
type keywordCase struct {
	place, text, noteKey string
	want                 outcome
}

// keywordCases holds one case for every keyword the README's table
// names, by the name the table gives it (the words in backquotes, with
// "group " before a sync group's).
var keywordCases = map[string]keywordCase{
	"include":                    {"top", "include *.none", "", exact},
	"@ID":                        {"instance", "@lb-a preempt_delay 5", "", exact},
	"@^ID":                       {"instance", "@^lb-b preempt_delay 5", "", exact},
	"$NAME=":                     {"top", "$P=5", "", exact},
	"router_id":                  {"global", "router_id x", "router_id", dropped},
	"notification_email":         {"global", "notification_email {\nops@example.org\n}", "notification_email", dropped},
	"notification_email_from":    {"global", "notification_email_from k@example.org", "notification_email_from", dropped},
	"smtp_server":                {"global", "smtp_server 192.0.2.25", "smtp_server", dropped},
	"smtp_connect_timeout":       {"global", "smtp_connect_timeout 30", "smtp_connect_timeout", dropped},
	"smtp_alert":                 {"instance", "smtp_alert", "smtp_alert", dropped},
	"script_user":                {"global", "script_user root", "script_user", dropped},
	"enable_script_security":     {"global", "enable_script_security", "", exact},
	"vrrp_version":               {"global", "vrrp_version 3", "", exact},
	"vrrp_garp_master_delay":     {"global", "vrrp_garp_master_delay 2", "", exact},
	"vrrp_garp_master_repeat":    {"global", "vrrp_garp_master_repeat 2", "", exact},
	"vrrp_garp_master_refresh":   {"global", "vrrp_garp_master_refresh 60", "", exact},
	"vrrp_strict":                {"global", "vrrp_strict", "vrrp_strict", approximated},
	"vrrp_skip_check_adv_addr":   {"global", "vrrp_skip_check_adv_addr", "vrrp_skip_check_adv_addr", dropped},
	"vrrp_garp_interval":         {"global", "vrrp_garp_interval 0.1", "vrrp_garp_interval", dropped},
	"vrrp_gna_interval":          {"global", "vrrp_gna_interval 0.1", "vrrp_gna_interval", dropped},
	"vrrp_instance":              {"top", "vrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\n}", "", exact},
	"interface":                  {"instance", "interface eth0", "", exact},
	"virtual_router_id":          {"instance", "virtual_router_id 1", "", exact},
	"priority":                   {"instance", "priority 120", "", exact},
	"advert_int":                 {"instance", "advert_int 2", "", exact},
	"version":                    {"instance", "version 3", "", exact},
	"state":                      {"instance", "state MASTER", "state", approximated},
	"nopreempt":                  {"instance", "nopreempt", "", exact},
	"preempt_delay":              {"instance", "preempt_delay 10", "", exact},
	"accept":                     {"instance", "version 3\naccept", "", exact},
	"no_accept":                  {"instance", "version 3\nno_accept", "", exact},
	"unicast_src_ip":             {"instance", "unicast_src_ip 192.0.2.1", "", exact},
	"unicast_peer":               {"instance", "unicast_peer {\n192.0.2.2\n}", "", exact},
	"authentication":             {"instance", "authentication {\nauth_type PASS\nauth_pass secret\n}", "", exact},
	"auth_type PASS":             {"instance", "authentication {\nauth_type PASS\n}", "", exact},
	"auth_pass":                  {"instance", "authentication {\nauth_pass secret\n}", "", exact},
	"virtual_ipaddress":          {"instance", "virtual_ipaddress {\n192.0.2.102/24 dev eth1\n}", "", exact},
	"virtual_ipaddress_excluded": {"instance", "virtual_ipaddress_excluded {\n2001:db8::1/64 dev eth1\n}", "", exact},
	"virtual_routes":             {"instance", "virtual_routes {\nsrc 192.0.2.100 to 203.0.113.0/24 via 192.0.2.254 dev eth0 table 10 metric 5\n}", "", exact},
	"virtual_rules":              {"instance", "virtual_rules {\nfrom 192.0.2.100/32 table 10 priority 100\n}", "", exact},
	"track_interface":            {"top", "vrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\ntrack_interface {\neth2 weight -10\n}\n}", "", exact},
	"vrrp_script":                {"top", "vrrp_script s {\nscript /usr/bin/true\ninterval 2\ntimeout 1\n}", "", exact},
	"track_script":               {"top", "vrrp_script s {\nscript /usr/bin/true\ninterval 2\ntimeout 1\nweight 10\n}\nvrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\ntrack_script {\ns\n}\n}", "", exact},
	"track_file":                 {"top", "track_file f {\nfile /run/w\n}\nvrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\ntrack_file {\nf\n}\n}", "", exact},
	"vrrp_track_file":            {"top", "vrrp_track_file f {\nfile /run/w\nweight 2\n}", "", exact},
	"vrrp_track_process":         {"top", "vrrp_track_process p {\nprocess haproxy -f /etc/haproxy.cfg\nquorum 2\n}", "", exact},
	"track_process":              {"top", "vrrp_track_process p {\nprocess haproxy\nweight -5\ndelay 2\n}\nvrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\ntrack_process {\np\n}\n}", "", exact},
	"notify":                     {"instance", "notify /usr/bin/logger", "", exact},
	"notify_master":              {"instance", `notify_master "/usr/bin/logger master"`, "", exact},
	"notify_backup":              {"instance", "notify_backup /usr/bin/logger", "", exact},
	"notify_fault":               {"instance", "notify_fault /usr/bin/logger", "", exact},
	"notify_stop":                {"instance", "notify_stop /usr/bin/logger", "", exact},
	"use_vmac":                   {"instance", "use_vmac", "", exact},
	"vmac_xmit_base":             {"instance", "use_vmac\nvmac_xmit_base", "", exact},
	"garp_master_delay":          {"instance", "garp_master_delay 2", "", exact},
	"garp_master_repeat":         {"instance", "garp_master_repeat 2", "", exact},
	"garp_master_refresh":        {"instance", "garp_master_refresh 30", "", exact},
	"mcast_src_ip":               {"instance", "mcast_src_ip 192.0.2.1", "", exact},
	"dont_track_primary":         {"instance", "dont_track_primary", "dont_track_primary", dropped},
	"vrrp_sync_group":            {"group", "notify_backup /usr/bin/logger", "", exact},
	"group":                      {"group", "group {\nVI_1\nVI_2\n}", "", exact},
	"group notify":               {"group", "notify /usr/bin/logger", "notify", dropped},
	"group track_interface":      {"group", "track_interface {\neth1\n}", "track_interface", dropped},
	"group track_script":         {"group", "track_script {\ns\n}", "track_script", dropped},
	"group track_file":           {"group", "track_file {\nf\n}", "track_file", dropped},
	"group track_process":        {"group", "track_process {\np\n}", "track_process", dropped},
	"virtual_server IP PORT":     {"top", "virtual_server 192.0.2.101 443 {\nlb_algo mh\nlb_kind DR\nreal_server 198.51.100.11 443 {\n}\n}", "", exact},
	"virtual_server_group":       {"top", "virtual_server_group W {\n192.0.2.100-101 8080\n}\nvirtual_server group W {\nlb_algo mh\nlb_kind DR\nreal_server 198.51.100.11 8080 {\n}\n}", "", exact},
	"virtual_server group":       {"top", "virtual_server_group W {\n192.0.2.101 8080\n}\nvirtual_server group W {\nlb_algo mh\nlb_kind DR\nreal_server 198.51.100.11 8080 {\n}\n}", "", exact},
	"virtual_server fwmark":      {"top", "virtual_server fwmark 1 {\nreal_server 198.51.100.11 80 {\n}\n}", "virtual_server", dropped},
	"lb_algo":                    {"vs", "lb_algo wlc", "", exact},
	"lvs_sched":                  {"vs", "lvs_sched sh", "", exact},
	"lb_kind":                    {"vs", "lb_kind TUN", "", exact},
	"lvs_method":                 {"vs", "lvs_method DR", "", exact},
	"protocol":                   {"vs", "protocol TCP", "", exact},
	"persistence_timeout":        {"vs", "persistence_timeout 600", "", exact},
	"persistence_granularity":    {"vs", "persistence_granularity 255.255.255.0", "persistence_granularity", dropped},
	"hysteresis":                 {"vs", "hysteresis 1", "hysteresis", dropped},
	"quorum_up":                  {"vs", "quorum_up /usr/bin/logger", "quorum_up", dropped},
	"quorum_down":                {"vs", "quorum_down /usr/bin/logger", "quorum_down", dropped},
	"omega":                      {"vs", "omega", "omega", dropped},
	"ha_suspend":                 {"vs", "ha_suspend", "ha_suspend", dropped},
	"alpha":                      {"vs", "alpha", "alpha", approximated},
	"delay_loop":                 {"vs", "delay_loop 3", "", exact},
	"connect_timeout":            {"check", "connect_timeout 2", "", exact},
	"retry":                      {"check", "retry 3", "retry", approximated},
	"nb_get_retry":               {"check", "nb_get_retry 3", "nb_get_retry", approximated},
	"delay_before_retry":         {"check", "delay_before_retry 2", "delay_before_retry", approximated},
	"sorry_server":               {"vs", "sorry_server 198.51.100.99 80", "", exact},
	"quorum":                     {"vs", "quorum 1", "", exact},
	"real_server":                {"vs", "real_server 198.51.100.12 80 {\nTCP_CHECK {\nconnect_timeout 1\n}\n}", "", exact},
	"weight":                     {"rs", "weight 3", "", exact},
	"inhibit_on_failure":         {"rs", "inhibit_on_failure", "inhibit_on_failure", dropped},
	"notify_up":                  {"rs", "notify_up /usr/bin/logger", "notify_up", dropped},
	"notify_down":                {"rs", "notify_down /usr/bin/logger", "notify_down", dropped},
	"uthreshold":                 {"rs", "uthreshold 100", "uthreshold", dropped},
	"lthreshold":                 {"rs", "lthreshold 10", "lthreshold", dropped},
	"TCP_CHECK":                  {"vs", "real_server 198.51.100.12 80 {\nTCP_CHECK {\nconnect_timeout 1\n}\n}", "", exact},
	"HTTP_GET":                   {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /\nstatus_code 200\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"SSL_GET":                    {"top", "virtual_server 192.0.2.101 443 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 443 {\nSSL_GET {\nurl {\npath /\nstatus_code 200\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"MISC_CHECK":                 {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nMISC_CHECK {\nmisc_path \"/usr/bin/test -e /run/ok\"\nmisc_timeout 2\n}\n}\n}", "", exact},
	"UDP_CHECK":                  {"top", "virtual_server 192.0.2.101 53 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nprotocol UDP\nreal_server 198.51.100.11 53 {\nUDP_CHECK {\nconnect_timeout 1\n}\n}\n}", "UDP_CHECK", approximated},
	"DNS_CHECK":                  {"rs", "DNS_CHECK {\ntype A\n}", "DNS_CHECK", dropped},
	"SMTP_CHECK":                 {"rs", "SMTP_CHECK {\n}", "SMTP_CHECK", dropped},
	"PING_CHECK":                 {"rs", "PING_CHECK {\n}", "PING_CHECK", dropped},
	"BFD_CHECK":                  {"rs", "BFD_CHECK {\n}", "BFD_CHECK", dropped},
	"FILE_CHECK":                 {"rs", "FILE_CHECK {\n}", "FILE_CHECK", dropped},
	"connect_port":               {"check", "connect_port 8080", "", exact},
	"bindto":                     {"check", "bindto 192.0.2.1", "", exact},
	"url":                        {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /a\ndigest 5d41402abc4b2a76b9719d911017c592\n}\nurl {\npath /b\nstatus_code 200-204 301\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"path":                       {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /healthz\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"digest":                     {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /\ndigest 5d41402abc4b2a76b9719d911017c592\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"status_code":                {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /\nstatus_code 200 204\n}\nconnect_timeout 1\n}\n}\n}", "", exact},
	"connect_ip":                 {"check", "connect_ip 198.51.100.50", "connect_ip", dropped},
	"virtualhost":                {"vs", "virtualhost www.example.org", "virtualhost", dropped},
	"regex":                      {"top", "virtual_server 192.0.2.101 80 {\ndelay_loop 5\nlb_algo rr\nlb_kind DR\nreal_server 198.51.100.11 80 {\nHTTP_GET {\nurl {\npath /\nregex ok\n}\nconnect_timeout 1\n}\n}\n}", "regex", dropped},
	"static_ipaddress":           {"top", "static_ipaddress {\n192.0.2.9/24 dev eth0\n}", "static_ipaddress", dropped},
	"static_routes":              {"top", "static_routes {\n203.0.113.0/24 via 192.0.2.254\n}", "static_routes", dropped},
	"static_rules":               {"top", "static_rules {\nfrom 192.0.2.9 table 5\n}", "static_rules", dropped},
}

// keywordConfig is keywordBase with text in place and the other places
// empty.
func keywordConfig(place, text string) string {
	s := keywordBase
	for _, p := range []string{"global", "instance", "group", "vs", "rs", "check", "top"} {
		v := ""
		if p == place {
			v = text
		}
		s = strings.Replace(s, "%"+p+"%", v, 1)
	}
	return s
}

func importText(t *testing.T, text string) *Result {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Import(path, ImportOptions{Options: Options{ConfigID: "lb-a"}, LookPath: fakeLookPath})
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return res
}

// TestKeywords: each keyword is carried across exactly, approximated or
// dropped as its case says, the report names it when it is not exact,
// and the output passes halb's validation.
func TestKeywords(t *testing.T) {
	base := importText(t, keywordConfig("", ""))
	if len(base.Notes) != 0 {
		t.Fatalf("the base configuration is not converted exactly: %v", base.Notes)
	}
	for name, kc := range keywordCases {
		t.Run(name, func(t *testing.T) {
			res := importText(t, keywordConfig(kc.place, kc.text))
			switch kc.want {
			case exact:
				if len(res.Notes) != 0 {
					t.Errorf("want an exact conversion, got %v", res.Notes)
				}
			default:
				kind := Approximated
				if kc.want == dropped {
					kind = Dropped
				}
				found := false
				for _, n := range res.Notes {
					found = found || (n.Keyword == kc.noteKey && n.Kind == kind)
				}
				if !found {
					t.Errorf("want a note of kind %d on %s, got %v", kind, kc.noteKey, res.Notes)
				}
			}
			if _, err := config.Parse(res.YAML, "import.yaml"); err != nil {
				t.Errorf("the output does not pass halb's validation:\n%v\n%s", err, res.YAML)
			}
		})
	}
}

// TestReadmeKeywordTable: the README's table of keepalived keywords and
// these cases say the same: every keyword it names has a case here with
// the outcome it states (— dropped, ≈ approximated, else exact), and
// every case is in the table.
func TestReadmeKeywordTable(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "## Coming from keepalived")
	if start < 0 {
		t.Fatal(`README has no "## Coming from keepalived" section`)
	}
	section := text[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	code := regexp.MustCompile("`([^`]+)`")
	seen := map[string]bool{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") && !strings.HasPrefix(line, "| group ") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		want := exact
		switch halb := strings.TrimSpace(cells[2]); {
		case strings.HasPrefix(halb, "—"):
			want = dropped
		case strings.HasPrefix(halb, "≈"):
			want = approximated
		}
		for _, item := range strings.Split(cells[1], ",") {
			for _, alt := range strings.Split(item, " / ") {
				for _, m := range code.FindAllStringSubmatch(alt, -1) {
					name := m[1]
					if strings.HasPrefix(strings.TrimSpace(alt), "group ") {
						name = "group " + name
					}
					kc, ok := keywordCases[name]
					switch {
					case !ok:
						t.Errorf("README names %q, which has no case in keywordCases", name)
					case kc.want != want:
						t.Errorf("README says %q is %d, its case %d", name, want, kc.want)
					}
					seen[name] = true
				}
			}
		}
	}
	for name := range keywordCases {
		if !seen[name] {
			t.Errorf("case %q is not in the README's table", name)
		}
	}
}
