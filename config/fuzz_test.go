package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// FuzzLoad feeds arbitrary bytes to Load as a file, the path `halb check`
// takes, and to Parse beside it. For every input:
//   - Load and Parse return a config or an *Error listing at least one
//     problem, never both and never neither, and never panic;
//   - Parse decides the same way twice (no map order leaks into the result
//     or the order of the problems);
//   - Load differs from Parse only by CheckScripts' problems, which concern
//     notify and track scripts and exec health checks only;
//   - every problem says something, and its line is in the file;
//   - a config Parse accepts validates again without a problem, and holds
//     the properties checked by acceptedInvariants (types as written,
//     durations within their floors, no virtual IP that is a host's
//     address), each checked here independently of Validate.
func FuzzLoad(f *testing.F) {
	for _, data := range exampleFiles(f) {
		f.Add(data)
	}
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	// One file per fuzzing process, rewritten for each input: the
	// inputs of one process run one after the other.
	path := filepath.Join(f.TempDir(), "halb.yaml")

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, path)
		problems := checkResult(t, "Parse", data, cfg, err)

		cfg2, err2 := Parse(data, path)
		if !reflect.DeepEqual(cfg, cfg2) || !reflect.DeepEqual(err, err2) {
			t.Fatalf("Parse is not deterministic:\n%v, %v\nthen\n%v, %v", cfg, err, cfg2, err2)
		}
		if cfg != nil {
			if again := Validate(cfg); len(again) > 0 {
				t.Fatalf("Parse accepted a config that Validate then refuses: %v", again)
			}
			acceptedInvariants(t, data, cfg)
		}

		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		lcfg, lerr := Load(path)
		lproblems := checkResult(t, "Load", data, lcfg, lerr)
		switch {
		case cfg == nil:
			if !reflect.DeepEqual(lproblems, problems) {
				t.Fatalf("Load and Parse disagree:\nLoad:  %v\nParse: %v", lerr, err)
			}
		case lcfg != nil:
			if !reflect.DeepEqual(lcfg, cfg) {
				t.Fatalf("Load and Parse accepted different configs:\n%+v\n%+v", lcfg, cfg)
			}
		default:
			// Only the scripts can fail a config Parse accepts.
			for _, p := range lproblems {
				if !strings.HasSuffix(p.Path, ".notify") && !strings.Contains(p.Path, ".track_scripts[") &&
					!strings.HasSuffix(p.Path, ".health_check.command[0]") {
					t.Fatalf("Load refused what Parse accepted, not for a script: %v", p)
				}
			}
		}
	})
}

// checkResult checks what Parse or Load (named by op) returned for data,
// and returns the problems.
func checkResult(t *testing.T, op string, data []byte, cfg *Config, err error) []Problem {
	t.Helper()
	if (cfg == nil) == (err == nil) {
		t.Fatalf("%s must return a config or an error, got %v, %v", op, cfg, err)
	}
	if err == nil {
		return nil
	}
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) == 0 {
		t.Fatalf("%s: error without problems: %v", op, err)
	}
	// An upper bound: YAML breaks lines at \r as well as \n, and YAML
	// 1.1 at NEL, LS and PS.
	lines := 1
	for _, sep := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
		lines += bytes.Count(data, []byte(sep))
	}
	for _, p := range cerr.Problems {
		if p.Msg == "" {
			t.Fatalf("%s: a problem without a message: %+v", op, p)
		}
		if p.Line < 0 || p.Line > lines {
			t.Fatalf("%s: problem on line %d of a %d-line file: %v", op, p.Line, lines, p)
		}
	}
	return cerr.Problems
}

// fuzzSeeds are baseConfig with wrong-typed numbers and booleans, huge
// values, and durations at and just below their floors, for the fuzzer to
// start from next to the example and broken files.
func fuzzSeeds() [][]byte {
	changes := [][2]string{
		{"port: 80\n", "port: 80.9\n"},
		{"port: 80\n", "port: 80.0\n"},
		{"port: 80\n", "port: 1e300\n"},
		{"port: 80\n", "port: 99999999999999999999\n"},
		{"port: 80\n", "port: -9223372036854775809\n"},
		{"port: 80\n", "port: \"80\"\n"},
		{"port: 80\n", "port: 0x50\n"},
		{"weight: 1}", "weight: true}"},
		{"weight: 1}", "weight: 18446744073709551615}"},
		{"weight: 1}", "weight: .inf}"},
		{"weight: 1}", "weight: }"},
		{"rise: 2,", "rise: true,"},
		{"rise: 2,", "rise: .nan,"},
		{"priority: 150", "priority: 150.5"},
		{"vrid: 51", "vrid: [51]"},
		{"preempt: true", "preempt: 1"},
		{"preempt: true", "preempt: \"true\""},
		{"preempt: true", "preempt: ~"},
		{"name: VI_1", "name: 5"},
		{"auth_pass: secret", "auth_pass: 0123"},
		{"expect_status: [200]", "expect_status: 200"},
		{"expect_status: [200]", "expect_status: [200.5]"},
		{"interval: 2s, timeout: 1s, rise: 2", "interval: 50ms, timeout: 10ms, rise: 2"},
		{"interval: 2s, timeout: 1s, rise: 2", "interval: 49ms, timeout: 9ms, rise: 2"},
		{"interval: 2s, timeout: 1s, rise: 2", "interval: 1ns, timeout: 1ns, rise: 2"},
		{"interval: 2s, timeout: 1s, rise: 2", "interval: 2s, timeout: 2s, rise: 2"},
		{"interval: 2s, timeout: 1s, rise: 1", "interval: 50ms, timeout: 49ms, rise: 1"},
		{"interval: 2s, timeout: 1s, rise: 1", "interval: 1ns, timeout: 1s, rise: 1"},
		{"garp_master_refresh: 0s", "garp_master_refresh: 1s"},
		{"garp_master_refresh: 0s", "garp_master_refresh: 999ms"},
		{"garp_master_refresh: 0s", "garp_master_refresh: 1ns"},
		{"garp_master_delay: 5s", "garp_master_delay: 1ns"},
		{"preempt_delay: 0s", "preempt_delay: 9ms"},
		{"persistence: 0s", "persistence: 4294968s"},
		{"persistence: 0s", "persistence: 2562047h47m16.854775807s"},
		{"virtual_ips: [192.0.2.100/24]", "virtual_ips: [192.0.2.100/24, 192.0.2.1/24]"},
		{"virtual_ips: [192.0.2.100/24]", "virtual_ips: [192.0.2.100/24, 198.51.100.11/24]"},
		{"virtual_ips: [192.0.2.100/24]", "virtual_ips: [192.0.2.100/24, {address: 198.51.100.100/24, interface: eth1}]\n" +
			"      virtual_ips_excluded: [{address: \"2001:db8::5/64\", interface: eth1}, 192.0.2.1]\n" +
			"      virtual_routes: [{to: 203.0.113.0/24, via: 198.51.100.254, interface: eth1, metric: 5}, {to: 0.0.0.0/0, blackhole: true, table: 100}]\n" +
			"      virtual_rules: [{from: 198.51.100.100/32, table: 100, priority: 100, fwmark: 7}]"},
		{"sorry_backend: \"198.51.100.99:80\"", "sorry_backend: \"192.0.2.100:80\""},
		{"vip: 192.0.2.100\n    port: 80\n", "listen: [\"192.0.2.100:80\", \"192.0.2.101:80\"]\n"},
		{"vip: 192.0.2.100\n    port: 80\n", "listen: [\"192.0.2.100:80\", \"[2001:db8::1]:81\"]\n"},
		{"expect_status: [200]", "port: 8080, source: 192.0.2.1, urls: [{path: /a, digest: \"md5:9e107d9d372bb6826bd81d3542a419d6\"}, {path: /b, expect_status: [204]}]"},
	}
	var seeds [][]byte
	for _, c := range changes {
		seeds = append(seeds, []byte(strings.Replace(baseConfig, c[0], c[1], 1)))
	}
	// Aliases that nest: a few lines naming thousands of values.
	seeds = append(seeds, []byte("vrrp:\n  instances:\n    - &i {name: a, interface: eth0, vrid: 1, virtual_ips: [192.0.2.1], "+
		"track_scripts: [&t {command: [&c /bin/true, *c, *c, *c]}, *t, *t, *t]}\n    - *i\n    - *i\n"))
	return seeds
}

// acceptedInvariants checks a config Parse accepted from data against
// the rules of issue 14, each by its own means rather than Validate's.
func acceptedInvariants(t *testing.T, data []byte, cfg *Config) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("Parse accepted what YAML cannot read: %v", err)
	}
	if len(doc.Content) > 0 {
		scalarsAsWritten(t, doc.Content[0], reflect.TypeFor[Config](), "")
	}
	durationsWithinFloors(t, reflect.ValueOf(*cfg), "")
	for _, in := range cfg.VRRP.Instances {
		for _, s := range cfg.Services {
			if s.HealthCheck.Type != "none" && s.HealthCheck.Timeout >= s.HealthCheck.Interval {
				t.Fatalf("%s: health-check timeout %s is not below its interval %s", s.Name, s.HealthCheck.Timeout, s.HealthCheck.Interval)
			}
		}
		for _, ts := range in.TrackScripts {
			if ts.Timeout >= ts.Interval {
				t.Fatalf("%s: track-script timeout %s is not below its interval %s", in.Name, ts.Timeout, ts.Interval)
			}
		}
	}
	hosts := map[netip.Addr]bool{}
	for _, in := range cfg.VRRP.Instances {
		hosts[in.UnicastSrc.WithZone("")] = true
		for _, p := range in.UnicastPeers {
			hosts[p.WithZone("")] = true
		}
	}
	for _, s := range cfg.Services {
		for _, b := range s.Backends {
			hosts[b.Address.WithZone("")] = true
		}
		hosts[s.SorryBackend.Addr().WithZone("")] = true
	}
	for _, in := range cfg.VRRP.Instances {
		for _, v := range in.HeldVIPs() {
			if p := v.Address; hosts[p.Addr()] {
				t.Fatalf("%s: virtual IP %s is also a host's address (unicast_src, peer or backend)", in.Name, p.Addr())
			}
		}
	}
	backends := map[netip.Addr]bool{}
	for _, s := range cfg.Services {
		for _, b := range s.Backends {
			backends[b.Address.WithZone("")] = true
		}
	}
	for _, s := range cfg.Services {
		pairs := s.Pairs()
		for _, p := range pairs {
			switch {
			case p.Port() == 0 || !p.Addr().IsValid():
				t.Fatalf("%s: served on %s, no VIP:port", s.Name, p)
			case p.Addr().Is6() != pairs[0].Addr().Is6():
				t.Fatalf("%s: a group of two families: %v", s.Name, pairs)
			case backends[p.Addr()]:
				t.Fatalf("%s: VIP %s is also a backend's address", s.Name, p.Addr())
			}
		}
		for _, b := range s.Backends {
			if b.Address.Is6() != pairs[0].Addr().Is6() {
				t.Fatalf("%s: backend %s of another family than its VIPs %v", s.Name, b.Address, pairs)
			}
		}
	}
}

// scalarsAsWritten: in an accepted file, a number key holds a YAML integer
// (or a float with no fraction), a boolean key a YAML boolean, and a text
// key no number or boolean.
func scalarsAsWritten(t *testing.T, n *yaml.Node, typ reflect.Type, path string) {
	t.Helper()
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch {
	case n.Kind == yaml.MappingNode && typ.Kind() == reflect.Struct && !isScalarType(typ):
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "<<" {
				scalarsAsWritten(t, n.Content[i+1], typ, path)
				continue
			}
			if f, ok := fieldByTag(typ, n.Content[i].Value); ok {
				scalarsAsWritten(t, n.Content[i+1], f.Type, path+"."+n.Content[i].Value)
			}
		}
	case n.Kind == yaml.MappingNode && typ.Kind() == reflect.Slice:
		// merged: each item is a mapping, walked as one
	case n.Kind == yaml.SequenceNode && typ.Kind() == reflect.Slice:
		for i, item := range n.Content {
			scalarsAsWritten(t, item, typ.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case n.Kind == yaml.ScalarNode && typ.Kind() == reflect.Slice:
		scalarsAsWritten(t, n, typ.Elem(), path)
	case n.Kind == yaml.ScalarNode:
		tag := n.ShortTag()
		switch {
		case typ == reflect.TypeFor[time.Duration]() || isScalarType(typ) || typ.Kind() == reflect.Struct:
		case typ.Kind() == reflect.Bool:
			if tag != "!!bool" {
				t.Fatalf("%s: %s %q accepted for a boolean", path, tag, n.Value)
			}
		case isIntKind(typ.Kind()):
			var f float64
			var v any
			if tag == "!!float" && n.Decode(&v) == nil {
				f, _ = v.(float64)
			}
			if tag != "!!int" && (tag != "!!float" || f != math.Trunc(f)) {
				t.Fatalf("%s: %s %q accepted for a whole number", path, tag, n.Value)
			}
		case typ.Kind() == reflect.String:
			if tag != "!!str" && tag != "!!null" {
				t.Fatalf("%s: %s %q accepted for text", path, tag, n.Value)
			}
		}
	}
}

// durationsWithinFloors: no accepted duration is negative, and none but 0
// is below 10ms (the lowest floor of all, VRRPv3's advert unit).
func durationsWithinFloors(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		if d := time.Duration(v.Int()); d < 0 || (d > 0 && d < 10*time.Millisecond) {
			t.Fatalf("%s: %s accepted", path, d)
		}
	case v.Kind() == reflect.Struct && !isScalarType(v.Type()):
		for i := range v.NumField() {
			durationsWithinFloors(t, v.Field(i), path+"."+v.Type().Field(i).Name)
		}
	case v.Kind() == reflect.Slice:
		for i := range v.Len() {
			durationsWithinFloors(t, v.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

// FuzzEnvOverride feeds arbitrary text to HALB_* variables of a number and
// a list key. Parse either applies exactly the value the text says (as
// strconv and a comma split read it) or refuses it, naming the variable;
// it never truncates, wraps or guesses.
func FuzzEnvOverride(f *testing.F) {
	for _, s := range []string{"4096", " 8192 ", "8k", "1e3", "80.9", "0x10", "-1", "99999999999999999999", "", "true", "eth0,eth1", " eth0 , ,eth1 "} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, number, list string) {
		if strings.ContainsRune(number, 0) || strings.ContainsRune(list, 0) {
			return // no environment variable holds a NUL
		}
		t.Setenv("HALB_DATAPATH_MAX_BACKENDS", number)
		t.Setenv("HALB_DATAPATH_INTERFACES", list)
		cfg, err := Parse([]byte(baseConfig), "t.yaml")
		want, perr := strconv.ParseInt(strings.TrimSpace(number), 10, 64)
		if err != nil {
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error without problems: %v", err)
			}
			for _, p := range cerr.Problems {
				if p.Env == "" || !strings.HasPrefix(p.Env, "HALB_DATAPATH_") {
					t.Fatalf("a problem that names no variable: %+v", p)
				}
			}
			return
		}
		if perr != nil || int64(cfg.Datapath.MaxBackends) != want {
			t.Fatalf("HALB_DATAPATH_MAX_BACKENDS=%q gave max_backends %d", number, cfg.Datapath.MaxBackends)
		}
		var items []string
		for item := range strings.SplitSeq(list, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		if !slices.Equal(items, cfg.Datapath.Interfaces) {
			t.Fatalf("HALB_DATAPATH_INTERFACES=%q gave interfaces %q", list, cfg.Datapath.Interfaces)
		}
	})
}
