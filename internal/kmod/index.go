// The lists depmod writes under /lib/modules/<release>, parsed by pure
// functions, and what follows from them alone: a module's load order and
// what a soft dependency stands for.

package kmod

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// NameFromPath is the module name of a file that modules.dep or
// modules.builtin lists, the way kmod's path_to_modname reads it: the base
// name up to its first '.', '-' read as '_' ("kernel/drivers/hid/
// hid-generic.ko.xz" is hid_generic). It returns "" for anything but a
// module file: a name, then ".ko", plain or compressed (.gz, .xz, .zst).
func NameFromPath(p string) string {
	base := path.Base(strings.TrimSpace(p))
	name, ext, _ := strings.Cut(base, ".")
	switch ext {
	case "ko", "ko.gz", "ko.xz", "ko.zst":
	default:
		return ""
	}
	return strings.ReplaceAll(name, "-", "_")
}

// compression is the format of a module file that the kernel names in
// /sys/module/compression ("gzip", "xz", "zstd"), or "" for a plain .ko.
func compression(p string) string {
	switch {
	case strings.HasSuffix(p, ".ko.gz"):
		return "gzip"
	case strings.HasSuffix(p, ".ko.xz"):
		return "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		return "zstd"
	}
	return ""
}

// DepEntry is one line of modules.dep: a module file and the files of all
// the modules it needs, transitively, in depmod's order (load the last one
// first). Paths are as written: relative to /lib/modules/<release>, or
// absolute.
type DepEntry struct {
	Path string
	Deps []string
}

// Dep is modules.dep by module name.
type Dep map[string]DepEntry

// ParseDep reads modules.dep: "module.ko: dependencies" a line. A line
// with no ":" is an error naming its number, since depmod writes none and
// loading by a damaged list could load the wrong file. A line whose file
// is no module halb could load (a vendor's "extra/blob.ko.bz2:") is
// skipped, as both readers before this one did: it cannot be what halb
// asks for, and one such line must not make IPVS unusable.
func ParseDep(r io.Reader) (Dep, error) {
	d := Dep{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		file = strings.TrimSpace(file)
		if !ok || file == "" {
			return nil, fmt.Errorf("line %d: want \"module.ko: dependencies\", have %q", n, line)
		}
		name := NameFromPath(file)
		if name == "" {
			continue
		}
		d[name] = DepEntry{Path: file, Deps: strings.Fields(deps)}
	}
	return d, sc.Err()
}

// ParseBuiltin returns the names of the modules built into the kernel,
// which modules.builtin lists as one file path a line; lines that name no
// module file are skipped.
func ParseBuiltin(r io.Reader) (map[string]bool, error) {
	b := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if name := NameFromPath(sc.Text()); name != "" {
			b[name] = true
		}
	}
	return b, sc.Err()
}

// softdep is one module's line of modules.softdep: the names to load before
// it (pre) and after it (post). A name may be a module's or an alias.
type softdep struct {
	pre, post []string
}

// modulesSoftdep is modules.softdep by module name.
//
// depmod writes it from the modules' own "softdep" tags: a module that asks
// the kernel for something at run time, rather than calling a symbol, says
// there what has to be loaded with it. On Debian 12 that is libcrc32c,
// which needs the crypto API's crc32c in its init function ("softdep
// libcrc32c pre: crc32c"); with the kernel's on-demand loading off and no
// crc32c loaded, libcrc32c, and so ip_vs, fail to load with ENOENT.
type modulesSoftdep map[string]softdep

// parseSoftdep reads lines "softdep MODULE pre: A B post: C", pre:
// and post: each optional and in either order. As kmod does, it skips
// anything else, and the words of a line that come before any pre: or post:
// (Debian 12's has "softdep cifs gcm": cifs wrote MODULE_SOFTDEP("gcm")).
// Several lines for one module add up: depmod writes one a MODULE_SOFTDEP
// ("softdep ksmbd pre: crc32", "softdep ksmbd pre: gcm", ...). kmod's
// modprobe honours only the first of them; halb loads them all.
func parseSoftdep(r io.Reader) (modulesSoftdep, error) {
	d := modulesSoftdep{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "softdep" {
			continue
		}
		name := strings.ReplaceAll(f[1], "-", "_")
		sd := d[name]
		var list *[]string
		for _, w := range f[2:] {
			switch {
			case w == "pre:":
				list = &sd.pre
			case w == "post:":
				list = &sd.post
			case list != nil && !slices.Contains(*list, w):
				*list = append(*list, w)
			}
		}
		if sd.pre != nil || sd.post != nil {
			d[name] = sd
		}
	}
	return d, sc.Err()
}

// moduleAlias is one line of modules.alias: "alias PATTERN MODULE".
type moduleAlias struct {
	pattern string // normalised, may hold shell wildcards
	module  string
}

// parseAlias reads modules.alias; lines other than "alias PATTERN
// MODULE" are skipped.
func parseAlias(r io.Reader) ([]moduleAlias, error) {
	var aliases []moduleAlias
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" {
			aliases = append(aliases, moduleAlias{pattern: aliasNormalise(f[1]), module: strings.ReplaceAll(f[2], "-", "_")})
		}
	}
	return aliases, sc.Err()
}

// aliasNormalise turns '-' into '_' outside brackets, as kmod's
// alias_normalize does, so that "crc32c-intel" and "crc32c_intel" are one
// alias and a pattern's "[a-z]" stays a range.
func aliasNormalise(s string) string {
	b := []byte(s)
	depth := 0
	for i, c := range b {
		switch {
		case c == '[':
			depth++
		case c == ']' && depth > 0:
			depth--
		case c == '-' && depth == 0:
			b[i] = '_'
		}
	}
	return string(b)
}

// resolveSoft returns the modules a soft dependency's name stands for, as
// kmod looks such a name up: the module of that name when modules.dep lists
// it or it is built in, else every module with a matching alias in
// modules.alias, in that file's order ("crc32c": crc32c_intel and
// crc32c_generic, both loaded, as modprobe does; the crypto API then uses
// the faster). Aliases from /etc/modprobe.d are not read: this path is for
// hosts without kmod, which have none.
func resolveSoft(name string, dep Dep, builtin map[string]bool, aliases []moduleAlias) []string {
	if mod := strings.ReplaceAll(name, "-", "_"); dep[mod].Path != "" || builtin[mod] {
		return []string{mod}
	}
	a := aliasNormalise(name)
	var mods []string
	for _, al := range aliases {
		ok := al.pattern == a
		if !ok && strings.ContainsAny(al.pattern, "*?[") {
			// fnmatch(3) as kmod calls it lets '*' match '/', path.Match
			// does not; no alias a soft dependency names holds one. A bad
			// pattern matches nothing.
			ok, _ = path.Match(al.pattern, a)
		}
		if ok && !slices.Contains(mods, al.module) {
			mods = append(mods, al.module)
		}
	}
	return mods
}

// loadStep is one module to load: its name and its file as modules.dep
// writes it.
type loadStep struct {
	name string
	file string
}

// loadOrder returns the modules to load for name, dependencies first and each
// once, name last; false when modules.dep does not list name. Like kmod, it
// takes a module's dependencies from the end of its line, and it follows each
// dependency's own line too, so a modules.dep that lists only direct
// dependencies still comes out in a loadable order.
func (d Dep) loadOrder(name string) ([]loadStep, bool) {
	e, ok := d[name]
	if !ok {
		return nil, false
	}
	var order []loadStep
	seen := map[string]bool{}
	var visit func(name, file string)
	visit = func(name, file string) {
		if seen[name] {
			return
		}
		seen[name] = true
		var deps []string
		if e, ok := d[name]; ok {
			file, deps = e.Path, e.Deps
		}
		for i := len(deps) - 1; i >= 0; i-- {
			visit(NameFromPath(deps[i]), deps[i])
		}
		order = append(order, loadStep{name: name, file: file})
	}
	visit(name, e.Path)
	return order, true
}
