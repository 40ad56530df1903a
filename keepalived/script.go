package keepalived

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// keepalived runs a script string as argv: unquoted white space separates
// the arguments and quotes hold spaces, with no shell in between. halb
// runs argv too, so a string with no shell syntax carries across as the
// words it splits into. A string that does use the shell (a pipe, &&,
// $VAR, a redirection, a glob) only ever worked where keepalived was
// given a shell, or not at all; it is wrapped as [/bin/sh, -c, string] so
// that what its author meant runs, and the wrapping is reported.

// shellSyntax are the characters that mean something to a shell outside
// quotes and nothing to keepalived's splitting.
const shellSyntax = "|&;<>()$`*?[]~{}"

// command is one converted script string.
type command struct {
	argv    []string
	wrapped bool   // [/bin/sh, -c, text]
	program string // the program the text starts with, resolved
	bare    string // the bare name it was written as, when resolved from PATH
}

// splitScript splits a keepalived script string into words: ' and "
// quote, a backslash escapes the next character. shell reports a
// character outside quotes that only a shell would act on, or an
// unterminated quote.
func splitScript(s string) (words []string, shell bool) {
	var w strings.Builder
	in := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			w.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			in = true
		case c == ' ' || c == '\t' || c == '\n':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			if strings.IndexByte(shellSyntax, c) >= 0 {
				shell = true
			}
			w.WriteByte(c)
			in = true
		}
	}
	if quote != 0 {
		shell = true
	}
	if in {
		words = append(words, w.String())
	}
	// VAR=value cmd: an environment assignment only a shell makes.
	if len(words) > 0 && strings.Contains(words[0], "=") && !strings.Contains(words[0], "/") {
		shell = true
	}
	return words, shell
}

// script converts the script string s of node n: argv, or a /bin/sh -c
// wrapping, with a bare program name resolved from PATH the way
// keepalived finds it; every change is reported on n.
func (c *converter) script(n *Node, s string) command {
	words, shell := splitScript(s)
	if len(words) == 0 {
		c.fail(n, "the script is empty")
		return command{}
	}
	cmd := command{argv: words, program: words[0]}
	if name := words[0]; !filepath.IsAbs(name) && !shell {
		cmd.bare = name
		if path, ok := c.lookPath(name); ok {
			cmd.program = path
			cmd.argv = append([]string{path}, words[1:]...)
			c.approx(n, fmt.Sprintf("%s is found on PATH by keepalived; halb runs programs by absolute path: %s (found on this host)", name, path))
		} else {
			c.approx(n, fmt.Sprintf("%s is not an absolute path and was not found in %s: write the program's absolute path", name, lookDirs))
		}
	}
	if shell {
		cmd.wrapped = true
		cmd.argv = []string{"/bin/sh", "-c", s}
		if !filepath.IsAbs(words[0]) {
			if path, ok := c.lookPath(words[0]); ok {
				cmd.program = path
			} else if c.opt.LookPath != nil && !strings.Contains(words[0], "/") {
				c.warn(n, fmt.Sprintf("%s is not in %s on this host: the shell would look for it in its PATH as root; write its absolute path", words[0], lookDirs))
			}
		}
		c.approx(n, fmt.Sprintf("%q uses shell syntax, which keepalived does not interpret: halb runs it as [/bin/sh, -c, ...]", s))
	}
	c.checkProgram(n, cmd.program)
	return cmd
}

// checkProgram holds the program to halb's script policy on this host,
// when the options give a check: a program halb would refuse is reported
// now rather than at `halb check`.
func (c *converter) checkProgram(n *Node, program string) {
	if c.opt.CheckProgram == nil || !filepath.IsAbs(program) {
		return
	}
	if err := c.opt.CheckProgram(program); err != nil {
		c.warn(n, fmt.Sprintf("%s: halb will refuse to run it on this host: %v", program, err))
	}
}

// lookDirs is where a bare program name is looked for: the PATH a daemon
// started by systemd has, not that of whoever runs the import.
const lookDirs = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func (c *converter) lookPath(name string) (string, bool) {
	if c.opt.LookPath == nil || strings.Contains(name, "/") {
		return "", false
	}
	return c.opt.LookPath(name)
}

// SystemLookPath finds name in the directories of lookDirs on this host,
// as keepalived, started by the init system, would: the first regular,
// executable file.
func SystemLookPath(name string) (string, bool) {
	for _, dir := range filepath.SplitList(lookDirs) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}
