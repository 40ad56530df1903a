package config

import (
	"cmp"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	Path string // field path, like vrrp.instances[0].vrid; "" for the file as a whole
	Line int    // line in the file, 0 when unknown
	Env  string // the environment variable the value came from, if any
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	if p.Env != "" {
		fmt.Fprintf(&b, " (set by %s)", p.Env)
	}
	return b.String()
}

// Error lists every problem found in one configuration file.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) add(p Problem) { e.Problems = append(e.Problems, p) }

// maxShownProblems is how many problems Error prints: a file that is wrong
// throughout (a list of half a million bad items) is better told by its
// first problems and a count than by a screen that scrolls for minutes.
const maxShownProblems = 100

// Error prints one problem per line, each as FILE:LINE: PATH: MESSAGE, the
// first maxShownProblems of them and then how many more there are.
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i == maxShownProblems {
			fmt.Fprintf(&b, "\n%s: %d more problems not shown: fix those above and check again", e.File, len(e.Problems)-i)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.In(e.File))
	}
	return b.String()
}

// In prints the problem as found in file: FILE:LINE: PATH: MESSAGE.
func (p Problem) In(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	b.WriteString(p.String())
	return b.String()
}

// finish attaches lines (and environment sources) to the problems and sorts
// them in file order.
func (e *Error) finish(file *fileLines) *Error {
	for i := range e.Problems {
		p := &e.Problems[i]
		if env := envFor(p.Path); env != "" {
			p.Env = env
			continue
		}
		if p.Line == 0 && p.Path != "" {
			p.Line = file.line(p.Path)
		}
	}
	slices.SortStableFunc(e.Problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Path, b.Path))
	})
	return e
}

// fileLines finds the lines of field paths in a file whose tree was let
// go once it was decoded: it parses the file again the first time it is
// asked, which a valid file without warnings never is.
type fileLines struct {
	data   []byte
	tree   fileTree
	parsed bool
}

// line is the line of path, or of its nearest ancestor in the file.
func (f *fileLines) line(path string) int {
	if !f.parsed {
		f.parsed = true
		if doc, _, p := parseTree(f.data); p == nil {
			f.tree = treeOf(doc)
		}
	}
	return f.tree.line(path)
}

// fileTree is a parsed file, kept to find the line and the text of a
// field path when a problem or a warning needs them. Finding one path
// walks only the nodes on its way; recording the line and text of every
// key and item instead (713 000 of them in the largest site's file) cost
// more time and memory than decoding them.
type fileTree struct {
	root *yaml.Node // the document's mapping; nil for an empty file or one that is not a mapping
}

// treeOf is the tree of a parsed document.
func treeOf(doc *yaml.Node) fileTree {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 && doc.Content[0].Kind == yaml.MappingNode {
		return fileTree{root: doc.Content[0]}
	}
	return fileTree{}
}

// line finds the line of path, or of its nearest ancestor in the file: a
// default that fails validation is reported where its parent is.
func (f fileTree) line(path string) int {
	line, _ := f.find(path)
	return line
}

// find follows path through the tree as Config's types lead (a key of a
// mapping that is a struct, an index of a sequence that is a slice; an
// alias is followed, a merge key's mapping is searched), and returns the
// line of the deepest key or item it reached and, when it reached all of
// path, the node there.
func (f fileTree) find(path string) (int, *yaml.Node) {
	n, t, line := f.root, reflect.TypeFor[Config](), 0
	if n == nil {
		return 0, nil
	}
	for rest := path; rest != ""; {
		n = resolveAlias(n)
		var key *yaml.Node
		if rest[0] == '[' {
			end := strings.IndexByte(rest, ']')
			if end < 0 {
				return line, nil
			}
			i, err := strconv.Atoi(rest[1:end])
			if err != nil || t.Kind() != reflect.Slice || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return line, nil
			}
			n, t, line, rest = n.Content[i], t.Elem(), n.Content[i].Line, strings.TrimPrefix(rest[end+1:], ".")
			continue
		}
		name := rest
		rest = ""
		if i := strings.IndexAny(name, ".["); i >= 0 {
			name, rest = name[:i], strings.TrimPrefix(name[i:], ".")
		}
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || isScalarType(t) || n.Kind != yaml.MappingNode {
			return line, nil
		}
		if key, n = findKey(n, name, 0); key == nil {
			return line, nil
		}
		line = key.Line
		field, ok := fieldByTag(t, name)
		if !ok {
			return line, nil
		}
		t = field.Type
	}
	return line, resolveAlias(n)
}

// findKey finds key in mapping m as the decoder read it: the first of a
// key written twice, else the key of what a merge key (<<) brings in, the
// first mapping of a list of them that has it.
func findKey(m *yaml.Node, key string, depth int) (k, v *yaml.Node) {
	var merge *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := m.Content[i], m.Content[i+1]
		switch {
		case isMergeKey(kn):
			merge = vn
		case kn.Value == key:
			return kn, vn
		}
	}
	if merge == nil || depth >= maxMergeDepth {
		return nil, nil
	}
	merged := []*yaml.Node{resolveAlias(merge)}
	if merged[0].Kind == yaml.SequenceNode {
		merged = merged[0].Content
	}
	for _, mm := range merged {
		if mm = resolveAlias(mm); mm.Kind == yaml.MappingNode {
			if k, v = findKey(mm, key, depth+1); k != nil {
				return k, v
			}
		}
	}
	return nil, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

// envFor names the environment variable that set path, or the key above
// it (datapath.interfaces[1] comes from HALB_DATAPATH_INTERFACES), if one
// did. Only keys outside lists can be overridden from the environment.
func envFor(path string) string {
	for p := path; p != ""; p = parentPath(p) {
		if !slices.Contains(envKeys(), p) {
			continue
		}
		if _, ok := os.LookupEnv(envName(p)); ok {
			return envName(p)
		}
		return ""
	}
	return ""
}

// countNodes counts the nodes of a document without following aliases.
func countNodes(n *yaml.Node) int {
	c := 1
	for _, child := range n.Content {
		c += countNodes(child)
	}
	return c
}

var scalarStructs = map[reflect.Type]bool{
	reflect.TypeFor[time.Duration](): true,
}

func isScalarType(t reflect.Type) bool {
	return scalarStructs[t] || t.PkgPath() == "net/netip"
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("mapstructure") == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// keepalivedNames maps keepalived.conf keywords to halb's, because the
// people most likely to write a wrong key are migrating from keepalived.
var keepalivedNames = map[string]string{
	"virtual_router_id":          "vrid",
	"advert_int":                 "advert_interval",
	"virtual_ipaddress":          "virtual_ips",
	"unicast_src_ip":             "unicast_src",
	"unicast_peer":               "unicast_peers",
	"nopreempt":                  "preempt: false",
	"track_interface":            "track_interfaces",
	"track_script":               "track_scripts",
	"track_file":                 "track_files",
	"track_process":              "track_processes",
	"state":                      "priority (the highest priority becomes MASTER; there is no initial state)",
	"lb_algo":                    "scheduler",
	"lb_kind":                    "forward",
	"real_server":                "backends",
	"persistence_timeout":        "persistence",
	"virtual_server":             "services",
	"vrrp_instance":              "vrrp.instances",
	"authentication":             "auth_pass",
	"garp_master_refresh_repeat": "garp_master_repeat",
}

func unknownKeyMessage(t reflect.Type, key string) string {
	msg := fmt.Sprintf("unknown key %q", key)
	if alt, ok := keepalivedNames[key]; ok {
		return msg + "; halb calls this " + alt
	}
	best, bestDist := "", 3
	var known []string
	for i := range t.NumField() {
		name := t.Field(i).Tag.Get("mapstructure")
		known = append(known, name)
		if d := editDistance(key, name); d < bestDist {
			best, bestDist = name, d
		}
	}
	if best != "" {
		return msg + fmt.Sprintf("; did you mean %q?", best)
	}
	return msg + "; known keys here: " + strings.Join(known, ", ")
}

// editDistance is the Levenshtein distance, for "did you mean" hints.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Locate gives each problem without a line the line of its field (or of
// the nearest field above it) in the file at path, when the file can be
// read: for notes and warnings made after the file was parsed.
func Locate(path string, problems []Problem) {
	data, err := ReadFile(path) // the one safe reader: a FIFO swapped in would block
	if err != nil {
		return
	}
	file := &fileLines{data: data}
	for i := range problems {
		if problems[i].Line == 0 {
			problems[i].Line = file.line(problems[i].Path)
		}
	}
}
