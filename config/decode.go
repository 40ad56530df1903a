package config

import (
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// decoder fills a Config from the YAML node tree of the file, in one walk
// that also judges the tree's shape: every key is one Config knows, none
// is written twice, and every value has its field's type, as the file
// wrote it (a number key takes a YAML number, a text key a YAML string),
// with nothing rounded, truncated or guessed. Each problem names its
// field path and the line of its key or list item. List items start
// from their defaults (config.go), and what the file leaves out and is
// derived from another key (a backend's port from its service's) is
// filled in as the item is finished.
//
// It decodes straight from the tree into the typed fields: no map of the
// file's values and no second decode (what viper and mapstructure did
// cost 2.5 times the parse and twice its memory for the largest site's
// file).
type decoder struct {
	problems []Problem
	// failed holds the paths of the values that did not decode, so that
	// Validate's checks of them, which would only add noise, are dropped.
	failed map[string]bool
	// overridden holds the keys a HALB_* variable sets: the file's value
	// of those is not read.
	overridden map[string]bool
	path       []byte // the field path of the value being decoded
	// budget is how many more nodes the walk may visit. Following aliases
	// (*name) can visit a node many times: a 15 kB file whose aliases
	// nest three deep names a billion values, and walking them all would
	// hold `halb check` and a reload for minutes and fill memory.
	budget, limit int
	fatal         bool // the document is not a mapping, or too big once its aliases are followed

	// Scratch of the service being decoded, for what it derives from
	// its parts when it is finished.
	index     int   // the index of the list item being decoded
	portless  []int // its backends that name no port: they take the service's
	hcTypeSet bool  // its health check names its type

	// split, when the file is read in parts (split.go), holds the
	// services list's items, decoded where the list's value is met.
	split *servicesList
}

// Bounds of the nodes a walk visits: a file's own nodes, and as many
// again several times over through aliases, or at least minWalkBudget.
const (
	walkBudgetFactor = 4
	minWalkBudget    = 100_000
)

// maxMergeDepth bounds the merge keys (<<) followed from one mapping: an
// anchor merged into itself would otherwise be followed for ever.
const maxMergeDepth = 32

// walkBudget is how many nodes a walk of a file of nodes nodes may visit.
func walkBudget(nodes int) int {
	return max(walkBudgetFactor*nodes, minWalkBudget)
}

// decode fills cfg from the parsed document doc, visiting at most limit
// nodes (walkBudget).
func (d *decoder) decode(doc *yaml.Node, limit int, cfg *Config) {
	d.limit = limit
	d.budget = d.limit
	if d.failed == nil {
		d.failed = map[string]bool{}
	}
	v := reflect.ValueOf(cfg).Elem()
	setDefaults(v)
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return // an empty file: all defaults
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		d.problems = append(d.problems, Problem{Line: root.Line,
			Msg: "the file must be a mapping of keys (log:, datapath:, vrrp:, services:)"})
		d.fatal = true
		return
	}
	var set uint64
	d.fields(root, v, infoOf(v.Type()), &set, 0)
}

// problem records msg about the value at the current path, on line.
func (d *decoder) problem(line int, msg string) {
	path := string(d.path)
	d.failed[path] = true
	d.problems = append(d.problems, Problem{Path: path, Line: line, Msg: msg})
}

// push adds a key to the current path and returns the length to pop to.
func (d *decoder) push(key string) int {
	n := len(d.path)
	if n > 0 {
		d.path = append(d.path, '.')
	}
	d.path = append(d.path, key...)
	return n
}

func (d *decoder) pushIndex(i int) int {
	n := len(d.path)
	d.path = append(d.path, '[')
	d.path = strconv.AppendInt(d.path, int64(i), 10)
	d.path = append(d.path, ']')
	return n
}

// visit counts a node against the budget; false once it is spent.
func (d *decoder) visit(n *yaml.Node) bool {
	if d.fatal {
		return false
	}
	if d.budget--; d.budget < 0 {
		d.problems = append(d.problems, Problem{Line: n.Line, Msg: fmt.Sprintf(
			"the aliases (*name) in the file expand to more than %d values: write the repeated parts out, or repeat them less", d.limit)})
		d.fatal = true
		return false
	}
	return true
}

// value decodes node n into v; line is the line of its key or item.
func (d *decoder) value(n *yaml.Node, v reflect.Value, line int) {
	if !d.visit(n) {
		return
	}
	if d.split != nil && n == d.split.placeholder {
		d.splitList(v)
		return
	}
	n = resolveAlias(n)
	t := v.Type()
	switch {
	case t == durationType:
		d.duration(n, v, line)
	case textTypes[t] != "":
		d.text(n, v, line)
	case (t == trackInterfaceType || t == announceType || t == virtualIPType) && n.Kind != yaml.MappingNode:
		d.shorthand(n, v, line) // written as one string
	case t == asnType:
		d.asn(n, v, line)
	case t.Kind() == reflect.Pointer:
		d.pointer(n, v, line)
	case t.Kind() == reflect.Struct:
		d.structure(n, v, line)
	case t.Kind() == reflect.Slice:
		d.list(n, v, line)
	case isIntKind(t.Kind()):
		d.integer(n, v, line)
	case t.Kind() == reflect.Bool:
		d.boolean(n, v, line)
	case t.Kind() == reflect.String:
		d.str(n, v, line)
	default:
		panic("config: no decoder for " + t.String()) // a Config type added without one
	}
}

// structure decodes a mapping into the struct v, which starts from its
// defaults; null leaves the defaults.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, line int) {
	saved := d.begin(v)
	var set uint64
	switch {
	case n.Kind == yaml.MappingNode:
		d.fields(n, v, infoOf(v.Type()), &set, 0)
	case isNull(n):
	case n.Kind == yaml.ScalarNode:
		d.problem(line, scalarText(n)+" is not a mapping of keys")
	default:
		d.problem(line, "a mapping of keys is expected here, like {key: value}")
	}
	d.end(v, set, saved)
}

// fields decodes the keys of mapping m into the fields of v. set holds
// the fields already given a value (by this mapping's keys, or by a
// mapping that merges this one): a mapping's own keys win over those it
// merges (<<: *name), and of several it merges the first wins, as YAML's
// merge key has it.
func (d *decoder) fields(m *yaml.Node, v reflect.Value, info *structInfo, set *uint64, depth int) {
	var own uint64    // the known keys this mapping wrote
	var unknown []int // the content indexes of the unknown keys it wrote
	var merge *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, val := m.Content[i], m.Content[i+1]
		if isMergeKey(k) {
			merge = val
			continue
		}
		pop := d.push(k.Value)
		f, known := info.index[k.Value]
		switch {
		case known && own&(1<<f) != 0, !known && d.seenUnknown(m, unknown, k.Value):
			d.problem(k.Line, fmt.Sprintf("key %q appears twice (first on line %d): keep one", k.Value, firstLine(m, i)))
		case !known:
			unknown = append(unknown, i)
			d.problem(k.Line, unknownKeyMessage(v.Type(), k.Value))
		case *set&(1<<f) != 0:
			own |= 1 << f // a mapping that merges this one set it
		case d.overridden[string(d.path)]:
			own |= 1 << f // a HALB_* variable sets it
		default:
			own |= 1 << f
			*set |= 1 << f
			d.value(val, v.Field(f), k.Line)
		}
		d.path = d.path[:pop]
	}
	if merge != nil {
		d.merge(merge, v, info, set, depth+1)
	}
}

// merge decodes what a merge key (<<) brings in: one mapping, or a list
// of them.
func (d *decoder) merge(n *yaml.Node, v reflect.Value, info *structInfo, set *uint64, depth int) {
	if depth > maxMergeDepth || !d.visit(n) {
		return
	}
	n = resolveAlias(n)
	switch n.Kind {
	case yaml.MappingNode:
		d.fields(n, v, info, set, depth)
		return
	case yaml.SequenceNode:
		for _, item := range n.Content {
			if item = resolveAlias(item); item.Kind != yaml.MappingNode {
				d.problem(item.Line, "<< merges mappings: write <<: *name, or <<: [*a, *b]")
				return
			}
			d.fields(item, v, info, set, depth)
		}
		return
	}
	d.problem(n.Line, "<< merges mappings: write <<: *name, or <<: [*a, *b]")
}

func (d *decoder) seenUnknown(m *yaml.Node, unknown []int, key string) bool {
	for _, i := range unknown {
		if m.Content[i].Value == key {
			return true
		}
	}
	return false
}

// firstLine is the line of the first key of m written like its i-th.
func firstLine(m *yaml.Node, i int) int {
	for j := 0; j < i; j += 2 {
		if m.Content[j].Value == m.Content[i].Value {
			return m.Content[j].Line
		}
	}
	return m.Content[i].Line
}

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// list decodes a sequence into the slice v, made at its final length. A
// single scalar is a list of one (`expect_status: 200`), and a string a
// comma-separated list (`interfaces: eth0,eth1`), each item then decoded
// as strictly as any other.
func (d *decoder) list(n *yaml.Node, v reflect.Value, line int) {
	switch {
	case n.Kind == yaml.SequenceNode:
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			pop := d.pushIndex(i)
			d.index = i
			d.value(item, s.Index(i), item.Line)
			d.path = d.path[:pop]
		}
		v.Set(s)
	case n.Kind == yaml.MappingNode:
		d.problem(line, "a list is expected here, like [a, b]")
	case isNull(n):
		v.SetZero()
	case n.ShortTag() == "!!str":
		var items []string
		if n.Value != "" {
			items = strings.Split(n.Value, ",")
		}
		s := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, item := range items {
			pop := d.pushIndex(i)
			d.index = i
			d.value(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: item, Line: n.Line}, s.Index(i), line)
			d.path = d.path[:pop]
		}
		v.Set(s)
	default:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		pop := d.pushIndex(0)
		d.index = 0
		d.value(n, s.Index(0), line)
		d.path = d.path[:pop]
		v.Set(s)
	}
}

// integer decodes a whole number. A float that is a whole number (80.0,
// 1e3) is that number; 80.9, a number beyond the field's range, a
// boolean or text is refused.
func (d *decoder) integer(n *yaml.Node, v reflect.Value, line int) {
	if n.Kind != yaml.ScalarNode {
		d.problem(line, collectionName(n)+" is not a whole number")
		return
	}
	tag := n.ShortTag()
	if tag == "!!null" {
		d.problem(line, "has no value: write a whole number, or leave the key out for its default")
		return
	}
	i, err := strconv.ParseInt(n.Value, 10, 64) // what most are: the quick way
	msg := ""
	if digits := strings.TrimLeft(n.Value, "+-"); tag != "!!int" || err != nil || len(digits) > 1 && digits[0] == '0' {
		i, msg = wholeNumber(n, tag) // YAML reads 010 as 8
	}
	if msg == "" {
		msg = setWhole(v, i)
	}
	if msg != "" {
		d.problem(line, scalarText(n)+" "+msg)
	}
}

// setWhole sets the integer field v to i, or says why it cannot hold it.
func setWhole(v reflect.Value, i int64) string {
	bits := v.Type().Bits()
	if v.CanInt() {
		if v.OverflowInt(i) {
			return fmt.Sprintf("is out of range: use %d..%d", int64(-1)<<(bits-1), int64(1)<<(bits-1)-1)
		}
		v.SetInt(i)
		return ""
	}
	if i < 0 || v.OverflowUint(uint64(i)) {
		return fmt.Sprintf("is out of range: use 0..%d", uint64(1)<<bits-1)
	}
	v.SetUint(uint64(i))
	return ""
}

// wholeNumber reads a scalar YAML does not write as a plain decimal
// integer, as YAML reads it (0x50, 0o17, 1_000, 80.0, 1e300), or says why
// it is not a whole number.
func wholeNumber(n *yaml.Node, tag string) (int64, string) {
	if tag == "!!str" {
		if parsesAs(n.Value, reflect.Int) {
			return 0, "is not a whole number: write it without quotes"
		}
		return 0, "is not a whole number"
	}
	var x any
	if err := n.Decode(&x); err != nil {
		return 0, "is not a whole number"
	}
	switch x := x.(type) {
	case int:
		return int64(x), ""
	case int64:
		return x, ""
	case uint64:
		if x > math.MaxInt64 {
			return 0, "is too large a number"
		}
		return int64(x), ""
	case float64:
		if x != math.Trunc(x) {
			return 0, "is not a whole number"
		}
		if x < math.MinInt64 || x >= math.MaxInt64 {
			return 0, "is too large a number"
		}
		return int64(x), ""
	}
	return 0, "is not a whole number"
}

// boolean decodes true or false, and nothing else (not 1, not "yes").
func (d *decoder) boolean(n *yaml.Node, v reflect.Value, line int) {
	if n.Kind != yaml.ScalarNode {
		d.problem(line, collectionName(n)+" is not true or false")
		return
	}
	switch tag := n.ShortTag(); {
	case tag == "!!null":
		d.problem(line, "has no value: write true or false, or leave the key out for its default")
	case tag == "!!bool" && strings.EqualFold(n.Value, "true"):
		v.SetBool(true)
	case tag == "!!bool" && strings.EqualFold(n.Value, "false"):
		v.SetBool(false)
	case tag == "!!str" && (n.Value == "true" || n.Value == "false"):
		d.problem(line, scalarText(n)+" is not true or false: write it without quotes")
	default:
		d.problem(line, scalarText(n)+" is not true or false")
	}
}

// str decodes text. A number or a boolean is refused: turning YAML's
// reading of it back into text would change it (0123 is 83, 1.10 is 1.1).
func (d *decoder) str(n *yaml.Node, v reflect.Value, line int) {
	switch {
	case n.Kind != yaml.ScalarNode:
		d.problem(line, collectionName(n)+" is not a string")
	case n.ShortTag() == "!!str":
		v.SetString(n.Value)
	case isNull(n):
		v.SetString("")
	default:
		d.problem(line, fmt.Sprintf("%s is not a string: write it in quotes (%q)", n.Value, n.Value))
	}
}

// duration decodes text like "1s" or "50ms". A bare number would be
// nanoseconds, keepalived's "advert_int 1" 1ns: only 0 is taken.
func (d *decoder) duration(n *yaml.Node, v reflect.Value, line int) {
	const write = `write it with a unit, like "1s" or "50ms"`
	if n.Kind != yaml.ScalarNode {
		d.problem(line, collectionName(n)+" is not a duration: "+write)
		return
	}
	switch tag := n.ShortTag(); tag {
	case "!!str":
		dur, err := parseDuration(n.Value)
		if err != nil {
			d.problem(line, err.Error())
			return
		}
		v.SetInt(int64(dur))
	case "!!null":
		v.SetInt(0)
	case "!!int", "!!float":
		var x any
		if n.Decode(&x) == nil && (x == 0 || x == 0.0) {
			v.SetInt(0)
			return
		}
		d.problem(line, fmt.Sprintf("%s has no unit: write a duration like \"%ss\" or \"%sms\"", n.Value, n.Value, n.Value))
	default:
		d.problem(line, scalarText(n)+" is not a duration: "+write)
	}
}

func parseDuration(s string) (time.Duration, error) {
	dur, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write it with a unit, like \"1s\" or \"50ms\"", s)
	}
	return dur, nil
}

// textTypes are the types written as text in YAML, with what each takes.
var textTypes = map[reflect.Type]string{
	reflect.TypeFor[netip.Addr]():     "an IP address",
	reflect.TypeFor[netip.Prefix]():   "an IP address or ADDRESS/LENGTH (like 192.0.2.100/24)",
	reflect.TypeFor[netip.AddrPort](): "ADDRESS:PORT (like 198.51.100.99:80)",
}

var (
	durationType       = reflect.TypeFor[time.Duration]()
	trackInterfaceType = reflect.TypeFor[TrackInterface]()
	announceType       = reflect.TypeFor[Announce]()
	virtualIPType      = reflect.TypeFor[VirtualIP]()
	asnType            = reflect.TypeFor[ASN]()
)

// text decodes an address, a prefix or an address and port, from text
// only: a number or a mapping is not one.
func (d *decoder) text(n *yaml.Node, v reflect.Value, line int) {
	what := textTypes[v.Type()]
	switch {
	case n.Kind != yaml.ScalarNode:
		d.problem(line, collectionName(n)+" is not "+what)
		return
	case isNull(n):
		v.SetZero()
		return
	case n.ShortTag() != "!!str":
		d.problem(line, scalarText(n)+" is not "+what)
		return
	}
	if err := setText(v, n.Value); err != nil {
		d.problem(line, err.Error())
	}
}

// setText sets v, an address, a prefix or an address and port, from s.
func setText(v reflect.Value, s string) error {
	var err error
	switch p := v.Addr().Interface().(type) { // a pointer: no copy of the value boxed for each of 100 000 backends
	case *netip.Addr:
		*p, err = parseAddr(s)
	case *netip.Prefix:
		*p, err = parsePrefix(s)
	case *netip.AddrPort:
		*p, err = parseAddrPort(s)
	}
	return err
}

func parseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		if _, perr := netip.ParsePrefix(s); perr == nil {
			return a, fmt.Errorf("%q is a prefix: write the address alone, without /length", s)
		}
		return a, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

// parsePrefix reads ADDRESS/LENGTH, or a bare address as a host route, as
// keepalived takes it; "" is no prefix (a rule's from: "" is any).
func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or ADDRESS/LENGTH", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not ADDRESS/LENGTH (like 192.0.2.100/24)", s)
	}
	return p, nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("%q is not ADDRESS:PORT (like 198.51.100.99:80 or [2001:db8::99]:80)", s)
	}
	return ap, nil
}

// shorthands are the structs a key may also write as one string: a
// tracked interface as its bare name, a service's announce as its mode
// alone, a virtual IP as its address alone. Each has what a value must
// be, and how the string sets it.
var shorthands = map[reflect.Type]struct {
	what string
	set  func(v reflect.Value, s string) error
}{
	trackInterfaceType: {" is not an interface name or {name: eth2, weight: -20}",
		func(v reflect.Value, s string) error { v.Addr().Interface().(*TrackInterface).Name = s; return nil }},
	announceType: {" is not never, always, master or {when: always, communities: [...]}",
		func(v reflect.Value, s string) error { v.Addr().Interface().(*Announce).When = s; return nil }},
	virtualIPType: {" is not an IP address or ADDRESS/LENGTH, nor {address: 198.51.100.100/24, interface: eth1}",
		func(v reflect.Value, s string) (err error) {
			v.Addr().Interface().(*VirtualIP).Address, err = parsePrefix(s)
			return err
		}},
}

// shorthand reads a struct of shorthands written as one string; the
// mapping form is decoded as any struct.
func (d *decoder) shorthand(n *yaml.Node, v reflect.Value, line int) {
	sh := shorthands[v.Type()]
	switch {
	case n.Kind != yaml.ScalarNode:
		d.problem(line, collectionName(n)+sh.what)
	case isNull(n):
		v.SetZero()
		setDefaults(v)
	case n.ShortTag() == "!!str":
		v.SetZero()
		setDefaults(v)
		if err := sh.set(v, n.Value); err != nil {
			d.problem(line, err.Error())
		}
	default:
		d.problem(line, scalarText(n)+sh.what)
	}
}

// asn reads an AS number, and says what range one takes when it is
// outside 32 bits.
func (d *decoder) asn(n *yaml.Node, v reflect.Value, line int) {
	var wide int64
	before := len(d.problems)
	d.integer(n, reflect.ValueOf(&wide).Elem(), line)
	switch {
	case len(d.problems) > before:
	case wide < 0 || wide > math.MaxUint32:
		d.problem(line, fmt.Sprintf("%d is not an AS number: use 1..4294967294 (4-byte ASNs are fine)", wide))
	default:
		v.SetUint(uint64(wide))
	}
}

// pointer decodes an optional value: null or an absent key leaves it
// nil, anything else is decoded into a new value, a struct from its
// defaults.
func (d *decoder) pointer(n *yaml.Node, v reflect.Value, line int) {
	if isNull(n) {
		v.SetZero()
		return
	}
	p := reflect.New(v.Type().Elem())
	d.value(n, p.Elem(), line)
	v.Set(p)
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// scalarText is a scalar as the file wrote it, a string quoted, so that a
// message tells "5" from 5 and quotes 0123, not the 83 YAML reads.
func scalarText(n *yaml.Node) string {
	if n.ShortTag() == "!!str" {
		return strconv.Quote(n.Value)
	}
	return n.Value
}

func collectionName(n *yaml.Node) string {
	if n.Kind == yaml.MappingNode {
		return "a mapping"
	}
	return "a list"
}

// structInfo is what decoding needs of a struct type: its fields by key.
type structInfo struct {
	index map[string]int
}

var structInfos sync.Map // reflect.Type → *structInfo

func infoOf(t reflect.Type) *structInfo {
	if info, ok := structInfos.Load(t); ok {
		return info.(*structInfo)
	}
	if t.NumField() > 64 {
		panic("config: " + t.String() + " has more fields than a decoder's mask holds")
	}
	info := &structInfo{index: map[string]int{}}
	for i := range t.NumField() {
		if key := t.Field(i).Tag.Get("mapstructure"); key != "" && key != "-" {
			info.index[key] = i
		}
	}
	structInfos.Store(t, info)
	return info
}

// bit is the mask bit of the field key of t.
func bit(t reflect.Type, key string) uint64 {
	i, ok := infoOf(t).index[key]
	if !ok {
		panic("config: " + t.String() + " has no key " + key)
	}
	return 1 << i
}

var (
	versionBit     = bit(reflect.TypeFor[Instance](), "version")
	backendPortBit = bit(reflect.TypeFor[Backend](), "port")
	checkTypeBit   = bit(reflect.TypeFor[HealthCheck](), "type")
	checkURLsBit   = bit(reflect.TypeFor[HealthCheck](), "urls")
	checkPathBit   = bit(reflect.TypeFor[HealthCheck](), "path")
	checkExpectBit = bit(reflect.TypeFor[HealthCheck](), "expect_status")
)

// serviceScratch is the decoder's scratch saved around a service.
type serviceScratch struct {
	portless  int // where this service's portless backends start in d.portless
	hcTypeSet bool
}

// begin gives a struct about to be decoded its defaults, and saves the
// scratch of an enclosing service.
func (d *decoder) begin(v reflect.Value) serviceScratch {
	setDefaults(v)
	saved := serviceScratch{portless: len(d.portless), hcTypeSet: d.hcTypeSet}
	if v.Type() == reflect.TypeFor[Service]() {
		d.hcTypeSet = false
	}
	return saved
}

// end fills in what a decoded struct left out and derives from its other
// keys.
func (d *decoder) end(v reflect.Value, set uint64, saved serviceScratch) {
	switch p := v.Addr().Interface().(type) {
	case *Instance:
		if set&versionBit == 0 {
			// keepalived's rule: VRRPv2 unless the instance is IPv6,
			// which only VRRPv3 carries (RFC 5798 §1).
			p.Version = 2
			if p.IPv6() {
				p.Version = 3
			}
		}
	case *Backend:
		if set&backendPortBit == 0 {
			d.portless = append(d.portless, d.index)
		}
	case *VirtualIP:
		if d.failed[string(d.path)+".address"] {
			// reported there: the item's checks would only add noise
			d.failed[string(d.path)] = true
		}
	case *HealthCheck:
		if set&checkTypeBit != 0 {
			d.hcTypeSet = true
		}
		if set&checkURLsBit != 0 && len(p.URLs) > 0 {
			// urls replaces the short form: what it does not write
			// is not there, rather than defaulted.
			if set&checkPathBit == 0 {
				p.Path = ""
			}
			if set&checkExpectBit == 0 {
				p.ExpectStatus = nil
			}
		}
	case *Service:
		d.finishService(p, saved.portless)
		d.hcTypeSet = saved.hcTypeSet
	}
}

// finishService gives the backends that name no port the service's (the
// one port of its listen pairs, when they have one; else none), and
// the health check that names no type the service protocol's.
func (d *decoder) finishService(s *Service, portless int) {
	portFailed := d.failed[string(d.path)+".port"]
	port := s.Port
	if len(s.Listen) > 0 {
		port = s.listenPort()
	}
	for _, i := range d.portless[portless:] {
		if i < len(s.Backends) {
			s.Backends[i].Port = port
			if portFailed {
				// reported once, where it was written
				d.failed[fmt.Sprintf("%s.backends[%d].port", d.path, i)] = true
			}
		}
	}
	d.portless = d.portless[:portless]
	if !d.hcTypeSet {
		// A UDP service has no connection to probe: unless told how to
		// check it, its backends count as healthy.
		s.HealthCheck.Type = "tcp"
		if s.Protocol == "udp" {
			s.HealthCheck.Type = "none"
		}
	}
}
