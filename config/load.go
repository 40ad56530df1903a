package config

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
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

// maxNodes bounds the YAML nodes (keys, values, list items) of a file that
// Parse decodes, so that reading one costs seconds and not minutes: each
// node is parsed once into the YAML tree, then decoded twice (into the
// values viper holds, then by mapstructure), and a file of tiny list items
// within the size limit holds millions. It must still take the largest
// sites' files: 1000 services of 100 backends, each backend with its
// address, port and weight, hold about 715 000 (Load reads one in about
// 2.5 times a bare YAML parse of it, 1.5-2 s and 340 MiB here:
// BenchmarkLoad); a file of a million bare list items, the worst at the
// bound, takes longer.
const maxNodes = 1 << 20

// roughNodes counts, without parsing, what must each be a YAML node:
// every line that holds more than a comment, every flow collection and
// every comma between flow items, outside quotes and comments. It lets
// Parse refuse a file of millions of tiny items before YAML builds a tree
// of them, which takes as long as everything after it.
func roughNodes(data []byte) int {
	n := 0
	content := false // the current line holds more than blanks and a comment
	start := true    // a scalar may start here: a quote opens a quoted one
	var quote byte   // the quote of the quoted scalar we are in, or 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case quote == '"' && c == '\\':
			i++ // an escaped character, a quote included
		case quote != 0:
			if c == quote {
				if quote == '\'' && i+1 < len(data) && data[i+1] == '\'' {
					i++ // '' is a quote inside a single-quoted scalar
				} else {
					quote, start = 0, false
				}
			}
		case c == '\n' || c == '\r':
			if content {
				n++
			}
			content, start = false, true
		case c == '#' && (i == 0 || data[i-1] == ' ' || data[i-1] == '\t' || data[i-1] == '\n' || data[i-1] == '\r'):
			for i+1 < len(data) && data[i+1] != '\n' && data[i+1] != '\r' {
				i++ // a comment runs to the end of the line
			}
		case c == ' ' || c == '\t':
		default:
			content = true
			switch c {
			case ',', '[', '{':
				n++
				start = true
			case ':', '-', '?':
				start = true
			case '"', '\'':
				if start {
					quote = c
				}
			default:
				start = false
			}
		}
	}
	if content {
		n++
	}
	return n
}

// Load reads the file at path safely (ReadFile), decodes and validates it,
// and checks that the scripts it names can be run safely on this host
// (CheckScripts). The error, when the file is readable, is an *Error
// listing every problem. Callers that talk to a person use
// LoadWithWarnings.
func Load(path string) (*Config, error) {
	cfg, _, err := LoadWithWarnings(path)
	return cfg, err
}

// LoadWithWarnings is Load that also returns the warnings about a valid
// file: what a person must be told that does not stop halb using it (a
// password in a file others can read). `halb check` prints them, the
// daemon logs them at start and on every reload.
func LoadWithWarnings(path string) (*Config, []Problem, error) {
	data, fi, err := readFile(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, file, err := parse(data, path)
	if err != nil {
		return nil, nil, err
	}
	if problems := CheckScripts(cfg); len(problems) > 0 {
		e := &Error{File: path, Problems: problems}
		return nil, nil, e.finish(file)
	}
	warnings := fileWarnings(path, fi, cfg)
	for i := range warnings {
		warnings[i].Line = file.line(warnings[i].Path)
	}
	return cfg, warnings, nil
}

// Parse decodes and validates a configuration held in memory; name is used
// in messages. Environment overrides apply.
//
// Types are strict: a number key takes a YAML number and a boolean key
// true or false, and nothing is rounded, truncated or guessed (the weakly
// typed decoding this replaced read `port: 80.9` as 80 and `weight: true`
// as 1). HALB_* variables hold text, so they alone are converted, to the
// type of the key they set.
func Parse(data []byte, name string) (*Config, error) {
	cfg, _, err := parse(data, name)
	return cfg, err
}

// parse is Parse that also returns the parsed file, for the lines of the
// problems and warnings found after it: the file's one parse.
func parse(data []byte, name string) (*Config, fileTree, error) {
	e := &Error{File: name}

	tooBig := func(n int) (*Config, fileTree, error) {
		e.add(Problem{Msg: fmt.Sprintf("the file holds %d values or more, beyond the %d halb reads in one configuration: "+
			"is it the right file?", n, maxNodes)})
		return nil, fileTree{}, e
	}
	if n := roughNodes(data); n > maxNodes {
		return tooBig(n)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		e.add(Problem{Line: yamlErrorLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")})
		return nil, fileTree{}, e
	}
	if n := countNodes(&doc); n > maxNodes {
		return tooBig(n)
	}
	file := treeOf(&doc)
	shape := &shapeWalk{}
	shape.walk(&doc, reflect.TypeFor[Config](), "")
	failed := map[string]bool{}
	for _, p := range shape.problems {
		if p.Path != "" {
			failed[p.Path] = true
		}
		e.add(p)
	}
	// A file whose shape is wrong in more places than are printed stops
	// here: decoding each of a million wrong items again would cost
	// seconds and gigabytes to report what is already known.
	if shape.fatal || len(shape.problems) > maxShownProblems {
		return nil, fileTree{}, e.finish(file)
	}

	v := viper.New()
	for k, d := range topDefaults {
		v.SetDefault(k, d)
	}
	if err := readTree(v, &doc); err != nil {
		e.add(Problem{Msg: "read: " + err.Error()})
		return nil, fileTree{}, e.finish(file)
	}
	for _, p := range applyEnv(v) {
		failed[p.Path] = true
		e.add(p)
	}
	derived := fillListDefaults(v)

	var cfg Config
	decodeErr := v.UnmarshalExact(&cfg, func(dc *mapstructure.DecoderConfig) {
		dc.WeaklyTypedInput = false
		dc.DisableUnmarshaler = true // no type of Config has its own: asking for each value cost 7% of a load
		dc.DecodeHook = decodeHook
	})
	// A value copied from another key (a backend's port from its
	// service's) that failed is reported once, where it was written.
	skip := func(path string) bool {
		return underFailed(path, failed) || failed[derived[path]]
	}
	for _, p := range decodeProblems(decodeErr, file) {
		if skip(p.Path) {
			continue
		}
		failed[p.Path] = true
		e.add(p)
	}
	// Past what is printed, validating the rest of a file that failed to
	// decode only costs time: it is refused either way.
	if len(e.Problems) > maxShownProblems {
		return nil, fileTree{}, e.finish(file)
	}
	for _, p := range Validate(&cfg) {
		if !skip(p.Path) {
			e.add(p)
		}
	}
	if len(e.Problems) > 0 {
		return nil, fileTree{}, e.finish(file)
	}
	return &cfg, file, nil
}

// readTree gives viper the values of the YAML tree parse holds, decoded
// from the tree and not from the text: viper's own ReadConfig would parse
// the text a second time (0.5 s and as much memory again for the largest
// site's file). Viper's part is the defaults and the HALB_* overrides. A
// value YAML cannot hold in a map (a key twice) fails here, as it failed
// in ReadConfig.
func readTree(v *viper.Viper, doc *yaml.Node) error {
	values := map[string]any{}
	if err := doc.Decode(&values); err != nil {
		return err
	}
	return v.MergeConfigMap(values)
}

// applyEnv sets each key outside a list that a HALB_* variable names
// (HALB_LOG_LEVEL sets log.level), converted from the variable's text to
// the key's type: a whole number, true or false, a comma-separated list.
// It returns a problem for each variable that does not convert.
func applyEnv(v *viper.Viper) []Problem {
	var problems []Problem
	for _, key := range slices.Sorted(maps.Keys(topDefaults)) {
		name := envName(key)
		text, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		value, err := fromEnv(text, keyType(key))
		if err != nil {
			problems = append(problems, Problem{Path: key, Env: name, Msg: err.Error()})
			continue
		}
		v.Set(key, value)
	}
	return problems
}

// envName is the variable that overrides key: log.level -> HALB_LOG_LEVEL.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// keyType is the Go type of the dotted key in Config.
func keyType(key string) reflect.Type {
	t := reflect.TypeFor[Config]()
	for part := range strings.SplitSeq(key, ".") {
		f, ok := fieldByTag(t, part)
		if !ok {
			return nil
		}
		t = f.Type
	}
	return t
}

// fromEnv converts a variable's text to a value of type t.
func fromEnv(text string, t reflect.Type) (any, error) {
	if t == nil || t == reflect.TypeFor[time.Duration]() {
		return text, nil // durationHook reads it, with its own message
	}
	s := strings.TrimSpace(text)
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, t.Bits())
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number", text)
		}
		return n, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, t.Bits())
		if err != nil {
			return nil, fmt.Errorf("%q is not a whole number of 0 or more", text)
		}
		return n, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not true or false", text)
		}
		return b, nil
	case reflect.Slice:
		items := []string{}
		for item := range strings.SplitSeq(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				items = append(items, item)
			}
		}
		return items, nil
	}
	return text, nil
}

// fillListDefaults gives each list item the keys it omits. Items of lists
// are out of reach of viper's own defaults, and filling them in before
// decoding keeps "absent" and "zero" apart (weight 0 drains a backend; an
// absent weight is 1). It returns the field paths it copied from another
// key (a backend's port from its service's), each with the key it came
// from.
func fillListDefaults(v *viper.Viper) map[string]string {
	derived := map[string]string{}
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
		for i, it := range services {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			setMissing(m, serviceDefaults)
			backends, _ := m["backends"].([]any)
			for j, item := range backends {
				b, ok := item.(map[string]any)
				if !ok {
					continue
				}
				setMissing(b, backendDefaults)
				if _, ok := b["port"]; !ok && m["port"] != nil {
					b["port"] = m["port"]
					derived[fmt.Sprintf("services[%d].backends[%d].port", i, j)] = fmt.Sprintf("services[%d].port", i)
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
	return derived
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

// hook is a decode hook: from the type of data to the type t.
type hook = func(f, t reflect.Type, data any) (any, error)

// decodeHooks run in this order on every value decoded, each on what the
// one before made of it.
var decodeHooks = []hook{
	durationHook, textOnlyHook, addrHook, prefixHook, addrPortHook, trackInterfaceHook,
	mapstructure.StringToWeakSliceHookFunc(",").(hook), oneItemListHook, wholeNumberHook,
}

// decodeHook runs decodeHooks on one value. It is what
// mapstructure.ComposeDecodeHookFunc does, without wrapping the value in
// a reflect.Value for each hook: that cost a fifth of loading the largest
// site's file.
func decodeHook(f, t reflect.Type, data any) (any, error) {
	for _, h := range decodeHooks {
		var err error
		if data, err = h(f, t, data); err != nil || data == nil {
			return data, err
		}
		f = reflect.TypeOf(data)
	}
	return data, nil
}

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

// textTypes are the types written as text in YAML, with what each takes.
var textTypes = map[reflect.Type]string{
	reflect.TypeFor[netip.Addr]():     "an IP address",
	reflect.TypeFor[netip.Prefix]():   "an IP address or ADDRESS/LENGTH (like 192.0.2.100/24)",
	reflect.TypeFor[netip.AddrPort](): "ADDRESS:PORT (like 198.51.100.99:80)",
}

// textOnlyHook refuses anything but text for an address: the decoder would
// otherwise try a number as a mapping, and fill the address from a mapping
// without a word.
func textOnlyHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	what, ok := textTypes[t]
	if !ok || data == nil || f == t || f.Kind() == reflect.String {
		return data, nil
	}
	return nil, &valueError{quoteValue(data), "is not " + what}
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
	if t != reflect.TypeFor[TrackInterface]() {
		return data, nil
	}
	switch f.Kind() {
	case reflect.String:
		return TrackInterface{Name: data.(string)}, nil
	case reflect.Map, reflect.Struct, reflect.Invalid:
		return data, nil
	}
	return nil, &valueError{quoteValue(data), "is not an interface name or {name: eth2, weight: -20}"}
}

// oneItemListHook reads a single number or boolean where a list is expected
// as a list of one (`expect_status: 200`), as a single string already is;
// the item itself is then decoded as strictly as any other.
func oneItemListHook(f reflect.Type, t reflect.Type, data any) (any, error) {
	if t.Kind() != reflect.Slice || data == nil {
		return data, nil
	}
	switch f.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map, reflect.String:
		return data, nil
	}
	return []any{data}, nil
}

// wholeNumberHook stops a number from changing on its way into an integer
// field: the decoder, even when strict, truncates 80.9 to 80 and wraps an
// unsigned value beyond the int64 range into a negative one. A float that
// is a whole number (80.0, 1e3) is that number.
func wholeNumberHook(_ reflect.Type, t reflect.Type, data any) (any, error) {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
	default:
		return data, nil
	}
	if t == reflect.TypeFor[time.Duration]() {
		return data, nil // durationHook has read it
	}
	switch n := data.(type) {
	case float64:
		if n != math.Trunc(n) {
			return nil, &valueError{n, "is not a whole number"}
		}
		if n < math.MinInt64 || n >= math.MaxInt64 {
			return nil, &valueError{n, "is too large a number"}
		}
		return int64(n), nil
	case uint64:
		if n > math.MaxInt64 {
			return nil, &valueError{n, "is too large a number"}
		}
		return int64(n), nil
	case uint:
		if uint64(n) > math.MaxInt64 {
			return nil, &valueError{n, "is too large a number"}
		}
		return int64(n), nil
	}
	return data, nil
}

// valueError is a hook's verdict on a value, which the message shows as the
// file wrote it where it can.
type valueError struct {
	value any
	what  string
}

func (e *valueError) Error() string { return fmt.Sprint(e.value) + " " + e.what }

// decodeProblems turns mapstructure's joined errors into problems, one per
// field, with the field path mapstructure already tracks. The file gives
// each scalar as it was written, so that a message quotes 0123 and not the
// 83 that YAML read it as.
func decodeProblems(err error, file fileTree) []Problem {
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
				text := file.text(e.Name())
				if parent, found := strings.CutSuffix(e.Name(), "[0]"); text == "" && found {
					text = file.text(parent) // a single value read as a list of one
				}
				out = append(out, Problem{Path: e.Name(), Msg: friendlyDecodeMessage(inner, text)})
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

// friendlyDecodeMessage says what was found and what the key takes; text
// is the value as written in the file, when it was.
func friendlyDecodeMessage(err error, text string) string {
	var value any
	var expected reflect.Type
	var pe *mapstructure.ParseError
	var ue *mapstructure.UnconvertibleTypeError
	var ve *valueError
	switch {
	case errors.As(err, &ve):
		if text != "" {
			return text + " " + ve.what
		}
		return ve.Error()
	case errors.As(err, &pe):
		value, expected = pe.Value, pe.Expected.Type()
	case errors.As(err, &ue):
		value, expected = ue.Value, ue.Expected.Type()
	default:
		msg := err.Error()
		switch {
		case strings.HasPrefix(msg, "source data must be an array or slice"):
			return "a list is expected here, like [a, b]"
		case strings.HasPrefix(msg, "expected a map or struct"):
			if text != "" {
				return text + " is not a mapping of keys"
			}
			return "a mapping of keys is expected here, like {key: value}"
		}
		return msg
	}
	shown := quoteValue(value)
	if text != "" {
		shown = text
	}
	msg := fmt.Sprintf("%s is not %s", shown, kindName(expected))
	switch {
	case expected.Kind() == reflect.String:
		// A number or boolean read as text would be YAML's reading of it,
		// not what was written: 0123 is 83, 1_000 is 1000, 1.10 is 1.1.
		if _, isString := value.(string); !isString && text != "" {
			msg += fmt.Sprintf(": write it in quotes (%q) to keep it as written", text)
		} else if !isString {
			msg += ": write it in quotes"
		}
	case expected.Kind() == reflect.Bool || isIntKind(expected.Kind()):
		if s, isString := value.(string); isString && parsesAs(s, expected.Kind()) {
			msg += ": write it without quotes"
		}
	}
	return msg
}

func isIntKind(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// parsesAs reports whether s would be a value of kind k without quotes.
func parsesAs(s string, k reflect.Kind) bool {
	if k == reflect.Bool {
		return s == "true" || s == "false"
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
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
