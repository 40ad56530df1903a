package keepalived

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dump writes a tree one node a line, indented by depth, as
// "key arg arg {" ... "}", so that a case states the tree it wants.
func dump(n *Node) string {
	var b strings.Builder
	var walk func(n *Node, depth int)
	walk = func(n *Node, depth int) {
		for _, ch := range n.Children {
			b.WriteString(strings.Repeat("  ", depth))
			b.WriteString(strings.Join(append([]string{ch.Key}, quoteArgs(ch.Args)...), " "))
			if ch.Block {
				b.WriteString(" {\n")
				walk(ch, depth+1)
				b.WriteString(strings.Repeat("  ", depth) + "}")
			}
			b.WriteString("\n")
		}
	}
	walk(n, 0)
	return b.String()
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t\"'") || a == "" {
			a = "<" + a + ">"
		}
		out[i] = a
	}
	return out
}

// writeFiles writes name → content under a new directory and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestParseGrammar: the grammar cases of keepalived's configuration
// files, each file written for this test.
func TestParseGrammar(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string // the main file is "k.conf"
		id    string
		want  string
	}{
		{"nesting", map[string]string{"k.conf": "a {\n b x {\n  c 1\n  d {\n   e\n  }\n }\n}\nf 2\n"},
			"", "a {\n  b x {\n    c 1\n    d {\n      e\n    }\n  }\n}\nf 2\n"},
		{"brace on its own line", map[string]string{"k.conf": "vrrp_instance V\n{\n state BACKUP\n}\n"},
			"", "vrrp_instance V {\n  state BACKUP\n}\n"},
		{"block on one line", map[string]string{"k.conf": "virtual_ipaddress { 192.0.2.1/24 }\ntrack {a}\n"},
			"", "virtual_ipaddress {\n  192.0.2.1/24\n}\ntrack {\n  a\n}\n"},
		{"comments", map[string]string{"k.conf": "! a comment\n# another\na 1 # trailing\nb 2 ! trailing\n   ! indented\nc \"x # y\" 'p ! q'\n"},
			"", "a 1\nb 2\nc <x # y> <p ! q>\n"},
		{"quoting", map[string]string{"k.conf": "s \"/bin/x a b\"\nt 'one two' three\nu ab\"c d\"e\nv \"a\\\"b\" 'c\\\\d'\nw \"\"\n"},
			"", "s </bin/x a b>\nt <one two> three\nu <abc de>\nv <a\"b> c\\d\nw <>\n"},
		{"tabs and blank lines", map[string]string{"k.conf": "\n\ta\t1\t2\r\n\n"},
			"", "a 1 2\n"},
		{"@id kept", map[string]string{"k.conf": "@lb-a p 150\n@lb-b p 100\n@^lb-a peer 1\n@^lb-b peer 2\n  @lb-a\tq 1\n"},
			"lb-a", "p 150\npeer 2\nq 1\n"},
		{"@id with no config id", map[string]string{"k.conf": "@x p 1\n@^x p 2\n"},
			"", "p 2\n"},
		{"@id in a block", map[string]string{"k.conf": "u {\n @a 192.0.2.1\n @b 192.0.2.2\n}\n"},
			"b", "u {\n  192.0.2.2\n}\n"},
		{"parameters", map[string]string{"k.conf": "$P=150\n$BASE=192.0.2.${N}\n$N=7\npriority $P\nvip ${BASE}/24\nkeep $UNDEFINED\n"},
			"", "priority 150\nvip 192.0.2.7/24\nkeep $UNDEFINED\n"},
		{"parameter chosen by @id", map[string]string{"k.conf": "@a $P=200\n@b $P=100\np $P\n"},
			"b", "p 100\n"},
		{"include relative to the including file", map[string]string{
			"k.conf":       "a 1\ninclude sub/one.conf\nb 2\n",
			"sub/one.conf": "c 3\ninclude two.conf\n",
			"sub/two.conf": "d 4\n",
		}, "", "a 1\nc 3\nd 4\nb 2\n"},
		{"include glob, in name order", map[string]string{
			"k.conf":      "include d/*.conf\n",
			"d/20.conf":   "second\n",
			"d/10.conf":   "first\n",
			"d/x.notconf": "never\n",
		}, "", "first\nsecond\n"},
		{"include inside a block", map[string]string{
			"k.conf":    "vrrp_instance V {\n include vips.conf\n}\n",
			"vips.conf": "virtual_ipaddress {\n 192.0.2.1\n}\n",
		}, "", "vrrp_instance V {\n  virtual_ipaddress {\n    192.0.2.1\n  }\n}\n"},
		{"glob matching nothing", map[string]string{"k.conf": "include none/*.conf\na\n"},
			"", "a\n"},
		{"the same file twice, not nested, is no cycle", map[string]string{
			"k.conf": "include x.conf\ninclude x.conf\n", "x.conf": "x\n",
		}, "", "x\nx\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, tc.files)
			root, err := ParseFile(filepath.Join(dir, "k.conf"), Options{ConfigID: tc.id})
			if err != nil {
				t.Fatal(err)
			}
			if got := dump(root); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// TestParseLines: every node knows the file and line it came from, across
// includes, for the report.
func TestParseLines(t *testing.T) {
	dir := writeFiles(t, map[string]string{"k.conf": "a\n\ninclude i.conf\nb {\n  c\n}\n", "i.conf": "\nx\n"})
	root, err := ParseFile(filepath.Join(dir, "k.conf"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var walk func(n *Node)
	walk = func(n *Node) {
		for _, ch := range n.Children {
			got = append(got, ch.Key+"@"+filepath.Base(ch.File)+":"+strconv.Itoa(ch.Line))
			walk(ch)
		}
	}
	walk(root)
	want := "a@k.conf:1 x@i.conf:2 b@k.conf:4 c@k.conf:5"
	if strings.Join(got, " ") != want {
		t.Errorf("got %s, want %s", strings.Join(got, " "), want)
	}
}

// TestParseErrors: grammar a file must not have, each named with its file
// and line, as a *SyntaxError (exit 2), or a file that cannot be read, as
// a *ReadError (exit 1).
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		syntax bool
		want   string // in the message
	}{
		{"unclosed block", map[string]string{"k.conf": "a {\n b\n"}, true, "k.conf:1: the block of a is never closed"},
		{"stray close", map[string]string{"k.conf": "a\n}\n"}, true, "k.conf:2: } closes no block"},
		{"open with no keyword", map[string]string{"k.conf": "{\n}\n"}, true, "k.conf:1: { opens a block with no keyword"},
		{"unterminated quote", map[string]string{"k.conf": "a\nb \"x\n"}, true, "k.conf:2: the quoted string that starts at column 3 has no closing \""},
		{"include cycle", map[string]string{"k.conf": "include a.conf\n", "a.conf": "x\ninclude b.conf\n", "b.conf": "include a.conf\n"}, true, "b.conf:1: include "},
		{"include of itself", map[string]string{"k.conf": "include k.conf\n"}, true, "k.conf:1: include "},
		{"include missing file", map[string]string{"k.conf": "a\ninclude nothere.conf\n"}, false, "nothere.conf: included from"},
		{"include with two names", map[string]string{"k.conf": "include a b\n"}, true, "k.conf:1: include takes one file name"},
		{"multi-line parameter", map[string]string{"k.conf": "$I= \\\nvrrp_instance X {\n"}, true, "k.conf:1: $I is defined over several lines"},
		{"parameter loop", map[string]string{"k.conf": "$A=${B}\n$B=${A}\nx ${A}\n"}, true, "k.conf:3: parameters still refer to parameters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, tc.files)
			_, err := ParseFile(filepath.Join(dir, "k.conf"), Options{})
			var se *SyntaxError
			var re *ReadError
			switch {
			case err == nil:
				t.Fatal("parsed")
			case tc.syntax && !errors.As(err, &se), !tc.syntax && !errors.As(err, &re):
				t.Fatalf("%T %v: want syntax=%v", err, err, tc.syntax)
			case !strings.Contains(err.Error(), tc.want), strings.Contains(tc.name, "cycle") && !strings.Contains(err.Error(), "a cycle"):
				t.Fatalf("%v: want it to say %q", err, tc.want)
			}
		})
	}
}

// TestParseHostile: inputs meant to hang or exhaust the parser end in a
// clear error, quickly. The time limit only bounds a hang.
func TestParseHostile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.conf")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(maxFileSize + 1); err != nil { // sparse: costs no disk
		t.Fatal(err)
	}
	f.Close()
	deep := strings.Repeat("a {\n", maxNesting+5) + strings.Repeat("}\n", maxNesting+5)
	chain := map[string]string{}
	for i := range maxIncludeDepth + 3 {
		chain[filepath.Join("chain", strconv.Itoa(i)+".conf")] = "include " + strconv.Itoa(i+1) + ".conf\n"
	}
	chainDir := writeFiles(t, chain)
	// A glob that includes its own directory's files: each includes all
	// the others, a cycle at the second step.
	fanDir := writeFiles(t, map[string]string{"f/a.conf": "include *.conf\n", "f/b.conf": "include *.conf\n"})
	words := strings.Repeat("w ", 1<<16) + "\n"
	manyWords := strings.Repeat(words, maxTokens/(1<<16)+2)

	for _, tc := range []struct {
		name, path, want string
	}{
		{"fifo", fifo, "is not a regular file"},
		{"/dev/zero", "/dev/zero", "is not a regular file"},
		{"directory", dir, "is not a regular file"},
		{"huge file", big, "more than the 16 MiB"},
		{"missing file", filepath.Join(dir, "absent.conf"), "no such file"},
		{"deep nesting", writeFiles(t, map[string]string{"k.conf": deep}) + "/k.conf", "blocks nest more than"},
		{"include chain", filepath.Join(chainDir, "chain", "0.conf"), "includes nest more than"},
		{"include fan cycle", filepath.Join(fanDir, "f", "a.conf"), "a cycle"},
		{"include of a fifo", writeFiles(t, map[string]string{"k.conf": "include " + fifo + "\n"}) + "/k.conf", "is not a regular file"},
		{"include of /dev/zero", writeFiles(t, map[string]string{"k.conf": "include /dev/zero\n"}) + "/k.conf", "is not a regular file"},
		{"too many words", writeFiles(t, map[string]string{"k.conf": manyWords}) + "/k.conf", "more than 1000000 words"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := ParseFile(tc.path, Options{})
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one saying %q", err, tc.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the parse did not end within 30s")
			}
		})
	}
}
