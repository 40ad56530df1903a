package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	yaml "go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes the environment variables that override config keys:
// HALB_LOG_LEVEL overrides log.level.
const EnvPrefix = "HALB"

// Load reads, decodes and validates the file at path, and checks that the
// scripts it names can be run safely on this host (CheckScripts). The
// error, when the file is readable, is an *Error listing every problem.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	if problems := CheckScripts(cfg); len(problems) > 0 {
		e := &Error{File: path, Problems: problems}
		return nil, e.finish(lineIndex(data))
	}
	return cfg, nil
}

// lineIndex maps field paths to their lines, for problems found after
// decoding.
func lineIndex(data []byte) map[string]int {
	lines := map[string]int{}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) == nil {
		(&shapeWalk{lines: lines}).walk(&doc, reflect.TypeFor[Config](), "")
	}
	return lines
}

// Parse decodes and validates a configuration held in memory; name is used
// in messages. Environment overrides apply.
func Parse(data []byte, name string) (*Config, error) {
	e := &Error{File: name}

	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		e.add(Problem{Line: yamlErrorLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
		return nil, e
	}
	lines := map[string]int{}
	shape := &shapeWalk{lines: lines}
	shape.walk(&doc, reflect.TypeFor[Config](), "")
	for _, p := range shape.problems {
		e.add(p)
	}
	if shape.fatal {
		return nil, e.finish(lines)
	}

	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for k, d := range topDefaults {
		v.SetDefault(k, d)
	}
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		e.add(Problem{Msg: "read: " + err.Error()})
		return nil, e.finish(lines)
	}
	fillListDefaults(v)

	var cfg Config
	decodeErr := v.UnmarshalExact(&cfg, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		durationHook, addrHook, prefixHook, addrPortHook, trackInterfaceHook,
		mapstructure.StringToWeakSliceHookFunc(","),
	)))
	failed := map[string]bool{}
	for _, p := range decodeProblems(decodeErr) {
		failed[p.Path] = true
		e.add(p)
	}
	for _, p := range Validate(&cfg) {
		if !underFailed(p.Path, failed) {
			e.add(p)
		}
	}
	if len(e.Problems) > 0 {
		return nil, e.finish(lines)
	}
	return &cfg, nil
}

// fillListDefaults gives each list item the keys it omits. Items of lists
// are out of reach of viper's own defaults, and filling them in before
// decoding keeps "absent" and "zero" apart (weight 0 drains a backend; an
// absent weight is 1).
func fillListDefaults(v *viper.Viper) {
	if instances, ok := v.Get("vrrp.instances").([]any); ok {
		for _, it := range instances {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			setMissing(m, instanceDefaults)
			if _, ok := m["version"]; !ok {
				// keepalived's rule: VRRPv2 unless the instance is IPv6,
				// which only VRRPv3 carries (RFC 5798 §1).
				m["version"] = 2
				if vips, ok := m["virtual_ips"].([]any); ok && len(vips) > 0 {
					if s, ok := vips[0].(string); ok && strings.Contains(s, ":") {
						m["version"] = 3
					}
				}
			}
			for _, ts := range listOfMaps(m["track_scripts"]) {
				setMissing(ts, trackScriptDefaults)
			}
		}
		v.Set("vrrp.instances", instances)
	}
	if services, ok := v.Get("services").([]any); ok {
		for _, it := range services {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			setMissing(m, serviceDefaults)
			for _, b := range listOfMaps(m["backends"]) {
				setMissing(b, backendDefaults)
				if _, ok := b["port"]; !ok && m["port"] != nil {
					b["port"] = m["port"]
				}
			}
			hc, ok := m["health_check"].(map[string]any)
			if !ok && m["health_check"] == nil {
				hc = map[string]any{}
				m["health_check"] = hc
			}
			if hc != nil {
				setMissing(hc, healthCheckDefaults)
				if _, ok := hc["type"]; !ok {
					// A UDP service has no connection to probe: unless told
					// how to check it, its backends count as healthy.
					hc["type"] = "tcp"
					if p, _ := m["protocol"].(string); p == "udp" {
						hc["type"] = "none"
					}
				}
			}
		}
		v.Set("services", services)
	}
}

func setMissing(m map[string]any, defaults map[string]any) {
	for k, d := range defaults {
		if _, ok := m[k]; !ok {
			m[k] = d
		}
	}
}

func listOfMaps(v any) []map[string]any {
	list, _ := v.([]any)
	var out []map[string]any
	for _, it := range list {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// Decode hooks: they turn YAML scalars into netip and time types with
// messages that say what was expected.

func durationHook(_ reflect.Type, t reflect.Type, data any) (any, error) {
	if t != reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	switch d := data.(type) {
	case string:
		dur, err := time.ParseDuration(d)
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration: write it with a unit, like \"1s\" or \"50ms\"", d)
		}
		return dur, nil
	case int, int64, uint64, float64:
		// A bare number would decode as nanoseconds: keepalived's
		// "advert_int 1" would become 1ns. Only 0 is unambiguous.
		if fmt.Sprint(d) == "0" {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("%v has no unit: write a duration like \"%vs\" or \"%vms\"", d, d, d)
	}
	return data, nil
}

func addrHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if t != reflect.TypeFor[netip.Addr]() || f.Kind() != reflect.String {
		return data, nil
	}
	s := data.(string)
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		if _, perr := netip.ParsePrefix(s); perr == nil {
			return nil, fmt.Errorf("%q is a prefix: write the address alone, without /length", s)
		}
		return nil, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

func prefixHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if t != reflect.TypeFor[netip.Prefix]() || f.Kind() != reflect.String {
		return data, nil
	}
	s := data.(string)
	if !strings.Contains(s, "/") {
		// A bare address is a host route, as keepalived takes it.
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or ADDRESS/LENGTH", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not ADDRESS/LENGTH (like 192.0.2.100/24)", s)
	}
	return p, nil
}

func addrPortHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if t != reflect.TypeFor[netip.AddrPort]() || f.Kind() != reflect.String {
		return data, nil
	}
	s := data.(string)
	if s == "" {
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not ADDRESS:PORT (like 198.51.100.99:80 or [2001:db8::99]:80)", s)
	}
	return ap, nil
}

// trackInterfaceHook lets a tracked interface be written as its bare name.
func trackInterfaceHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if t != reflect.TypeFor[TrackInterface]() || f.Kind() != reflect.String {
		return data, nil
	}
	return TrackInterface{Name: data.(string)}, nil
}

// decodeProblems turns mapstructure's joined errors into problems, one per
// field, with the field path mapstructure already tracks.
func decodeProblems(err error) []Problem {
	if err == nil {
		return nil
	}
	var out []Problem
	var visit func(error)
	visit = func(err error) {
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				visit(inner)
			}
		case *mapstructure.DecodeError:
			inner := e.Unwrap()
			switch {
			case hasDecodeError(inner):
				visit(inner)
			case strings.HasPrefix(inner.Error(), "has invalid keys"):
				// reported, with lines, by the shape walk
			default:
				out = append(out, Problem{Path: e.Name(), Msg: friendlyDecodeMessage(inner)})
			}
		case interface{ Unwrap() error }:
			visit(e.Unwrap())
		default:
			out = append(out, Problem{Msg: err.Error()})
		}
	}
	visit(err)
	return out
}

func hasDecodeError(err error) bool {
	var de *mapstructure.DecodeError
	return errors.As(err, &de)
}

func friendlyDecodeMessage(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%v is not %s", quoteValue(pe.Value), kindName(pe.Expected.Type()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Sprintf("%v is not %s", quoteValue(ue.Value), kindName(ue.Expected.Type()))
	}
	return err.Error()
}

func quoteValue(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	}
	return fmt.Sprint(v)
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint32, reflect.Uint16, reflect.Uint8:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Struct:
		return "a mapping of keys"
	}
	return "a " + t.String()
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

func yamlErrorLine(err error) int {
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// underFailed reports whether path is, or lies under, a path that failed to
// decode: checks on a field that never got its value would only add noise.
func underFailed(path string, failed map[string]bool) bool {
	for p := path; p != ""; p = parentPath(p) {
		if failed[p] {
			return true
		}
	}
	return false
}

// parentPath drops the last element of a field path:
// "a.b[2].c" → "a.b[2]" → "a.b" → "a" → "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}
