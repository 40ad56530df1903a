package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Want is the expectation a broken config carries in its first line:
// "# want: PATH :LINE TEXT" ("-" for a problem with the file as a whole).
type Want struct {
	Path string
	Line int
	Text string
}

var wantRE = regexp.MustCompile(`^# want: (\S+) :(\d+) (.+)$`)

// BrokenCases reads testdata/broken: each file is one broken configuration
// and names the problem halb must report for it.
func brokenCases(t testing.TB) map[string]Want {
	t.Helper()
	files, err := filepath.Glob("testdata/broken/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no broken configs found: %v", err)
	}
	cases := map[string]Want{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(data), "\n")
		m := wantRE.FindStringSubmatch(first)
		if m == nil {
			t.Fatalf("%s: first line must be '# want: PATH :LINE TEXT'", f)
		}
		line, _ := strconv.Atoi(m[2])
		path := m[1]
		if path == "-" {
			path = ""
		}
		cases[f] = Want{Path: path, Line: line, Text: m[3]}
	}
	return cases
}

func TestBrokenConfigs(t *testing.T) {
	cases := brokenCases(t)
	if len(cases) < 30 {
		t.Fatalf("only %d broken configs; the contract asks for at least 30", len(cases))
	}
	for file, want := range cases {
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, err := Load(file)
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Load = %v, want a *config.Error", err)
			}
			for _, p := range cerr.Problems {
				if p.Path == want.Path && p.Line == want.Line && strings.Contains(p.Msg, want.Text) {
					if !strings.Contains(cerr.Error(), file+":"+strconv.Itoa(want.Line)+": "+want.Path) {
						t.Errorf("message does not lead with FILE:LINE: PATH:\n%s", cerr.Error())
					}
					return
				}
			}
			t.Errorf("no problem at %s line %d containing %q; got:\n%s", want.Path, want.Line, want.Text, cerr.Error())
		})
	}
}

func TestExamplesAreValid(t *testing.T) {
	files := []string{"../configs/halb.yaml", "../configs/pi-ipvs.yaml", "../../shared/spec/halb.example.yaml"}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil && strings.Contains(f, "shared") && os.Getenv("CI") != "true" {
			t.Logf("skipping %s: %v", f, err)
			continue
		}
		if _, err := Load(f); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
}

// Every problem in a file is reported in one go, in file order.
func TestAllProblemsAtOnce(t *testing.T) {
	_, err := Parse([]byte(`
log:
  level: loud
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 0
      priority: 300
      virtual_ips: [192.0.2.1/24]
      unicast_src: not-an-ip
`), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *Error, got %v", err)
	}
	var got []string
	for _, p := range cerr.Problems {
		got = append(got, p.Path+":"+strconv.Itoa(p.Line))
	}
	want := "log.level:3 vrrp.instances[0].vrid:8 vrrp.instances[0].priority:9 vrrp.instances[0].unicast_src:11"
	if strings.Join(got, " ") != want {
		t.Errorf("problems = %v\nwant      %s\n%v", got, want, err)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
datapath:
  interfaces: [eth0]
vrrp:
  instances:
    - {name: V4, interface: eth0, vrid: 1, virtual_ips: [192.0.2.1]}
    - {name: V6, interface: eth0, vrid: 1, virtual_ips: ["2001:db8::1/64"]}
services:
  - name: web
    vip: 192.0.2.1
    port: 443
    backends: [{address: 198.51.100.1}, {address: 198.51.100.2, weight: 0}]
  - name: dns
    vip: 192.0.2.1
    port: 53
    protocol: udp
    backends: [{address: 198.51.100.1}]
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := cfg.VRRP.Instances[0], cfg.VRRP.Instances[1]
	if v4.Version != 2 || v6.Version != 3 {
		t.Errorf("versions = %d, %d; want keepalived's 2 for IPv4 and 3 for IPv6", v4.Version, v6.Version)
	}
	if v4.Priority != 100 || v4.AdvertInterval != time.Second || !v4.Preempt || v4.GARPMasterRepeat != 5 || v4.GARPMasterDelay != 5*time.Second {
		t.Errorf("instance defaults = %+v", v4)
	}
	if v4.VirtualIPs[0] != (VirtualIP{Address: netip.MustParsePrefix("192.0.2.1/32")}) {
		t.Errorf("a bare VIP = %v, want a /32", v4.VirtualIPs[0])
	}
	web := cfg.Services[0]
	if web.Protocol != "tcp" || web.Scheduler != "mh" || web.Forward != "dr" || web.Quorum != 1 {
		t.Errorf("service defaults = %+v", web)
	}
	if b := web.Backends; b[0].Port != 443 || b[0].Weight != 1 || b[1].Weight != 0 {
		t.Errorf("backends = %+v; want the service port, weight 1, and an explicit 0 kept", b)
	}
	if hc := web.HealthCheck; hc.Type != "tcp" || hc.Interval != 2*time.Second || hc.Rise != 2 || hc.Fall != 3 {
		t.Errorf("health check defaults = %+v", hc)
	}
	if cfg.Services[1].HealthCheck.Type != "none" {
		t.Errorf("udp service check = %q, want none", cfg.Services[1].HealthCheck.Type)
	}
	if cfg.Datapath.MaxBackends != 4096 {
		t.Errorf("datapath.max_backends defaults to %d, want 4096", cfg.Datapath.MaxBackends)
	}
	if cfg.Datapath.MaglevTableSize != 65537 || cfg.Datapath.BPFFS != "/sys/fs/bpf/halb" || cfg.Control.Socket != "/run/halb/halb.sock" {
		t.Errorf("datapath/control defaults = %+v %+v", cfg.Datapath, cfg.Control)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	t.Setenv("HALB_LOG_LEVEL", "debug")
	t.Setenv("HALB_DATAPATH_MODE", "ipvs")
	t.Setenv("HALB_DATAPATH_CONNTRACK_ENTRIES", "1024")
	cfg, err := Parse([]byte("log:\n  level: info\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "debug" || cfg.Datapath.Mode != "ipvs" || cfg.Datapath.ConntrackEntries != 1024 {
		t.Errorf("overrides not applied: %+v %+v", cfg.Log, cfg.Datapath)
	}

	t.Setenv("HALB_LOG_LEVEL", "loud")
	_, err = Parse([]byte("log:\n  level: info\n"), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Env != "HALB_LOG_LEVEL" {
		t.Fatalf("a bad override must name its variable, got %v", err)
	}
}

// baseConfig is valid, and every key the table tests below change appears
// in it once, so that a case is the one change it names.
const baseConfig = `datapath:
  interfaces: [eth0]
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      priority: 150
      preempt: true
      preempt_delay: 0s
      unicast_src: 192.0.2.1
      unicast_peers: [192.0.2.2]
      virtual_ips: [192.0.2.100/24]
      auth_pass: secret
      track_scripts:
        - {command: [/bin/true], interval: 2s, timeout: 1s, rise: 1, fall: 1}
      track_processes: [{name: haproxy, delay: 0s}]
      garp_master_delay: 5s
      garp_master_refresh: 0s
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    persistence: 0s
    sorry_backend: "198.51.100.99:80"
    backends:
      - {address: 198.51.100.11, port: 80, weight: 1}
    health_check: {type: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, expect_status: [200]}
`

// with returns baseConfig with each old text (which must be there once)
// replaced by the new one that follows it; an empty old text appends the
// new one.
func with(t *testing.T, pairs ...string) []byte {
	t.Helper()
	s := baseConfig
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i] == "" {
			s += pairs[i+1] // an empty old text: append the new one
			continue
		}
		if n := strings.Count(s, pairs[i]); n != 1 {
			t.Fatalf("%q appears %d times in the base config, want once", pairs[i], n)
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return []byte(s)
}

// problemCase is one change to baseConfig and the problem it must cause
// (an empty path: none).
type problemCase struct {
	name    string
	changes []string
	path    string
	text    string
}

func runProblemCases(t *testing.T, cases []problemCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse(with(t, c.changes...), "t.yaml")
			if c.path == "" {
				if err != nil {
					t.Fatalf("refused:\n%v", err)
				}
				if cfg == nil {
					t.Fatal("no config and no error")
				}
				return
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("accepted; want %s: ...%s", c.path, c.text)
			}
			for _, p := range cerr.Problems {
				if p.Path == c.path && strings.Contains(p.Msg, c.text) {
					if p.Line == 0 && p.Env == "" {
						t.Errorf("%v has no line", p)
					}
					return
				}
			}
			t.Errorf("want %s: ...%s; got:\n%v", c.path, c.text, err)
		})
	}
}

func TestBaseConfigIsValid(t *testing.T) {
	if _, err := Parse([]byte(baseConfig), "t.yaml"); err != nil {
		t.Fatal(err)
	}
}

// Numbers and booleans are strict: nothing is rounded, truncated or read
// as another type, and each problem names the field and what it takes.
func TestStrictTypes(t *testing.T) {
	runProblemCases(t, []problemCase{
		{"port with a fraction", []string{"port: 80\n", "port: 80.9\n"}, "services[0].port", "80.9 is not a whole number"},
		{"weight true", []string{"weight: 1}", "weight: true}"}, "services[0].backends[0].weight", "true is not a whole number"},
		{"rise true", []string{"rise: 2,", "rise: true,"}, "services[0].health_check.rise", "true is not a whole number"},
		{"track script fall false", []string{"fall: 1}", "fall: false}"}, "vrrp.instances[0].track_scripts[0].fall", "false is not a whole number"},
		{"priority quoted", []string{"priority: 150", `priority: "150"`}, "vrrp.instances[0].priority", `"150" is not a whole number: write it without quotes`},
		{"vrid as text", []string{"vrid: 51", "vrid: fifty"}, "vrrp.instances[0].vrid", `"fifty" is not a whole number`},
		{"preempt 1", []string{"preempt: true", "preempt: 1"}, "vrrp.instances[0].preempt", "1 is not true or false"},
		{"preempt yes", []string{"preempt: true", "preempt: yes"}, "vrrp.instances[0].preempt", `"yes" is not true or false`},
		{"preempt quoted", []string{"preempt: true", `preempt: "true"`}, "vrrp.instances[0].preempt", "write it without quotes"},
		{"preempt empty", []string{"preempt: true", "preempt:"}, "vrrp.instances[0].preempt", "has no value"},
		{"weight empty", []string{"weight: 1}", "weight: }"}, "services[0].backends[0].weight", "has no value"},
		{"expect_status bool", []string{"expect_status: [200]", "expect_status: [true]"}, "services[0].health_check.expect_status[0]", "true is not a whole number"},
		{"port beyond int64", []string{"port: 80\n", "port: 99999999999999999999\n"}, "services[0].port", "99999999999999999999 is too large"},
		{"weight beyond int64", []string{"weight: 1}", "weight: 18446744073709551615}"}, "services[0].backends[0].weight", "18446744073709551615 is too large"},
		{"rise 1e300", []string{"rise: 2,", "rise: 1e300,"}, "services[0].health_check.rise", "1e300 is too large"},
		{"rise nan", []string{"rise: 2,", "rise: .nan,"}, "services[0].health_check.rise", ".nan is not a whole number"},
		// Text keys take text: YAML reads 0123 as 83 and 1.10 as 1.1, so
		// turning the number back into text would change it.
		{"name a number", []string{"name: VI_1", "name: 5"}, "vrrp.instances[0].name", `5 is not a string: write it in quotes ("5")`},
		{"auth_pass octal-looking", []string{"auth_pass: secret", "auth_pass: 0123"}, "vrrp.instances[0].auth_pass", `0123 is not a string: write it in quotes ("0123")`},
		{"auth_pass boolean", []string{"auth_pass: secret", "auth_pass: true"}, "vrrp.instances[0].auth_pass", "true is not a string"},
		{"name a date", []string{"name: web", "name: 2001-12-14"}, "services[0].name", "2001-12-14 is not a string"},
		// Addresses and mappings take nothing else.
		{"vip a number", []string{"vip: 192.0.2.100", "vip: 5"}, "services[0].vip", "5 is not an IP address"},
		{"vip a mapping", []string{"vip: 192.0.2.100", "vip: {a: 1}"}, "services[0].vip", "a mapping is not an IP address"},
		{"unicast_src true", []string{"unicast_src: 192.0.2.1", "unicast_src: true"}, "vrrp.instances[0].unicast_src", "true is not an IP address"},
		{"virtual IP a number", []string{"virtual_ips: [192.0.2.100/24]", "virtual_ips: [5]"}, "vrrp.instances[0].virtual_ips[0]", "5 is not an IP address or ADDRESS/LENGTH"},
		{"sorry_backend a number", []string{`sorry_backend: "198.51.100.99:80"`, "sorry_backend: 5"}, "services[0].sorry_backend", "5 is not ADDRESS:PORT"},
		{"health_check a number", []string{"health_check: {type: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, expect_status: [200]}", "health_check: 5"}, "services[0].health_check", "5 is not a mapping of keys"},
		{"tracked interface a number", []string{"auth_pass: secret", "auth_pass: secret\n      track_interfaces: [eth1, 5]"}, "vrrp.instances[0].track_interfaces[1]", "5 is not an interface name"},
		{"command a number", []string{"command: [/bin/true]", "command: 5"}, "vrrp.instances[0].track_scripts[0].command[0]", `5 is not a string: write it in quotes ("5")`},
		// What stays accepted: a whole number written as a float is that
		// number, quoted numbers as text, one item for a list.
		{"port 80.0", []string{"port: 80\n", "port: 80.0\n"}, "", ""},
		{"weight 1e0", []string{"weight: 1}", "weight: 1e0}"}, "", ""},
		{"name quoted number", []string{"name: VI_1", `name: "5"`}, "", ""},
		{"one status", []string{"expect_status: [200]", "expect_status: 200"}, "", ""},
	})
}

// Every type problem in a file is reported at once, each on its line.
func TestStrictTypesAllAtOnce(t *testing.T) {
	_, err := Parse(with(t, "priority: 150", "priority: 1.5", "preempt: true", "preempt: 0",
		"port: 80\n", "port: 80.9\n", "weight: 1}", "weight: true}"), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *Error, got %v", err)
	}
	var got []string
	for _, p := range cerr.Problems {
		got = append(got, p.Path+":"+strconv.Itoa(p.Line))
	}
	// The lines are found in baseConfig, which grows with new keys.
	line := func(text string) int { return strings.Count(baseConfig[:strings.Index(baseConfig, text)], "\n") + 1 }
	want := fmt.Sprintf("vrrp.instances[0].priority:%d vrrp.instances[0].preempt:%d services[0].port:%d services[0].backends[0].weight:%d",
		line("priority: 150"), line("preempt: true"), line("port: 80\n"), line("weight: 1}"))
	if strings.Join(got, " ") != want {
		t.Errorf("problems = %v\nwant      %s\n%v", got, want, err)
	}
}

// HALB_* variables hold text and are converted to their key's type; one
// that does not convert is named in the problem.
func TestEnvironmentOverridesTyped(t *testing.T) {
	t.Setenv("HALB_DATAPATH_MAX_BACKENDS", " 8192 ")
	t.Setenv("HALB_DATAPATH_INTERFACES", "eth0, eth1")
	cfg, err := Parse([]byte(baseConfig), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Datapath.MaxBackends != 8192 || strings.Join(cfg.Datapath.Interfaces, " ") != "eth0 eth1" {
		t.Errorf("overrides not applied: %+v", cfg.Datapath)
	}

	t.Setenv("HALB_DATAPATH_MAX_BACKENDS", "8k")
	t.Setenv("HALB_DATAPATH_MAGLEV_TABLE_SIZE", "251.5")
	_, err = Parse([]byte(baseConfig), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 2 {
		t.Fatalf("want two problems, got %v", err)
	}
	for i, want := range []string{"HALB_DATAPATH_MAGLEV_TABLE_SIZE", "HALB_DATAPATH_MAX_BACKENDS"} {
		if p := cerr.Problems[i]; p.Env != want || !strings.Contains(p.String(), "is not a whole number (set by "+want+")") {
			t.Errorf("problem %d = %q, want one naming %s", i, p.String(), want)
		}
	}

	// A problem with an item of a list the environment set names the
	// variable too.
	os.Unsetenv("HALB_DATAPATH_MAX_BACKENDS")
	os.Unsetenv("HALB_DATAPATH_MAGLEV_TABLE_SIZE")
	t.Setenv("HALB_DATAPATH_INTERFACES", "eth0,an-interface-name-too-long")
	_, err = Parse([]byte(baseConfig), "t.yaml")
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Path != "datapath.interfaces[1]" || cerr.Problems[0].Env != "HALB_DATAPATH_INTERFACES" {
		t.Errorf("want datapath.interfaces[1] set by HALB_DATAPATH_INTERFACES, got %v", err)
	}
}

// fromEnv converts a variable's text to each kind of key; no boolean key
// sits outside a list today, so booleans are tested here directly.
func TestFromEnv(t *testing.T) {
	for _, c := range []struct {
		text string
		typ  reflect.Type
		want any
		err  string
	}{
		{"true", reflect.TypeFor[bool](), true, ""},
		{" false", reflect.TypeFor[bool](), false, ""},
		{"1", reflect.TypeFor[bool](), true, ""},
		{"yes", reflect.TypeFor[bool](), nil, `"yes" is not true or false`},
		{"42", reflect.TypeFor[int](), int64(42), ""},
		{"-7", reflect.TypeFor[int](), int64(-7), ""},
		{"4.5", reflect.TypeFor[int](), nil, `"4.5" is not a whole number`},
		{"0x10", reflect.TypeFor[int](), nil, "not a whole number"},
		{"99999999999999999999", reflect.TypeFor[int](), nil, "not a whole number"},
		{"a,,b ", reflect.TypeFor[[]string](), []string{"a", "b"}, ""},
		{"", reflect.TypeFor[[]string](), []string{}, ""},
		{" debug", reflect.TypeFor[string](), " debug", ""},
		{"1s", reflect.TypeFor[time.Duration](), "1s", ""},
	} {
		got, err := fromEnv(c.text, c.typ)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("fromEnv(%q, %v) = %v, %v; want error %q", c.text, c.typ, got, err, c.err)
		case c.err == "" && (err != nil || !reflect.DeepEqual(got, c.want)):
			t.Errorf("fromEnv(%q, %v) = %#v, %v; want %#v", c.text, c.typ, got, err, c.want)
		}
	}
}

// Each duration's bounds, named in configs/halb.yaml: the value at a
// bound is valid, one step beyond it is refused.
func TestDurationBounds(t *testing.T) {
	const (
		hc = "interval: 2s, timeout: 1s, rise: 2"
		ts = "interval: 2s, timeout: 1s, rise: 1"
	)
	hcPath := "services[0].health_check"
	tsPath := "vrrp.instances[0].track_scripts[0]"
	runProblemCases(t, []problemCase{
		{"health interval at the floor", []string{hc, "interval: 50ms, timeout: 10ms, rise: 2"}, "", ""},
		{"health interval below the floor", []string{hc, "interval: 49ms, timeout: 10ms, rise: 2"}, hcPath + ".interval", "49ms is out of range: use 50ms..24h0m0s"},
		{"health interval 1ns", []string{hc, "interval: 1ns, timeout: 1s, rise: 2"}, hcPath + ".interval", "out of range"},
		{"health interval over a day", []string{hc, "interval: 25h, timeout: 1s, rise: 2"}, hcPath + ".interval", "out of range"},
		{"health timeout below the floor", []string{hc, "interval: 2s, timeout: 9ms, rise: 2"}, hcPath + ".timeout", "9ms is out of range: use 10ms"},
		{"health timeout equal to the interval", []string{hc, "interval: 2s, timeout: 2s, rise: 2"}, hcPath + ".timeout", "2s is as long as the interval 2s"},
		{"health timeout over the interval", []string{hc, "interval: 2s, timeout: 3s, rise: 2"}, hcPath + ".timeout", "3s is longer than the interval 2s"},
		{"health timeout just under the interval", []string{hc, "interval: 2s, timeout: 1999ms, rise: 2"}, "", ""},
		{"track interval at the floor", []string{ts, "interval: 50ms, timeout: 10ms, rise: 1"}, "", ""},
		{"track interval 1ns", []string{ts, "interval: 1ns, timeout: 1ns, rise: 1"}, tsPath + ".interval", "1ns is out of range: use 50ms"},
		{"track timeout 1ns", []string{ts, "interval: 2s, timeout: 1ns, rise: 1"}, tsPath + ".timeout", "1ns is out of range: use 10ms"},
		{"track timeout equal to the interval", []string{ts, "interval: 1s, timeout: 1s, rise: 1"}, tsPath + ".timeout", "as long as the interval"},
		{"track timeout over the interval", []string{ts, "interval: 100ms, timeout: 1s, rise: 1"}, tsPath + ".timeout", "longer than the interval"},
		{"garp refresh off", []string{"garp_master_refresh: 0s", "garp_master_refresh: 0s"}, "", ""},
		{"garp refresh at the floor", []string{"garp_master_refresh: 0s", "garp_master_refresh: 1s"}, "", ""},
		{"garp refresh 1ns", []string{"garp_master_refresh: 0s", "garp_master_refresh: 1ns"}, "vrrp.instances[0].garp_master_refresh", "use 0 (no refresh) or 1s..24h0m0s"},
		{"garp refresh 999ms", []string{"garp_master_refresh: 0s", "garp_master_refresh: 999ms"}, "vrrp.instances[0].garp_master_refresh", "out of range"},
		{"garp refresh negative", []string{"garp_master_refresh: 0s", "garp_master_refresh: -1s"}, "vrrp.instances[0].garp_master_refresh", "must not be negative"},
		{"garp delay off", []string{"garp_master_delay: 5s", "garp_master_delay: 0s"}, "", ""},
		{"garp delay 1ns", []string{"garp_master_delay: 5s", "garp_master_delay: 1ns"}, "vrrp.instances[0].garp_master_delay", "use 0 (no second burst) or 1s"},
		{"garp delay over a day", []string{"garp_master_delay: 5s", "garp_master_delay: 24h1s"}, "vrrp.instances[0].garp_master_delay", "out of range"},
		{"preempt delay at the floor", []string{"preempt_delay: 0s", "preempt_delay: 10ms"}, "", ""},
		{"preempt delay 1ns", []string{"preempt_delay: 0s", "preempt_delay: 1ns"}, "vrrp.instances[0].preempt_delay", "use 0 (pre-empt at once) or 10ms"},
		{"preempt delay at the ceiling", []string{"preempt_delay: 0s", "preempt_delay: 1000s"}, "", ""},
		{"preempt delay over the ceiling", []string{"preempt_delay: 0s", "preempt_delay: 1001s"}, "vrrp.instances[0].preempt_delay", "out of range"},
		{"v3 advert at the floor", []string{"priority: 150", "priority: 150\n      version: 3\n      advert_interval: 10ms", "auth_pass: secret", "auth_pass: \"\""}, "", ""},
		{"v3 advert 1ns", []string{"priority: 150", "priority: 150\n      version: 3\n      advert_interval: 1ns", "auth_pass: secret", "auth_pass: \"\""}, "vrrp.instances[0].advert_interval", "10ms..40.95s"},
		{"v3 advert 5ms", []string{"priority: 150", "priority: 150\n      version: 3\n      advert_interval: 5ms", "auth_pass: secret", "auth_pass: \"\""}, "vrrp.instances[0].advert_interval", "10ms..40.95s"},
		{"persistence 1ns", []string{"persistence: 0s", "persistence: 1ns"}, "services[0].persistence", "use 0 (off) or 1s"},
		{"persistence at the ceiling", []string{"persistence: 0s", "persistence: 4294967s"}, "", ""},
		{"persistence over what IPVS keeps", []string{"persistence: 0s", "persistence: 4294968s"}, "services[0].persistence", "out of range"},
		{"persistence the longest duration", []string{"persistence: 0s", "persistence: 2562047h47m16.854775807s"}, "services[0].persistence", "out of range"},
		{"duration beyond int64", []string{"persistence: 0s", "persistence: 2562048h"}, "services[0].persistence", "is not a duration"},
	})
}

// Every time.Duration in Config has a floor: 1ns is refused wherever it
// is written. The fields are found by reflection, so that a duration added
// later is covered too (baseConfig must then show its key).
func TestEveryDurationHasAFloor(t *testing.T) {
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(baseConfig), &doc); err != nil {
		t.Fatal(err)
	}
	paths := durationPaths(reflect.TypeFor[Config](), "")
	if len(paths) < 9 {
		t.Fatalf("found %d duration fields, want at least 9: %v", len(paths), paths)
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			var copied map[string]any
			data, _ := yaml.Marshal(doc)
			if err := yaml.Unmarshal(data, &copied); err != nil {
				t.Fatal(err)
			}
			if !setPath(copied, path, "1ns") {
				t.Fatalf("baseConfig has no place for %s: add the key, or an item of its list", path)
			}
			data, err := yaml.Marshal(copied)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(data, "t.yaml")
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("%s: 1ns accepted", path)
			}
			for _, p := range cerr.Problems {
				if p.Path == path {
					return
				}
			}
			t.Errorf("%s: 1ns drew no problem of its own:\n%v", path, err)
		})
	}
}

// durationPaths lists the field paths of the durations under t, with
// index 0 for lists.
func durationPaths(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		path := f.Tag.Get("mapstructure")
		if prefix != "" {
			path = prefix + "." + path
		}
		ft := f.Type
		switch {
		case ft == reflect.TypeFor[time.Duration]():
			out = append(out, path)
		case ft.Kind() == reflect.Struct && !isScalarType(ft):
			out = append(out, durationPaths(ft, path)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && !isScalarType(ft.Elem()):
			out = append(out, durationPaths(ft.Elem(), path+"[0]")...)
		}
	}
	return out
}

// setPath sets the value at a field path like a.b[0].c in a decoded YAML
// document, creating the last key; it reports whether the path was there.
func setPath(doc map[string]any, path string, value any) bool {
	var cur any = doc
	parts := strings.Split(path, ".")
	for i, part := range parts {
		name, index, isList := strings.Cut(part, "[")
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if i == len(parts)-1 && !isList {
			m[name] = value
			return true
		}
		cur, ok = m[name]
		if !ok {
			if isList {
				return false
			}
			sub := map[string]any{}
			m[name] = sub
			cur = sub
		}
		if isList {
			n, _ := strconv.Atoi(strings.TrimSuffix(index, "]"))
			list, ok := cur.([]any)
			if !ok || n >= len(list) {
				return false
			}
			cur = list[n]
		}
	}
	return false
}

// A virtual IP is never also a host's address: the node's own
// unicast_src, a peer, a backend or a sorry backend, in any instance or
// service; each problem names both fields.
func TestAddressClashes(t *testing.T) {
	const (
		vips       = "virtual_ips: [192.0.2.100/24]"
		lastInst   = "      garp_master_refresh: 0s\n"
		secondInst = lastInst + "    - {name: VI_2, interface: eth1, vrid: 52, unicast_src: %s, unicast_peers: [%s], virtual_ips: [%s]}\n"
		secondSvc  = "  - {name: dns, vip: %s, port: 53, protocol: udp, backends: [{address: %s}]}\n"
	)
	runProblemCases(t, []problemCase{
		{"vip is unicast_src", []string{vips, "virtual_ips: [192.0.2.100/24, 192.0.2.1/24]"},
			"vrrp.instances[0].virtual_ips[1]", "192.0.2.1 is also vrrp.instances[0].unicast_src, this node's own address"},
		{"vip is a peer", []string{vips, "virtual_ips: [192.0.2.100/24, 192.0.2.2/24]"},
			"vrrp.instances[0].virtual_ips[1]", "192.0.2.2 is also vrrp.instances[0].unicast_peers[0], a peer's own address"},
		{"vip is another instance's unicast_src", []string{lastInst, fmt.Sprintf(secondInst, "192.0.2.100", "192.0.2.3", "192.0.2.200/24")},
			"vrrp.instances[0].virtual_ips[0]", "is also vrrp.instances[1].unicast_src"},
		{"vip is another instance's peer", []string{lastInst, fmt.Sprintf(secondInst, "192.0.2.4", "192.0.2.1", "192.0.2.1/24")},
			"vrrp.instances[1].virtual_ips[0]", "is also vrrp.instances[0].unicast_src"},
		{"vip is a backend", []string{vips, "virtual_ips: [192.0.2.100/24, 198.51.100.11/24]"},
			"services[0].backends[0].address", "198.51.100.11 is also vrrp.instances[0].virtual_ips[1], an address this node takes over"},
		{"vip is a sorry backend", []string{vips, "virtual_ips: [192.0.2.100/24, 198.51.100.99/24]"},
			"services[0].sorry_backend", "198.51.100.99 is also vrrp.instances[0].virtual_ips[1]"},
		{"sorry backend is the service's vip", []string{`sorry_backend: "198.51.100.99:80"`, `sorry_backend: "192.0.2.100:80"`},
			"services[0].sorry_backend", "the service's own vip"},
		{"backend is its own service's vip", []string{"", fmt.Sprintf(secondSvc, "192.0.2.100", "192.0.2.100")},
			"services[1].backends[0].address", "the service's own vip"},
		{"backend of another service is the first's vip", []string{"", fmt.Sprintf(secondSvc, "192.0.2.150", "192.0.2.100")},
			"services[1].backends[0].address", "192.0.2.100 is also vrrp.instances[0].virtual_ips[0]"},
		{"backend is a service vip outside VRRP", []string{"", fmt.Sprintf(secondSvc, "192.0.2.150", "198.51.100.21") +
			fmt.Sprintf(secondSvc, "192.0.2.151", "192.0.2.150")},
			"services[2].backends[0].address", "192.0.2.150 is also services[1].vip"},
		{"distinct addresses", []string{"", fmt.Sprintf(secondSvc, "192.0.2.150", "198.51.100.21")}, "", ""},
	})
}

// Aliases that nest make a small file name a huge number of values: 3 kB
// here name 8 million track-script arguments. Parse refuses it, having
// walked a bounded number of nodes, instead of expanding it.
func TestAliasExpansionBounded(t *testing.T) {
	const k = 200
	var b strings.Builder
	b.WriteString("vrrp:\n  instances:\n    - &i {name: a, interface: eth0, vrid: 1, virtual_ips: [192.0.2.1], track_scripts: [")
	b.WriteString("&t {command: [&c /bin/true" + strings.Repeat(", *c", k-1) + "]}")
	b.WriteString(strings.Repeat(", *t", k-1) + "]}\n")
	b.WriteString(strings.Repeat("    - *i\n", k-1))
	_, err := Parse([]byte(b.String()), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || !strings.Contains(cerr.Problems[0].Msg, "aliases (*name) in the file expand to more than") {
		t.Fatalf("want one problem about the aliases' expansion, got %v", err)
	}
}

// Anchors, aliases and merge keys used to write a file once are fine.
func TestAliasesWithinBounds(t *testing.T) {
	cfg, err := Parse([]byte(`datapath:
  interfaces: [eth0]
x-defaults: &hc {type: tcp, interval: 1s, timeout: 500ms}
`), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), `unknown key "x-defaults"`) {
		t.Fatalf("an unknown key holding an anchor: %v, %v", cfg, err)
	}
	cfg, err = Parse([]byte(`datapath:
  interfaces: [eth0]
services:
  - &web
    name: web
    vip: 192.0.2.100
    port: 80
    backends: &backends [{address: 198.51.100.11}, {address: 198.51.100.12}]
    health_check: &hc {type: tcp, interval: 1s, timeout: 500ms}
  - <<: *web
    name: web-alt
    port: 8080
    backends: [{address: 198.51.100.11, port: 8080}]
    health_check: *hc
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Services[1]; s.VIP != cfg.Services[0].VIP || s.Port != 8080 || s.HealthCheck.Interval != time.Second {
		t.Errorf("merged service = %+v", s)
	}
}

// A problem in a merged or aliased part of the file is reported on the
// line that wrote the value: the merged mapping's key, or the key that
// overrides it; a key of an aliased item, where its anchor wrote it.
func TestLinesThroughAliases(t *testing.T) {
	_, err := Parse([]byte(`datapath:
  interfaces: [eth0]
services:
  - &web
    name: web
    vip: 192.0.2.100
    port: 0
    backends: [&be {address: 198.51.100.11, port: 80, weight: -1}]
  - <<: *web
    name: web-alt
    port: 70000
    backends: [*be]
`), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *Error, got %v", err)
	}
	want := map[string]int{
		"services[0].port":               7,
		"services[0].backends[0].weight": 8,
		"services[1].port":               11,
		"services[1].backends[0].weight": 8, // the alias's anchor wrote it
	}
	got := map[string]int{}
	for _, p := range cerr.Problems {
		got[p.Path] = p.Line
	}
	for path, line := range want {
		if got[path] != line {
			t.Errorf("%s on line %d, want %d\n%v", path, got[path], line, err)
		}
	}
}

// A file of more values than halb reads in one configuration is refused
// with one problem, before YAML builds a tree of them: a flow list on one
// line and a block list alike.
func TestTooManyValues(t *testing.T) {
	head := "services:\n  - name: web\n    health_check:\n      expect_status: "
	flow := head + "[" + strings.Repeat("9,", maxNodes) + "9]\n"
	block := head + "\n" + strings.Repeat("        - 9\n", maxNodes+1)
	for name, data := range map[string]string{"flow": flow, "block": block} {
		_, err := Parse([]byte(data), "t.yaml")
		var cerr *Error
		if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || !strings.Contains(cerr.Problems[0].Msg, "values or more, beyond the") {
			t.Errorf("%s list of %d items: want one problem about its size, got %d problems", name, maxNodes+1, len(cerr.Problems))
		}
	}
}

// The bound on values still takes the largest configuration halb is built
// for (the control plane's target: 1000 services of 100 backends, each
// with address, port and weight).
func TestLargestSiteParses(t *testing.T) {
	if testing.Short() {
		t.Skip("parses a 7 MB file")
	}
	cfg, err := Parse(largestSite(), "large.yaml")
	if err != nil {
		t.Fatalf("a 1000x100 configuration is refused: %v", err)
	}
	if n := len(cfg.Services) * len(cfg.Services[0].Backends); n != 100000 {
		t.Errorf("%d backends, want 100000", n)
	}
}

// largestSite is the configuration of the largest site halb is built
// for: 1000 services of 100 backends, each with address, port and weight
// (6.9 MB, about 713 000 YAML nodes).
func largestSite() []byte {
	var b strings.Builder
	b.WriteString("datapath:\n  mode: xdp\n  interfaces: [eth0]\n  max_backends: 131072\nservices:\n")
	for s := range 1000 {
		fmt.Fprintf(&b, "  - name: svc%d\n    vip: 203.0.113.%d\n    port: %d\n    scheduler: mh\n    forward: dr\n    backends:\n", s, 1+s%250, 1000+s)
		for k := range 100 {
			fmt.Fprintf(&b, "      - address: 198.51.%d.%d\n        port: %d\n        weight: 1\n", 100+k/250, 1+k%250, 1000+s)
		}
	}
	return []byte(b.String())
}

// roughNodes counts no more than YAML finds in halb's own files, and
// ignores commas and brackets in quotes and comments.
func TestRoughNodes(t *testing.T) {
	files, _ := filepath.Glob("testdata/broken/*.yaml")
	files = append(files, "../configs/halb.yaml", "../configs/pi-ipvs.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) != nil {
			continue
		}
		if r, n := roughNodes(data), countNodes(&doc); r > n {
			t.Errorf("%s: roughNodes %d > %d nodes", f, r, n)
		}
	}
	for _, c := range []struct {
		yaml string
		want int
	}{
		{"a: [1, 2, 3]", 4},
		{"a: '1, 2, [3]'", 1},
		{`a: "1, \", 2"`, 1},
		{`a: 'it''s, [x]'`, 1},
		{"a: b # c, d, [e]\n", 1},
		{"a: b#c,d\n", 2},
		{"a: it's, [x, y]", 4},
		{"# only, a, comment\n\n  \n", 0},
		{"- 1\n- 2\r\n- 3", 3},
	} {
		if got := roughNodes([]byte(c.yaml)); got != c.want {
			t.Errorf("roughNodes(%q) = %d, want %d", c.yaml, got, c.want)
		}
	}
}

// A file wrong throughout prints its first problems and a count, not a
// screen per problem.
func TestManyProblemsShownBounded(t *testing.T) {
	data := "services:\n  - name: web\n    health_check:\n      type: http\n      expect_status: [" + strings.Repeat("9, ", 149) + "9]\n"
	_, err := Parse([]byte(data), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) < 150 {
		t.Fatalf("want at least 150 problems, got %v", err)
	}
	lines := strings.Split(cerr.Error(), "\n")
	if len(lines) != maxShownProblems+1 || lines[maxShownProblems] != fmt.Sprintf("t.yaml: %d more problems not shown: fix those above and check again", len(cerr.Problems)-maxShownProblems) {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

// The scheduler lists are handed out as copies: a package that changes
// what it got changes no other package's list, nor what validation reads.
func TestSchedulerListsAreCopies(t *testing.T) {
	bpf, ipvs := BPFSchedulers(), IPVSSchedulers()
	if want := []string{"mh", "rr", "wrr", "sh"}; !reflect.DeepEqual(bpf, want) {
		t.Fatalf("BPFSchedulers = %q, want %q", bpf, want)
	}
	if len(ipvs) != 14 || !reflect.DeepEqual(ipvs[:4], bpf) || ipvs[4] != "lc" {
		t.Fatalf("IPVSSchedulers = %q, want the eBPF ones first, then lc ... twos", ipvs)
	}
	bpf[0] = "changed"
	_ = append(bpf[:1], "appended")
	ipvs[0], ipvs[4] = "changed", "changed"
	if got := BPFSchedulers(); got[0] != "mh" || got[1] != "rr" {
		t.Errorf("BPFSchedulers after a caller changed its copy: %q", got)
	}
	if got := IPVSSchedulers(); got[0] != "mh" || got[4] != "lc" {
		t.Errorf("IPVSSchedulers after a caller changed its copy: %q", got)
	}
}

// Looking for secrets skips the lists whose items cannot hold one (the
// services and their backends) and keeps those that can (a VRRP
// instance's auth_pass).
func TestMayHoldSecret(t *testing.T) {
	for typ, want := range map[reflect.Type]bool{
		reflect.TypeFor[Config]():    true,
		reflect.TypeFor[Instance]():  true,
		reflect.TypeFor[[]Service](): false,
		reflect.TypeFor[Backend]():   false,
		reflect.TypeFor[SyncGroup](): false,
	} {
		if got := mayHoldSecret(typ); got != want {
			t.Errorf("mayHoldSecret(%v) = %v, want %v", typ, got, want)
		}
	}
}

// A merge key brings in one mapping or a list of them: the mapping's own
// keys win, then the first merged mapping that has the key; a merge of
// anything else is a problem on its line.
func TestMergeKeys(t *testing.T) {
	cfg, err := Parse([]byte(`datapath:
  interfaces: eth0,eth1
services:
  - &a {name: a, vip: 192.0.2.100, port: 80, scheduler: rr, backends: [{address: 198.51.100.11}]}
  - &b {name: b, vip: 192.0.2.101, port: 81, forward: tun, scheduler: sh, backends: [{address: 198.51.100.12}]}
  - <<: [*a, *b]
    name: c
    port: 82
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Datapath.Interfaces; strings.Join(got, " ") != "eth0 eth1" {
		t.Errorf("interfaces: eth0,eth1 = %q, want a list of two", got)
	}
	c := cfg.Services[2]
	if c.Name != "c" || c.Port != 82 || c.Scheduler != "rr" || c.Forward != "tun" || c.VIP != cfg.Services[0].VIP {
		t.Errorf("merged service = %+v", c)
	}
	if b := c.Backends; len(b) != 1 || b[0].Address != cfg.Services[0].Backends[0].Address || b[0].Port != 82 {
		t.Errorf("merged backends = %+v, want a's, on c's port", b)
	}

	_, err = Parse([]byte("datapath:\n  interfaces: [eth0]\nservices:\n  - name: a\n    <<: 5\n"), "t.yaml")
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 || cerr.Problems[0].Line != 5 || !strings.Contains(cerr.Problems[0].Msg, "<< merges mappings") {
		t.Errorf("a merge of a number: %v", err)
	}
}

// The decoder takes every width of whole number, so that a key added
// later with one is as strict as the int keys of today.
func TestDecodeIntegerWidths(t *testing.T) {
	type widths struct {
		U16 uint16 `mapstructure:"u16"`
		I8  int8   `mapstructure:"i8"`
		U64 uint64 `mapstructure:"u64"`
	}
	for _, c := range []struct {
		yaml, path, msg string
	}{
		{"{u16: 65535, i8: -128, u64: 0x10}", "", ""},
		{"{u16: 0177777, i8: -0200, u64: 020}", "", ""}, // as YAML reads them: octal
		{"{u16: 65536}", "u16", "65536 is out of range: use 0..65535"},
		{"{u16: -1}", "u16", "-1 is out of range: use 0..65535"},
		{"{i8: 128}", "i8", "128 is out of range: use -128..127"},
		{"{u64: 1.5}", "u64", "1.5 is not a whole number"},
	} {
		var node yaml.Node
		if err := yaml.Unmarshal([]byte(c.yaml), &node); err != nil {
			t.Fatal(err)
		}
		var w widths
		d := &decoder{failed: map[string]bool{}, budget: 100, limit: 100}
		d.value(node.Content[0], reflect.ValueOf(&w).Elem(), 1)
		switch {
		case c.path == "" && len(d.problems) > 0:
			t.Errorf("%s: %v", c.yaml, d.problems)
		case c.path == "" && (w.U16 != 65535 || w.I8 != -128 || w.U64 != 16):
			t.Errorf("%s = %+v", c.yaml, w)
		case c.path != "" && (len(d.problems) != 1 || d.problems[0].Path != c.path || d.problems[0].Msg != c.msg):
			t.Errorf("%s: %v, want %s: %s", c.yaml, d.problems, c.path, c.msg)
		}
	}
}
