// Package keepalived reads a keepalived.conf and writes the halb
// configuration that does the same, with a report of every keyword that
// is not carried across exactly: `halb import`. parse.go turns the file,
// its includes and its conditional lines into a tree of keyword nodes;
// convert.go maps that tree onto halb's keys; script.go turns keepalived's
// script strings into the argv halb runs.
//
// It must never change the host, run a script the file names, or write
// anything but the text it returns: the command decides where that goes.
// Every read is bounded (file size, file count, include depth, nesting,
// tokens), so that a hostile file ends in an error, never a hang.
package keepalived

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Bounds of one parse. keepalived's largest real configurations are some
// hundred kilobytes in a few dozen files; these leave room for a hundred
// times that and stop a file of garbage or an include loop early.
const (
	maxFileSize     = 16 << 20
	maxTotalSize    = 64 << 20
	maxFiles        = 1000
	maxIncludeDepth = 16
	maxNesting      = 32
	maxTokens       = 1_000_000
	maxParamDepth   = 16
)

// Node is one keyword line of the file: its keyword, its arguments and,
// when the line opens a { } block, the lines inside it.
type Node struct {
	Key      string
	Args     []string
	File     string
	Line     int
	Block    bool
	Children []*Node
	seq      int // its place in the file, includes followed: the report's order
}

// At is where the node was written, file:line, for the report.
func (n *Node) At() string { return fmt.Sprintf("%s:%d", n.File, n.Line) }

// Options are what a parse needs beyond the file.
type Options struct {
	// ConfigID selects the @ID lines kept (keepalived's -i); "" keeps
	// only @^ID lines, as no ID matches it.
	ConfigID string
}

// SyntaxError is a file that is not keepalived's grammar (exit 2).
type SyntaxError struct {
	File string
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// ReadError is a file that could not be read (exit 1): missing, not a
// regular file, too big.
type ReadError struct {
	File string
	Err  error
}

func (e *ReadError) Error() string { return fmt.Sprintf("%s: %v", e.File, e.Err) }
func (e *ReadError) Unwrap() error { return e.Err }

// token kinds: a word, an open or a close brace, or the end of a line.
type tokKind int

const (
	tokWord tokKind = iota
	tokOpen
	tokClose
	tokEOL
)

type token struct {
	kind tokKind
	text string
	file string
	line int
}

// parser holds what one parse has read so far, across its includes.
type parser struct {
	opt    Options
	toks   []token
	params map[string]string
	open   []string // the files being read, outermost first: an include of one of them is a cycle
	files  int
	total  int64
}

// ParseFile reads path and the files it includes and returns the root
// node, whose children are the file's top-level keywords.
func ParseFile(path string, opt Options) (*Node, error) {
	p := &parser{opt: opt, params: map[string]string{}}
	if err := p.readFile(path, &Node{File: path}, 0); err != nil {
		return nil, err
	}
	return p.tree()
}

// readFile tokenizes one file into p.toks, following its includes in
// place. from is where it was included (the main file: itself, line 0).
func (p *parser) readFile(path string, from *Node, depth int) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return &ReadError{File: path, Err: err}
	}
	for _, o := range p.open {
		if o == abs {
			return &SyntaxError{File: from.File, Line: from.Line,
				Msg: fmt.Sprintf("include %s: a cycle: %s -> %s", path, strings.Join(p.open, " -> "), abs)}
		}
	}
	if depth > maxIncludeDepth {
		return &SyntaxError{File: from.File, Line: from.Line,
			Msg: fmt.Sprintf("include %s: includes nest more than %d deep", path, maxIncludeDepth)}
	}
	p.files++
	if p.files > maxFiles {
		return &SyntaxError{File: from.File, Line: from.Line, Msg: fmt.Sprintf("more than %d files included", maxFiles)}
	}
	data, err := readBounded(path, maxFileSize)
	if err != nil {
		return err
	}
	p.total += int64(len(data))
	if p.total > maxTotalSize {
		return &ReadError{File: path, Err: fmt.Errorf("the included files hold more than %d MiB together", maxTotalSize>>20)}
	}
	p.open = append(p.open, abs)
	defer func() { p.open = p.open[:len(p.open)-1] }()
	return p.readLines(path, data, depth)
}

// readBounded reads a regular file of at most limit bytes. A FIFO, a
// device (/dev/zero) or a directory is refused before it is read: reading
// one could block for ever or never end.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, &ReadError{File: path, Err: unwrapPath(err)}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, &ReadError{File: path, Err: unwrapPath(err)}
	}
	if !fi.Mode().IsRegular() {
		return nil, &ReadError{File: path, Err: fmt.Errorf("is not a regular file (%s): only files are read", fi.Mode().Type())}
	}
	if fi.Size() > limit {
		return nil, &ReadError{File: path, Err: fmt.Errorf("is %d bytes, more than the %d MiB a configuration may be", fi.Size(), limit>>20)}
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, &ReadError{File: path, Err: unwrapPath(err)}
	}
	if int64(len(data)) > limit {
		return nil, &ReadError{File: path, Err: fmt.Errorf("grew past the %d MiB a configuration may be while it was read", limit>>20)}
	}
	return data, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readLines applies the line rules (@ID, $PARAM, comments, quotes,
// include) to each line of one file.
func (p *parser) readLines(file string, data []byte, depth int) error {
	lines := bytes.Split(data, []byte("\n"))
	for i, raw := range lines {
		lineNo := i + 1
		line, keep := p.conditional(strings.TrimRight(string(raw), "\r"))
		if !keep {
			continue
		}
		if name, value, ok := paramDef(line); ok {
			if strings.HasSuffix(value, "\\") {
				return &SyntaxError{File: file, Line: lineNo, Msg: fmt.Sprintf("$%s is defined over several lines, which halb import does not read: define it on one line", name)}
			}
			p.params[name] = value
			continue
		}
		line, err := p.substitute(line)
		if err != nil {
			return &SyntaxError{File: file, Line: lineNo, Msg: err.Error()}
		}
		words, err := p.lexLine(line, file, lineNo)
		if err != nil {
			return err
		}
		if len(words) > 0 && words[0].kind == tokWord && isInclude(words[0].text) {
			if err := p.include(file, lineNo, words, depth); err != nil {
				return err
			}
			continue
		}
		p.toks = append(p.toks, words...)
		p.toks = append(p.toks, token{kind: tokEOL, file: file, line: lineNo})
		if len(p.toks) > maxTokens {
			return &SyntaxError{File: file, Line: lineNo, Msg: fmt.Sprintf("more than %d words in the configuration", maxTokens)}
		}
	}
	return nil
}

// isInclude: include and its checked variants (includer, includem, ...),
// which differ only in what keepalived complains about.
func isInclude(w string) bool {
	switch w {
	case "include", "includer", "includem", "includew", "includeb", "includef":
		return true
	}
	return false
}

// conditional applies keepalived's @ID / @^ID prefix: the line is kept
// when ID is (or, with ^, is not) the config id, without its prefix.
func (p *parser) conditional(line string) (string, bool) {
	t := strings.TrimLeft(line, " \t")
	if !strings.HasPrefix(t, "@") {
		return line, true
	}
	t = t[1:]
	negate := strings.HasPrefix(t, "^")
	if negate {
		t = t[1:]
	}
	id, rest, _ := strings.Cut(t, " ")
	if i := strings.IndexByte(id, '\t'); i >= 0 {
		id, rest = id[:i], id[i+1:]+" "+rest
	}
	match := id == p.opt.ConfigID
	if match == negate {
		return "", false
	}
	return rest, true
}

// paramDef recognises a $NAME=VALUE definition line.
func paramDef(line string) (name, value string, ok bool) {
	t := strings.TrimLeft(line, " \t")
	if !strings.HasPrefix(t, "$") {
		return "", "", false
	}
	name, value, ok = strings.Cut(t[1:], "=")
	if !ok || !validParamName(name) {
		return "", "", false
	}
	return name, strings.TrimSpace(value), true
}

func validParamName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// substitute replaces ${NAME}, and $NAME followed by white space or the
// end of the line, with the value defined; an undefined name is left as
// written, as keepalived does. Replacement is repeated for values that
// hold parameters, maxParamDepth times at most.
func (p *parser) substitute(line string) (string, error) {
	if len(p.params) == 0 || !strings.Contains(line, "$") {
		return line, nil
	}
	for range maxParamDepth {
		next := p.substituteOnce(line)
		if next == line {
			return line, nil
		}
		if len(next) > 1<<20 {
			return "", errors.New("parameter substitution makes a line longer than 1 MiB")
		}
		line = next
	}
	return "", fmt.Errorf("parameters still refer to parameters after %d substitutions: a loop?", maxParamDepth)
}

func (p *parser) substituteOnce(line string) string {
	var b strings.Builder
	for i := 0; i < len(line); i++ {
		if line[i] != '$' {
			b.WriteByte(line[i])
			continue
		}
		rest := line[i+1:]
		if strings.HasPrefix(rest, "{") {
			if end := strings.IndexByte(rest, '}'); end > 0 {
				if v, ok := p.params[rest[1:end]]; ok {
					b.WriteString(v)
					i += end + 1
					continue
				}
			}
		} else {
			end := strings.IndexAny(rest, " \t")
			if end < 0 {
				end = len(rest)
			}
			if v, ok := p.params[rest[:end]]; ok {
				b.WriteString(v)
				i += end
				continue
			}
		}
		b.WriteByte('$')
	}
	return b.String()
}

// lexLine splits one line into words and braces: " and ' quote (with
// escapes, as keepalived's quoted strings have), ! and # outside quotes
// start a comment, and quoted parts glued to others make one word.
func (p *parser) lexLine(line, file string, lineNo int) ([]token, error) {
	var toks []token
	var w strings.Builder
	inWord := false
	flush := func() {
		if inWord {
			toks = append(toks, token{kind: tokWord, text: w.String(), file: file, line: lineNo})
			w.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			flush()
		case c == '#' || c == '!':
			flush()
			return toks, nil
		case c == '{' || c == '}':
			flush()
			kind := tokOpen
			if c == '}' {
				kind = tokClose
			}
			toks = append(toks, token{kind: kind, text: string(c), file: file, line: lineNo})
		case c == '"' || c == '\'':
			end, err := quoted(line, i, &w)
			if err != nil {
				return nil, &SyntaxError{File: file, Line: lineNo, Msg: err.Error()}
			}
			inWord = true
			i = end
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return toks, nil
}

// quoted reads the quoted string that starts at line[start] into w and
// returns the index of its closing quote.
func quoted(line string, start int, w *strings.Builder) (int, error) {
	q := line[start]
	for i := start + 1; i < len(line); i++ {
		c := line[i]
		switch {
		case c == q:
			return i, nil
		case c == '\\' && i+1 < len(line):
			i++
			w.WriteString(unescape(line[i]))
		default:
			w.WriteByte(c)
		}
	}
	return 0, fmt.Errorf("the quoted string that starts at column %d has no closing %c", start+1, q)
}

// unescape is the character a backslash before c stands for: the C
// escapes keepalived knows, else c itself.
func unescape(c byte) string {
	switch c {
	case 'n':
		return "\n"
	case 't':
		return "\t"
	case 'r':
		return "\r"
	case 'a':
		return "\a"
	case 'b':
		return "\b"
	case 'f':
		return "\f"
	case 'v':
		return "\v"
	}
	return string(c)
}

// include reads the files an include line names: a glob, relative to the
// directory of the including file. A pattern with no wildcard must name
// a file; a wildcard that matches nothing includes nothing, as in
// keepalived.
func (p *parser) include(file string, lineNo int, words []token, depth int) error {
	if len(words) != 2 || words[1].kind != tokWord {
		return &SyntaxError{File: file, Line: lineNo, Msg: "include takes one file name or pattern"}
	}
	pattern := words[1].text
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(file), pattern)
	}
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return &SyntaxError{File: file, Line: lineNo, Msg: fmt.Sprintf("include %s: %v", words[1].text, err)}
	}
	if len(matches) == 0 && !hasMeta(pattern) {
		return &ReadError{File: pattern, Err: fmt.Errorf("included from %s:%d: %w", file, lineNo, os.ErrNotExist)}
	}
	from := &Node{File: file, Line: lineNo}
	for _, m := range matches {
		if err := p.readFile(m, from, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[`) }

// tree builds the node tree from the tokens: a line's words are a node,
// a { opens its block (on the same line or alone on the next one), } ends
// it.
func (p *parser) tree() (*Node, error) {
	root := &Node{Key: "", Block: true}
	stack := []*Node{root}
	var last *Node // the node of the last line, which a { on its own line opens
	var cur *Node  // the node being filled on this line
	seq := 0
	for _, t := range p.toks {
		top := stack[len(stack)-1]
		switch t.kind {
		case tokWord:
			if cur == nil {
				seq++
				cur = &Node{Key: t.text, File: t.file, Line: t.line, seq: seq}
				top.Children = append(top.Children, cur)
				continue
			}
			cur.Args = append(cur.Args, t.text)
		case tokOpen:
			target := cur
			if target == nil {
				target = last
			}
			if target == nil || target.Block {
				return nil, &SyntaxError{File: t.file, Line: t.line, Msg: "{ opens a block with no keyword before it"}
			}
			if len(stack) > maxNesting {
				return nil, &SyntaxError{File: t.file, Line: t.line, Msg: fmt.Sprintf("blocks nest more than %d deep", maxNesting)}
			}
			target.Block = true
			stack = append(stack, target)
			cur, last = nil, nil
		case tokClose:
			if len(stack) == 1 {
				return nil, &SyntaxError{File: t.file, Line: t.line, Msg: "} closes no block"}
			}
			stack = stack[:len(stack)-1]
			cur, last = nil, nil
		case tokEOL:
			if cur != nil {
				last = cur
			}
			cur = nil
		}
	}
	if len(stack) > 1 {
		open := stack[len(stack)-1]
		return nil, &SyntaxError{File: open.File, Line: open.Line, Msg: fmt.Sprintf("the block of %s is never closed with }", open.Key)}
	}
	return root, nil
}
