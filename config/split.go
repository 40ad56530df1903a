package config

import (
	"bytes"
	"math"
	"reflect"

	yaml "go.yaml.in/yaml/v3"
)

// A large file is mostly its services: list, and yaml.v3 holds the whole
// document's node tree before anything is decoded (122 MiB live for the
// largest site's 6.9 MB file, 1000 services of 100 backends). So a file
// whose services: is a plain block list is read in parts: the file
// without the list's items, then each item parsed and decoded on its
// own, its tree let go before the next is parsed. What is decided, and
// every problem with its line, must be exactly what the whole parse
// gives (TestSplitSameAsWhole, FuzzSplitSameAsWhole): whenever the scan
// of the text cannot be sure where an item starts and ends, or a part
// does not stand alone (a syntax error, an anchor or alias that could
// reach across parts, a tree that is not the shape the scan expected),
// the whole file is parsed again as one, and that parse decides.

// servicesList is where a file's top-level services: block list lies,
// found by scanning its lines.
type servicesList struct {
	keyLine int        // the line of `services:`, 1-based
	items   []listItem // each item's text, in order
	rest    []byte     // the file with the items' lines left empty

	placeholder *yaml.Node // the null value of services: in rest's tree
	nodes       int        // the nodes of the items' trees
	decoded     int        // how many times the decoder read the list
	failed      bool       // an item did not stand alone: parse the whole file
}

// listItem is one item of the list: its text (from its "- " line to the
// next item's) and its first line in the file.
type listItem struct {
	text []byte
	line int
}

// splitServices finds the items of the top-level services: list by their
// lines: `services:` alone on a line at column 0 (a comment may follow),
// then items that each start with "- " at one indentation, up to a line
// of something else at column 0 or the end. It returns nil for a file it
// cannot split with certainty: carriage returns, tabs in indentation,
// directives and document markers, services: written twice or not as a
// block list, a list that ends at a line indented less than its items
// but not at column 0.
func splitServices(data []byte) *servicesList {
	if bytes.IndexByte(data, '\r') >= 0 {
		return nil
	}
	const (
		beforeKey = iota
		beforeItems
		inItems
		after
	)
	var (
		s          servicesList
		state      = beforeKey
		indent     int // the items' indentation
		start, end int // the list's bytes: its first item's line to the line after its last
		itemStart  int // the current item's first byte
		itemLine   int
	)
	line := 0
	for pos := 0; pos < len(data); {
		next := len(data)
		if i := bytes.IndexByte(data[pos:], '\n'); i >= 0 {
			next = pos + i + 1
		}
		text := bytes.TrimSuffix(data[pos:next], []byte("\n"))
		line++
		lineStart := pos
		pos = next

		n := leadingSpaces(text)
		if n < len(text) && text[n] == '\t' {
			return nil // a tab in the indentation
		}
		if n == 0 && (bytes.HasPrefix(text, []byte("---")) || bytes.HasPrefix(text, []byte("...")) || bytes.HasPrefix(text, []byte("%"))) {
			return nil // a document marker or a directive
		}
		if isServicesKey(text) {
			if state != beforeKey {
				return nil // written twice: the decoder says so, from the whole parse
			}
			s.keyLine, state = line, beforeItems
			continue
		}
		if n == len(text) || text[n] == '#' {
			continue // blank, or a comment: it belongs to no boundary
		}
		switch state {
		case beforeItems:
			if !isItemStart(text, n) {
				return nil // not a block list: nothing to gain
			}
			indent, start, itemStart, itemLine, state = n, lineStart, lineStart, line, inItems
		case inItems:
			switch {
			case n == indent && isItemStart(text, n):
				s.items = append(s.items, listItem{text: data[itemStart:lineStart], line: itemLine})
				itemStart, itemLine = lineStart, line
			case n > indent:
			case n == 0 && text[0] != '-':
				s.items = append(s.items, listItem{text: data[itemStart:lineStart], line: itemLine})
				end, state = lineStart, after
			default:
				return nil // the list ends, but not at a key at column 0
			}
		}
	}
	switch state {
	case beforeKey, beforeItems:
		return nil
	case inItems:
		s.items = append(s.items, listItem{text: data[itemStart:], line: itemLine})
		end = len(data)
	}
	rest := make([]byte, 0, start+bytes.Count(data[start:end], []byte("\n"))+len(data)-end)
	rest = append(rest, data[:start]...)
	rest = append(rest, bytes.Repeat([]byte("\n"), bytes.Count(data[start:end], []byte("\n")))...)
	s.rest = append(rest, data[end:]...)
	return &s
}

func leadingSpaces(text []byte) int {
	n := 0
	for n < len(text) && text[n] == ' ' {
		n++
	}
	return n
}

// isServicesKey reports whether a line is `services:` at column 0 with
// nothing after it but blanks and a comment.
func isServicesKey(text []byte) bool {
	after, ok := bytes.CutPrefix(text, []byte("services:"))
	if !ok {
		return false
	}
	n := leadingSpaces(after)
	return n == len(after) || n > 0 && after[n] == '#'
}

// isItemStart reports whether the line, indented by n spaces, starts a
// block list item: "-" then a space or the end of the line.
func isItemStart(text []byte, n int) bool {
	return text[n] == '-' && (n+1 == len(text) || text[n+1] == ' ')
}

// findPlaceholder finds services:'s value in the tree of rest, and
// checks that the parse saw what the scan did: a plain key services at
// column 1 of its line in the document's mapping, with no value (the
// items' lines are empty in rest), no anchor and no tag.
func (s *servicesList) findPlaceholder(doc *yaml.Node) bool {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return false
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Line != s.keyLine {
			continue
		}
		if k.Kind != yaml.ScalarNode || k.Value != "services" || k.Style != 0 || k.Column != 1 || k.Anchor != "" ||
			v.Kind != yaml.ScalarNode || v.ShortTag() != "!!null" || v.Value != "" || v.Anchor != "" || v.Style != 0 {
			return false
		}
		s.placeholder = v
		return true
	}
	return false
}

// parseItem parses the i-th item alone into its node, lines counted from
// the file's first: nil when it does not stand alone as one list item at
// the scanned indentation with no anchor or alias.
func (s *servicesList) parseItem(i int) *yaml.Node {
	var doc yaml.Node
	if yaml.Unmarshal(s.items[i].text, &doc) != nil {
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil
	}
	seq := doc.Content[0]
	if seq.Kind != yaml.SequenceNode || len(seq.Content) != 1 || seq.Line != 1 || seq.Anchor != "" || seq.Tag != "!!seq" {
		return nil
	}
	item := seq.Content[0]
	if !shiftLines(item, s.items[i].line-1) {
		return nil
	}
	s.nodes += countNodes(item)
	return item
}

// shiftLines moves the lines of the tree n down by offset; false if the
// tree has an anchor or an alias, which the whole parse could resolve
// differently (an alias after the list names the last anchor of that
// name, wherever it is).
func shiftLines(n *yaml.Node, offset int) bool {
	if n.Anchor != "" || n.Kind == yaml.AliasNode {
		return false
	}
	n.Line += offset
	for _, c := range n.Content {
		if !shiftLines(c, offset) {
			return false
		}
	}
	return true
}

// splitList decodes the services list item by item into v, each item's
// tree let go once decoded; as the whole parse's decoder does with the
// list's node (list).
func (d *decoder) splitList(v reflect.Value) {
	s := d.split
	s.decoded++
	items := reflect.MakeSlice(v.Type(), len(s.items), len(s.items))
	for i := range s.items {
		item := s.parseItem(i)
		if item == nil {
			s.failed, d.fatal = true, true
			return
		}
		pop := d.pushIndex(i)
		d.index = i
		d.value(item, items.Index(i), item.Line)
		d.path = d.path[:pop]
	}
	v.Set(items)
}

// decodeSplit is decodeFile for a file split by splitServices; false
// when the file is not one it can split, or when reading it in parts
// might not give what the whole parse does, which must then decide.
func decodeSplit(data []byte) (*Config, []Problem, map[string]bool, int, bool) {
	s := splitServices(data)
	if s == nil || roughNodes(data) > maxNodes {
		return nil, nil, nil, 0, false
	}
	var doc yaml.Node
	if yaml.Unmarshal(s.rest, &doc) != nil || !s.findPlaceholder(&doc) {
		return nil, nil, nil, 0, false
	}
	var cfg Config
	d := &decoder{overridden: overriddenKeys(), split: s}
	// The whole file's nodes are known only once every item is parsed:
	// the walk runs unbounded (the list holds no alias), and what it
	// visited is compared with the whole parse's bound after.
	const unbounded = math.MaxInt / 2
	d.decode(&doc, unbounded, &cfg)
	// rest's tree has services:'s null value where the whole has the
	// list's node, one for one.
	nodes := countNodes(&doc) + s.nodes
	visited := unbounded - d.budget
	if s.failed || d.fatal || s.decoded != 1 || nodes > maxNodes || visited > walkBudget(nodes) {
		return nil, nil, nil, 0, false
	}
	return &cfg, d.problems, d.failed, nodes, true
}
