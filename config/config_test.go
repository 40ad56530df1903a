package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
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
	if v4.VirtualIPs[0] != netip.MustParsePrefix("192.0.2.1/32") {
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
