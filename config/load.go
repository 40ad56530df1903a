package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// EnvPrefix prefixes the environment variables that override config keys:
// HALB_LOG_LEVEL overrides log.level.
const EnvPrefix = "HALB"

// maxNodes bounds the YAML nodes (keys, values, list items) of a file that
// Parse decodes, so that reading one costs seconds and not minutes: each
// node is parsed once into the YAML tree, then decoded (decoder), and a
// file of tiny list items within the size limit holds millions. It must
// still take the largest sites' files: 1000 services of 100 backends,
// each backend with its address, port and weight, hold about 713 000
// (BenchmarkLoad reads one in about the time of a bare YAML parse of it
// and half as long again); a file of a million bare list items, the
// worst at the bound, takes longer.
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

// parse is Parse that also returns the file's lines, for the problems
// and warnings found after it.
//
// The node tree of the file is by far the most memory a load takes (122
// MiB live for the largest site's 6.9 MB file, whose Config is 4 MiB), so
// the services list is parsed one item at a time when it can be
// (split.go), and every tree is let go as soon as it is decoded:
// Validate and what follows run beside the Config alone, and the lines
// of what they find are looked up in a parse made only if they find
// something (fileLines).
func parse(data []byte, name string) (*Config, *fileLines, error) {
	cfg, problems, failed, nodes := decodeFile(data)
	if nodes >= collectAfterNodes {
		// The trees are garbage now, and the heap may grow to twice its
		// size before the runtime collects it: collected now, its memory
		// takes what follows (Validate, and the daemon's first apply)
		// instead of new memory. For the largest site it is a collection
		// of the 4 MiB that stay.
		runtime.GC()
	}
	e := &Error{File: name, Problems: problems}
	// A file wrong in more places than are printed, or not a config
	// at all, stops here: validating the rest of it only costs time, it
	// is refused either way.
	if cfg == nil || len(e.Problems) > maxShownProblems {
		return nil, nil, e.finish(&fileLines{data: data})
	}
	for _, p := range applyEnv(cfg) {
		failed[p.Path] = true
		e.add(p)
	}
	for _, p := range Validate(cfg) {
		if !underFailed(p.Path, failed) {
			e.add(p)
		}
	}
	lines := &fileLines{data: data}
	if len(e.Problems) > 0 {
		return nil, nil, e.finish(lines)
	}
	return cfg, lines, nil
}

// collectAfterNodes is the size of a tree (about 17 MiB) past which parse
// has the runtime collect it as soon as it is decoded.
const collectAfterNodes = 100_000

// decodeFile parses data, in parts when it can (split.go), and decodes
// it into a Config. It returns the problems found, each with its line,
// the paths of the values that did not decode, and the number of nodes
// of the tree; no Config when the file cannot be one. The node tree
// lives only as long as this call.
func decodeFile(data []byte) (*Config, []Problem, map[string]bool, int) {
	if cfg, problems, failed, nodes, ok := decodeSplit(data); ok {
		return cfg, problems, failed, nodes
	}
	return decodeWhole(data)
}

// decodeWhole is decodeFile from the whole document's tree.
func decodeWhole(data []byte) (*Config, []Problem, map[string]bool, int) {
	doc, nodes, p := parseTree(data)
	if p != nil {
		return nil, []Problem{*p}, nil, nodes
	}
	var cfg Config
	d := &decoder{overridden: overriddenKeys()}
	d.decode(doc, walkBudget(nodes), &cfg)
	if d.fatal {
		return nil, d.problems, nil, nodes
	}
	return &cfg, d.problems, d.failed, nodes
}

// parseTree parses data into a node tree of nodes nodes, or says why it
// is not one halb reads.
func parseTree(data []byte) (doc *yaml.Node, nodes int, p *Problem) {
	tooBig := func(n int) (*yaml.Node, int, *Problem) {
		return nil, 0, &Problem{Msg: fmt.Sprintf("the file holds %d values or more, beyond the %d halb reads in one configuration: "+
			"is it the right file?", n, maxNodes)}
	}
	if n := roughNodes(data); n > maxNodes {
		return tooBig(n)
	}
	doc = &yaml.Node{}
	if err := yaml.Unmarshal(data, doc); err != nil {
		return nil, 0, &Problem{Line: yamlErrorLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if nodes = countNodes(doc); nodes > maxNodes {
		return tooBig(nodes)
	}
	return doc, nodes, nil
}

// envKeys are the keys outside lists, which HALB_* variables override
// (HALB_LOG_LEVEL sets log.level), sorted: the fields of the sections of
// Config that are not lists of items.
var envKeys = sync.OnceValue(func() []string {
	var keys []string
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		section := t.Field(i)
		st := section.Type
		if st.Kind() == reflect.Pointer {
			st = st.Elem() // an optional section (bgp:)
		}
		if st.Kind() != reflect.Struct {
			continue
		}
		for j := range st.NumField() {
			f := st.Field(j)
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
				continue
			}
			keys = append(keys, section.Tag.Get("mapstructure")+"."+f.Tag.Get("mapstructure"))
		}
	}
	slices.Sort(keys)
	return keys
})

// overriddenKeys are the keys a HALB_* variable sets: the decoder leaves
// the file's value of them unread.
func overriddenKeys() map[string]bool {
	var keys map[string]bool
	for _, key := range envKeys() {
		if _, ok := os.LookupEnv(envName(key)); ok {
			if keys == nil {
				keys = map[string]bool{}
			}
			keys[key] = true
		}
	}
	return keys
}

// applyEnv sets each key outside a list that a HALB_* variable names,
// converted from the variable's text to the key's type: a whole number,
// true or false, a comma-separated list. It returns a problem for each
// variable that does not convert.
func applyEnv(cfg *Config) []Problem {
	var problems []Problem
	for _, key := range envKeys() {
		name := envName(key)
		text, ok := os.LookupEnv(name)
		if !ok {
			continue
		}
		if err := setKey(reflect.ValueOf(cfg).Elem(), key, text); err != nil {
			problems = append(problems, Problem{Path: key, Env: name, Msg: err.Error()})
		}
	}
	return problems
}

// setKey sets the dotted key of the struct v from text. An optional
// section the file leaves out is made, with its defaults, for the key.
func setKey(v reflect.Value, key, text string) error {
	for part := range strings.SplitSeq(key, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
				setDefaults(v.Elem())
			}
			v = v.Elem()
		}
		v = v.Field(infoOf(v.Type()).index[part])
	}
	if textTypes[v.Type()] != "" {
		return setText(v, strings.TrimSpace(text))
	}
	value, err := fromEnv(text, v.Type())
	if err != nil {
		return err
	}
	switch value := value.(type) {
	case int64:
		v.SetInt(value)
	case uint64:
		v.SetUint(value)
	case bool:
		v.SetBool(value)
	case []string:
		v.Set(reflect.ValueOf(value))
	case string:
		if v.Type() == durationType {
			dur, err := parseDuration(value)
			if err != nil {
				return err
			}
			v.SetInt(int64(dur))
			return nil
		}
		v.SetString(value)
	}
	return nil
}

// envName is the variable that overrides key: log.level -> HALB_LOG_LEVEL.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
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
