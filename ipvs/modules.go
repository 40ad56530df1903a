// This file set loads the kernel modules IPVS needs.
//
// halb loads what it needs explicitly and says precisely what is missing: it
// does not leave schedulers to the kernel's on-demand loading, which some
// distributions switch off. It must never unload a module, pass module
// parameters or force flags, or load anything it was not asked for beyond the
// dependencies modules.dep lists and the soft dependencies modules.softdep
// lists.

package ipvs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors for conditions callers act on; a *ModuleError wraps them.
var (
	// ErrModuleNotShipped: this kernel has no such module, built in or as a
	// file, or its modules are not installed.
	ErrModuleNotShipped = errors.New("module not shipped with this kernel")
	// ErrNoPermission: the kernel refused to load a module for want of
	// privilege (no CAP_SYS_MODULE, a security module, a container).
	ErrNoPermission = errors.New("not permitted to load kernel modules")
	// ErrModulesDisabled: kernel.modules_disabled is 1, so nothing can be
	// loaded until the next boot.
	ErrModulesDisabled = errors.New("module loading is disabled (kernel.modules_disabled = 1)")
	// ErrSignatureRejected: the kernel accepts signed modules only (signature
	// enforcement or lockdown) and refused this one.
	ErrSignatureRejected = errors.New("the kernel rejected the module's signature")
)

// BootConfig is where a host lists modules to load at boot, before halb
// starts; configs/modules-load.d/halb.conf is the one halb ships.
const BootConfig = "/etc/modules-load.d/halb.conf"

// ModuleError says which module could not be made available, on which
// kernel, what was tried, why it failed and how to fix it.
type ModuleError struct {
	Module   string // module name as the kernel knows it ("ip_vs_rr")
	NeededBy string // the module asked for, when Module is one of its dependencies
	Release  string // kernel release; "" when it could not be read
	// Step is what failed: "read" (the kernel release), "find" (the module in
	// modules.dep), "run" (modprobe), "finit_module" (loading the file
	// without modprobe) or "confirm" (waiting for /sys/module/<name>).
	Step string
	Path string // the file or program of that step, as the host sees it
	Err  error  // the cause; wraps one of the sentinels when it applies
	Fix  string // what to do about it; may be empty
}

func (e *ModuleError) Error() string {
	var b strings.Builder
	b.WriteString("load kernel module ")
	b.WriteString(e.Module)
	if e.NeededBy != "" {
		fmt.Fprintf(&b, " (needed by %s)", e.NeededBy)
	}
	if e.Release != "" {
		fmt.Fprintf(&b, " for kernel %s", e.Release)
	} else {
		b.WriteString(" (kernel release unknown)")
	}
	fmt.Fprintf(&b, ": %s %s: %v", e.Step, e.Path, e.Err)
	if e.Fix != "" {
		b.WriteString("; ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

func (e *ModuleError) Unwrap() error { return e.Err }

// Steps of ModuleError.
const (
	stepRead    = "read"
	stepFind    = "find"
	stepRun     = "run"
	stepFinit   = "finit_module"
	stepConfirm = "confirm"
)

// schedulers are IPVS's schedulers as services.scheduler names them; each is
// the module ip_vs_<name>.
var schedulers = []string{"mh", "rr", "wrr", "sh", "lc", "wlc", "sed", "nq", "dh", "lblc", "lblcr", "fo", "ovf", "twos"}

// Needed returns the modules a director needs for services that use the
// given schedulers: ip_vs first, then ip_vs_<scheduler> once each, in the
// order the schedulers are first used.
//
// The forwarding method adds nothing. NAT is ip_vs itself, and the conntrack
// it needs is a dependency modules.dep lists. Tunnelling needs neither ipip
// nor ip6_tunnel on the director: ip_vs_tunnel_xmit (ip_vs_xmit.c) pushes the
// outer IPv4 or IPv6 header, and the GUE or GRE header, itself and sends the
// packet with ip_local_out, never through a tunl0 or ip6tnl0 device. The
// helpers it calls (iptunnel_handle_offloads, gre_build_header) are in the
// core kernel or inline. ipip and ip6_tunnel are what the backends need, to
// take the packet out of the tunnel, and halb does not run there.
func Needed(scheds []string) ([]string, error) {
	mods := []string{"ip_vs"}
	for _, s := range scheds {
		if !slices.Contains(schedulers, s) {
			return nil, fmt.Errorf("scheduler %q: IPVS has no such scheduler (use one of %s)", s, strings.Join(schedulers, ", "))
		}
		if m := "ip_vs_" + s; !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	return mods, nil
}

// Modules loads kernel modules on a host. The zero value works on the real
// host.
type Modules struct {
	// Root is the filesystem root for /proc, /sys and /lib/modules; "" means
	// "/". Programs run and files loaded are still the host's own: Root is
	// for tests.
	Root string
	// Release is the kernel release whose /lib/modules to use; "" means the
	// running kernel's, from /proc/sys/kernel/osrelease under Root. modprobe
	// always works on the running kernel.
	Release string
	// Run runs a program and returns what it wrote to standard error; nil
	// runs it with os/exec.
	Run func(ctx context.Context, path string, args ...string) (stderr []byte, err error)
	// FinitModule loads a module from an open file; nil calls finit_module(2).
	FinitModule func(f *os.File, params string, flags int) error
	// Settle is how long a module may stay "coming" (its init function still
	// running) before Ensure gives up on it; 0 means 10 seconds.
	Settle time.Duration
	// Log receives what was loaded; nil logs nothing.
	Log *slog.Logger
}

// Paths read, as the host sees them; Modules.Root is put in front.
const (
	osreleasePath       = "/proc/sys/kernel/osrelease"
	modprobeSysctl      = "/proc/sys/kernel/modprobe"
	modulesDisabledPath = "/proc/sys/kernel/modules_disabled"
	statusPath          = "/proc/self/status"
	lockdownPath        = "/sys/kernel/security/lockdown"
	sysModuleDir        = "/sys/module"
	compressionPath     = "/sys/module/compression"
	libModulesDir       = "/lib/modules"
)

// modprobeFallbacks are where modprobe lives when the kernel's own setting
// does not name a usable one.
var modprobeFallbacks = []string{"/sbin/modprobe", "/usr/sbin/modprobe"}

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE from
// include/uapi/linux/module.h: the kernel decompresses the file itself.
const moduleInitCompressedFile = 0x4

const (
	defaultSettle = 10 * time.Second
	settlePoll    = 20 * time.Millisecond
	capSysModule  = 16 // linux/capability.h
)

// Ensure makes each named module available: present already (loaded or built
// in), or loaded now. It runs the system's modprobe when there is one and
// otherwise loads the module and its modules.dep dependencies itself with
// finit_module(2), each with the soft dependencies modules.softdep lists for
// it, as kmod does (see loadNative). A module counts as loaded once
// /sys/module/<name>/initstate says "live", that is once its init function
// has returned: a module's directory appears before that, and a caller that
// used IPVS at that moment would find no "IPVS" generic netlink family yet.
//
// Names may use '-' or '_'. Every module that is not shipped is reported; any
// other failure stops Ensure, since the next module would fail the same way.
// Each error is a *ModuleError.
func (m Modules) Ensure(ctx context.Context, names ...string) error {
	h := &host{Modules: m}
	var errs []error
	for _, n := range names {
		name, err := moduleName(n)
		if err != nil {
			errs = append(errs, err)
			break
		}
		err = h.ensure(ctx, name)
		if err == nil {
			continue
		}
		errs = append(errs, err)
		if !errors.Is(err, ErrModuleNotShipped) {
			break
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// moduleName normalises a module name the way the kernel and kmod do ('-'
// becomes '_') and refuses anything that is not a module name, since the
// name becomes part of a path.
func moduleName(s string) (string, error) {
	name := strings.ReplaceAll(s, "-", "_")
	ok := name != "" && len(name) < 56 // MODULE_NAME_LEN on 64-bit, NUL included
	for _, c := range name {
		ok = ok && (c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z')
	}
	if !ok {
		return "", fmt.Errorf("kernel module %q: not a module name", s)
	}
	return name, nil
}

// modnameFromPath is the module name of a file in modules.dep or
// modules.builtin: the base name up to its first '.', normalised.
func modnameFromPath(p string) string {
	base := path.Base(p)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
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

// depEntry is one line of modules.dep: a module file and the files of all
// the modules it needs, transitively, in depmod's order (load the last one
// first). Paths are as written: relative to /lib/modules/<release>, or
// absolute.
type depEntry struct {
	path string
	deps []string
}

// modulesDep is modules.dep by module name.
type modulesDep map[string]depEntry

func parseModulesDep(r io.Reader) (modulesDep, error) {
	d := modulesDep{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(file) == "" {
			return nil, fmt.Errorf("line %d: want \"module.ko: dependencies\", have %q", n, line)
		}
		file = strings.TrimSpace(file)
		d[modnameFromPath(file)] = depEntry{path: file, deps: strings.Fields(deps)}
	}
	return d, sc.Err()
}

// parseModulesBuiltin returns the names of the modules built into the
// kernel, one file path per line in modules.builtin.
func parseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	b := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			b[modnameFromPath(line)] = true
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

// parseModulesSoftdep reads lines "softdep MODULE pre: A B post: C", pre:
// and post: each optional and in either order. As kmod does, it skips
// anything else, and the words of a line that come before any pre: or post:
// (Debian 12's has "softdep cifs gcm": cifs wrote MODULE_SOFTDEP("gcm")).
// Several lines for one module add up: depmod writes one a MODULE_SOFTDEP
// ("softdep ksmbd pre: crc32", "softdep ksmbd pre: gcm", ...). kmod's
// modprobe honours only the first of them; halb loads them all.
func parseModulesSoftdep(r io.Reader) (modulesSoftdep, error) {
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

// parseModulesAlias reads modules.alias; lines other than "alias PATTERN
// MODULE" are skipped.
func parseModulesAlias(r io.Reader) ([]moduleAlias, error) {
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
func resolveSoft(name string, dep modulesDep, builtin map[string]bool, aliases []moduleAlias) []string {
	if mod := strings.ReplaceAll(name, "-", "_"); dep[mod].path != "" || builtin[mod] {
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
func (d modulesDep) loadOrder(name string) ([]loadStep, bool) {
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
			file, deps = e.path, e.deps
		}
		for i := len(deps) - 1; i >= 0; i-- {
			visit(modnameFromPath(deps[i]), deps[i])
		}
		order = append(order, loadStep{name: name, file: file})
	}
	visit(name, e.path)
	return order, true
}

// moduleState is what /sys/module and modules.builtin say about a module.
type moduleState int

const (
	stateAbsent  moduleState = iota
	stateComing              // loading: its init function has not returned yet
	stateLive                // loaded
	stateGoing               // being unloaded
	stateBuiltin             // built into the kernel
)

// host answers questions about the host for one Ensure call; it reads each
// of the kernel's module lists at most once.
type host struct {
	Modules

	release    string
	releaseErr error
	releaseSet bool

	builtin    map[string]bool
	builtinErr error
	builtinSet bool

	dep    modulesDep
	depErr error
	depSet bool

	softdeps   modulesSoftdep // empty when modules.softdep cannot be read
	softdepSet bool
	aliases    []moduleAlias // empty when modules.alias cannot be read
	aliasesSet bool

	// visited holds the modules the native loader has taken up in this
	// Ensure call, so that soft dependencies that name each other (a post:
	// b, b pre: a) end.
	visited map[string]bool
}

// path turns a host path into the one to read under Root.
func (h *host) path(p string) string {
	if h.Root == "" {
		return p
	}
	return filepath.Join(h.Root, p)
}

func (h *host) readFile(p string) ([]byte, error) {
	return os.ReadFile(h.path(p))
}

func (h *host) logger() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

func (h *host) kernelRelease() (string, error) {
	if !h.releaseSet {
		h.releaseSet = true
		h.release = h.Release
		if h.release == "" {
			data, err := h.readFile(osreleasePath)
			h.release = strings.TrimSpace(string(data))
			if err == nil && h.release == "" {
				err = errors.New("empty")
			}
			h.releaseErr = err
		}
	}
	return h.release, h.releaseErr
}

func (h *host) modulesDir() (string, error) {
	rel, err := h.kernelRelease()
	if err != nil {
		return "", err
	}
	return path.Join(libModulesDir, rel), nil
}

// builtins returns the modules built into the kernel; an error when
// modules.builtin cannot be read.
func (h *host) builtins() (map[string]bool, error) {
	if !h.builtinSet {
		h.builtinSet = true
		h.builtinErr = h.parseModulesFile("modules.builtin", func(r io.Reader) (err error) {
			h.builtin, err = parseModulesBuiltin(r)
			return err
		})
	}
	return h.builtin, h.builtinErr
}

func (h *host) modulesDep() (modulesDep, error) {
	if !h.depSet {
		h.depSet = true
		h.depErr = h.parseModulesFile("modules.dep", func(r io.Reader) (err error) {
			h.dep, err = parseModulesDep(r)
			return err
		})
	}
	return h.dep, h.depErr
}

// softdepsOf returns what modules.softdep lists for name. The file is read
// once; when it cannot be read, that is logged and modules load without
// soft dependencies, as they did before depmod wrote the file (kmod 13).
func (h *host) softdepsOf(name string) softdep {
	if !h.softdepSet {
		h.softdepSet = true
		err := h.parseModulesFile("modules.softdep", func(r io.Reader) (err error) {
			h.softdeps, err = parseModulesSoftdep(r)
			return err
		})
		if err != nil {
			h.logger().Warn("cannot read modules.softdep; loading modules without their soft dependencies", "err", err)
		}
	}
	return h.softdeps[name]
}

func (h *host) moduleAliases() []moduleAlias {
	if !h.aliasesSet {
		h.aliasesSet = true
		err := h.parseModulesFile("modules.alias", func(r io.Reader) (err error) {
			h.aliases, err = parseModulesAlias(r)
			return err
		})
		if err != nil {
			h.logger().Warn("cannot read modules.alias; soft dependencies named by an alias are not loaded", "err", err)
		}
	}
	return h.aliases
}

// parseModulesFile opens /lib/modules/<release>/<name> and parses it.
func (h *host) parseModulesFile(name string, parse func(io.Reader) error) error {
	dir, err := h.modulesDir()
	if err != nil {
		return err
	}
	p := path.Join(dir, name)
	f, err := os.Open(h.path(p))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := parse(f); err != nil {
		return fmt.Errorf("parse %s: %w", p, err)
	}
	return nil
}

func (h *host) state(name string) moduleState {
	dir := path.Join(sysModuleDir, name)
	if data, err := h.readFile(path.Join(dir, "initstate")); err == nil {
		switch strings.TrimSpace(string(data)) {
		case "live":
			return stateLive
		case "going":
			return stateGoing
		default:
			return stateComing
		}
	}
	builtin, err := h.builtins()
	if builtin[name] {
		return stateBuiltin
	}
	if fi, statErr := os.Stat(h.path(dir)); statErr == nil && fi.IsDir() {
		// A built-in module with parameters has a directory and no
		// initstate. So has a loadable one for the moment between its
		// directory and its initstate appearing, while it is being set up.
		// kmod tells the two apart with modules.builtin; without that list
		// the directory has to be taken for a built-in module.
		if err != nil {
			return stateBuiltin
		}
		return stateComing
	}
	return stateAbsent
}

// modprobe returns the system's modprobe: the one the kernel itself runs
// (/proc/sys/kernel/modprobe), else the usual places; false when there is
// none.
func (h *host) modprobe() (string, bool) {
	var candidates []string
	if data, err := h.readFile(modprobeSysctl); err == nil {
		// Containers and hardened hosts set this to "" or /bin/false to stop
		// the kernel loading modules on demand. That says nothing about
		// whether modprobe is installed, so look in the usual places then.
		p := strings.TrimSpace(string(data))
		if base := path.Base(p); path.IsAbs(p) && base != "false" && base != "true" {
			candidates = append(candidates, p)
		}
	}
	for _, p := range append(candidates, modprobeFallbacks...) {
		if fi, err := os.Stat(h.path(p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

func (h *host) ensure(ctx context.Context, name string) error {
	switch h.state(name) {
	case stateLive, stateBuiltin:
		return nil
	case stateComing:
		// Someone else is loading it (the kernel on demand, another
		// modprobe); wait for its init function.
		return h.settle(ctx, name, "", "")
	}
	if prog, ok := h.modprobe(); ok {
		if err := h.runModprobe(ctx, prog, name); err != nil {
			return err
		}
		return h.settle(ctx, name, "", prog)
	}
	return h.loadNative(ctx, name)
}

func (h *host) errorf(name, neededBy, step, p string, err error, fix string) *ModuleError {
	rel, _ := h.kernelRelease()
	return &ModuleError{Module: name, NeededBy: neededBy, Release: rel, Step: step, Path: p, Err: err, Fix: fix}
}

// settle waits until name is live. loader is the modprobe that loaded it, or
// "" for finit_module or someone else.
func (h *host) settle(ctx context.Context, name, neededBy, loader string) error {
	settle := h.Settle
	if settle <= 0 {
		settle = defaultSettle
	}
	deadline := time.Now().Add(settle)
	dir := path.Join(sysModuleDir, name)
	for {
		switch h.state(name) {
		case stateLive, stateBuiltin:
			return nil
		case stateAbsent:
			fix := "the kernel log (dmesg) may say why"
			if loader != "" {
				fix = fmt.Sprintf("an \"install %s\" line in /etc/modprobe.d may stop %s loading it (%s --showconfig | grep %s); the kernel log (dmesg) may say more", name, loader, loader, name)
			}
			return h.errorf(name, neededBy, stepConfirm, dir, errors.New("the module did not appear after loading"), fix)
		case stateGoing:
			return h.errorf(name, neededBy, stepConfirm, dir, errors.New("the module is being unloaded"), "wait for whatever unloads it (modprobe -r, rmmod) to finish, then start halb again")
		}
		if time.Now().After(deadline) {
			return h.errorf(name, neededBy, stepConfirm, dir,
				fmt.Errorf("the module is still initialising after %s (initstate \"coming\")", settle),
				"the kernel log (dmesg) may say what it waits for")
		}
		select {
		case <-ctx.Done():
			return h.errorf(name, neededBy, stepConfirm, dir, ctx.Err(), "")
		case <-time.After(settlePoll):
		}
	}
}

func (h *host) runModprobe(ctx context.Context, prog, name string) error {
	run := h.Run
	if run == nil {
		run = runProgram
	}
	stderr, err := run(ctx, prog, name)
	if err == nil {
		h.logger().Info("loaded kernel module", "module", name, "with", prog)
		return nil
	}
	if ctx.Err() != nil {
		return h.errorf(name, "", stepRun, prog, ctx.Err(), "")
	}
	msg := strings.Join(strings.Fields(string(bytes.TrimSpace(stderr))), " ")
	if len(msg) > 1024 {
		msg = msg[:1024] + "..."
	}
	if msg != "" {
		err = fmt.Errorf("%w: %s", err, msg)
	}
	// modprobe's words are the only account of why; check what can be
	// checked on the host first, then read them.
	gone, goneFile, isGone := h.missingFile(name)
	switch {
	case h.modulesDisabled():
		return h.errorf(name, "", stepRun, prog, fmt.Errorf("%w: %w", err, ErrModulesDisabled), disabledFix)
	case isGone:
		// kmod words a module file that cannot be opened as "Unknown symbol
		// in module, or unknown parameter", and the kernel log has nothing:
		// the kernel never saw it.
		neededBy := ""
		if gone.name != name {
			neededBy = name
		}
		return h.errorf(gone.name, neededBy, stepRun, prog,
			fmt.Errorf("%w: modules.dep lists %s but there is no such file: %w", err, goneFile, ErrModuleNotShipped), h.goneFix())
	case h.notShipped(name) || strings.Contains(msg, "not found in directory"):
		return h.errorf(name, "", stepRun, prog, fmt.Errorf("%w: %w", err, ErrModuleNotShipped), h.notShippedFix(name))
	case strings.Contains(msg, "Operation not permitted"):
		fix, cause := h.denied(err)
		return h.errorf(name, "", stepRun, prog, cause, fix)
	case strings.Contains(msg, "Key was rejected by service"):
		return h.errorf(name, "", stepRun, prog, fmt.Errorf("%w: %w", err, ErrSignatureRejected), signatureFix)
	}
	return h.errorf(name, "", stepRun, prog, err, "the kernel log (dmesg) may say why")
}

// runProgram runs a program and returns its standard error.
func runProgram(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	return stderr.Bytes(), err
}

// missingFile returns the first module of name's load order, name or a
// dependency, that is not loaded and whose file modules.dep lists but is not
// there, and that file as the host sees it; false when there is none or
// modules.dep cannot be read.
func (h *host) missingFile(name string) (loadStep, string, bool) {
	dep, err := h.modulesDep()
	if err != nil {
		return loadStep{}, "", false
	}
	dir, err := h.modulesDir()
	if err != nil {
		return loadStep{}, "", false
	}
	order, _ := dep.loadOrder(name)
	for _, s := range order {
		if st := h.state(s.name); st == stateLive || st == stateBuiltin {
			continue
		}
		file := s.file
		if !path.IsAbs(file) {
			file = path.Join(dir, file)
		}
		if _, err := os.Stat(h.path(file)); errors.Is(err, fs.ErrNotExist) {
			return s, file, true
		}
	}
	return loadStep{}, "", false
}

// goneFix tells what to do about a module file modules.dep lists and the
// host lacks.
func (h *host) goneFix() string {
	rel, _ := h.kernelRelease()
	return fmt.Sprintf("reinstall this kernel's modules (%s), or run depmod %s if the file was removed on purpose", modulesPackages(rel), rel)
}

// notShipped reports whether modules.dep, when it can be read, lacks name and
// the kernel does not have it built in.
func (h *host) notShipped(name string) bool {
	dep, err := h.modulesDep()
	if err != nil {
		return false
	}
	builtin, _ := h.builtins()
	_, listed := dep[name]
	return !listed && !builtin[name]
}

// loadNative loads name with finit_module, for hosts without modprobe, the
// way kmod's modprobe does: the dependencies modules.dep lists first, and
// around each module that is not loaded yet (a dependency or name itself)
// the soft dependencies modules.softdep lists for it, pre: just before it
// and post: just after it, each with its own dependencies and soft
// dependencies. A soft dependency that cannot be loaded is logged and does
// not stop the load, as with kmod: the module may do without it, and when it
// cannot, its own failure names the soft dependency as the likely cause.
func (h *host) loadNative(ctx context.Context, name string) error {
	rel, err := h.kernelRelease()
	if err != nil {
		return h.errorf(name, "", stepRead, osreleasePath, err, "halb needs the kernel release to find its modules; is /proc mounted?")
	}
	dir := path.Join(libModulesDir, rel)
	depPath := path.Join(dir, "modules.dep")
	_, err = h.modulesDep()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, statErr := os.Stat(h.path(dir)); errors.Is(statErr, fs.ErrNotExist) {
			return h.errorf(name, "", stepFind, dir, fmt.Errorf("no such directory: %w", ErrModuleNotShipped),
				fmt.Sprintf("this kernel's modules are not installed: install them (%s), or, after a kernel upgrade, reboot into the kernel whose modules are in %s", modulesPackages(rel), libModulesDir))
		}
		return h.errorf(name, "", stepFind, depPath, err, fmt.Sprintf("run depmod %s to write it", rel))
	case err != nil:
		return h.errorf(name, "", stepFind, depPath, err, fmt.Sprintf("run depmod %s to write it again", rel))
	}
	if h.visited == nil {
		h.visited = map[string]bool{}
	}
	return h.loadTree(ctx, name, dir)
}

// loadTree loads name and its modules.dep dependencies, each with its soft
// dependencies. modules.dep has been read.
func (h *host) loadTree(ctx context.Context, name, dir string) error {
	order, ok := h.dep.loadOrder(name)
	if !ok {
		return h.errorf(name, "", stepFind, path.Join(dir, "modules.dep"), fmt.Errorf("not listed: %w", ErrModuleNotShipped), h.notShippedFix(name))
	}
	for _, s := range order {
		neededBy := ""
		if s.name != name {
			neededBy = name
		}
		if err := h.loadOne(ctx, s, neededBy, dir); err != nil {
			return err
		}
	}
	return nil
}

// loadOne loads one module of a load order, unless it is there already,
// with its soft dependencies around it.
func (h *host) loadOne(ctx context.Context, s loadStep, neededBy, dir string) error {
	if err := ctx.Err(); err != nil {
		return h.errorf(s.name, neededBy, stepFinit, s.file, err, "")
	}
	switch h.state(s.name) {
	case stateLive, stateBuiltin:
		return nil
	case stateComing:
		return h.settle(ctx, s.name, neededBy, "")
	}
	h.visited[s.name] = true
	soft := h.softdepsOf(s.name)
	var missing []string // pre: soft dependencies that could not be loaded, and why
	for _, n := range soft.pre {
		if why := h.loadSoft(ctx, n, s.name, "pre", dir); why != "" {
			missing = append(missing, why)
		}
	}
	if err := ctx.Err(); err != nil {
		return h.errorf(s.name, neededBy, stepFinit, s.file, err, "")
	}
	if err := h.finit(s, dir, neededBy, missing); err != nil {
		return err
	}
	if err := h.settle(ctx, s.name, neededBy, ""); err != nil {
		return err
	}
	for _, n := range soft.post {
		h.loadSoft(ctx, n, s.name, "post", dir)
	}
	return nil
}

// loadSoft loads the modules that the soft dependency n of module of
// stands for (when: "pre" or "post"), best effort. It returns "" when one of
// them is loaded, or is being loaded further up this chain of soft
// dependencies; otherwise it logs why and returns "N (why)" for the error of
// the module that wanted it. An alias may stand for several modules: kmod
// loads them all, and so does halb; the failure of one whose alternative
// loaded is logged at debug level only (crc32c_intel refuses a CPU without
// SSE4.2, and crc32c_generic does the job).
func (h *host) loadSoft(ctx context.Context, n, of, when, dir string) string {
	builtin, _ := h.builtins()
	mods := resolveSoft(n, h.dep, builtin, h.moduleAliases())
	if len(mods) == 0 {
		why := "no module or alias of that name in modules.dep or modules.alias"
		h.logger().Warn("soft dependency not loaded", "module", of, "softdep", n, "when", when, "err", why)
		return fmt.Sprintf("%s (%s)", n, why)
	}
	for _, m := range mods {
		if st := h.state(m); st == stateLive || st == stateBuiltin || h.visited[m] {
			return ""
		}
	}
	var errs []error
	for _, m := range mods {
		if err := h.loadTree(ctx, m, dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) < len(mods) {
		for _, err := range errs {
			h.logger().Debug("soft dependency alternative not loaded", "module", of, "softdep", n, "err", err)
		}
		return ""
	}
	whys := make([]string, 0, len(errs))
	for _, err := range errs {
		h.logger().Warn("soft dependency not loaded", "module", of, "softdep", n, "when", when, "err", err)
		var me *ModuleError
		if errors.As(err, &me) {
			whys = append(whys, fmt.Sprintf("%s: %s %s: %v", me.Module, me.Step, me.Path, me.Err))
		} else {
			whys = append(whys, err.Error())
		}
	}
	return fmt.Sprintf("%s (%s)", n, strings.Join(whys, "; "))
}

// finit loads one module file with finit_module(2). Compressed files go to
// the kernel as they are, with MODULE_INIT_COMPRESSED_FILE, when the kernel
// decompresses that format itself (/sys/module/compression, Linux 5.17 and
// later, zstd since 6.2). halb does not decompress them itself: this path is
// for hosts without modprobe, every distribution that compresses its modules
// ships kmod, and the xz and zstd decoders would add to a static binary that
// also runs on Raspberry Pis.
//
// softMissing lists the pre: soft dependencies of the module that could not
// be loaded, as loadSoft describes them; when the module fails, they are
// named as the likely cause.
func (h *host) finit(s loadStep, dir, neededBy string, softMissing []string) error {
	file := s.file
	if !path.IsAbs(file) {
		file = path.Join(dir, file)
	}
	flags := 0
	if c := compression(file); c != "" {
		data, err := h.readFile(compressionPath)
		kernel := strings.TrimSpace(string(data))
		if err != nil || kernel != c {
			why := "it decompresses none (no " + compressionPath + ")"
			if err == nil {
				why = "it decompresses " + kernel + " only"
			}
			return h.errorf(s.name, neededBy, stepFinit, file,
				fmt.Errorf("the module is %s-compressed and the kernel cannot decompress it: %s", c, why),
				fmt.Sprintf("install kmod so that halb loads modules through modprobe, which decompresses them itself, or run a kernel with CONFIG_MODULE_DECOMPRESS and CONFIG_MODULE_COMPRESS_%s", strings.ToUpper(c)))
		}
		flags |= moduleInitCompressedFile
	}
	f, err := os.Open(h.path(file))
	if errors.Is(err, fs.ErrNotExist) {
		return h.errorf(s.name, neededBy, stepFinit, file, fmt.Errorf("modules.dep lists it but there is no such file: %w", ErrModuleNotShipped), h.goneFix())
	}
	if err != nil {
		return h.errorf(s.name, neededBy, stepFinit, file, err, "")
	}
	defer f.Close()
	load := h.FinitModule
	if load == nil {
		load = finitModule
	}
	err = load(f, "", flags)
	if err == nil {
		h.logger().Info("loaded kernel module", "module", s.name, "with", "finit_module", "path", file)
		return nil
	}
	var fix string
	outcome := finitOutcome(err)
	switch outcome {
	case finitExists: // loaded meanwhile by someone else
		return nil
	case finitDenied:
		fix, err = h.denied(err)
	case finitSignature:
		err, fix = fmt.Errorf("%w: %w", err, ErrSignatureRejected), signatureFix
	case finitBadFormat:
		fix = fmt.Sprintf("the file is not a module this kernel accepts (built for another kernel, or damaged): reinstall this kernel's modules (%s); the kernel log (dmesg) says more", modulesPackages(h.release))
	case finitNotFound:
		// ENOENT is either the loader's "Unknown symbol" or the module's
		// own init function, which failed to find something it asks the
		// kernel for at run time: a crypto algorithm (libcrc32c asks for
		// crc32c), another module. modules.dep cannot be at fault in the
		// second case, so depmod is not the first thing to suggest.
		err = fmt.Errorf("the kernel answered ENOENT, though the file is there: %w", err)
		fix = "either its init function asked the kernel for something it could not find " +
			"(a crypto algorithm, another module: without modprobe the kernel loads nothing on demand) " +
			"or it needs a symbol no loaded module exports; the kernel log (dmesg) says which: " +
			"load what it asks for first, or, for \"Unknown symbol\", run depmod " + h.release
	case finitNoDecompress:
		fix = "the kernel cannot decompress this module itself: install kmod so that halb loads modules through modprobe"
	default:
		fix = "the kernel log (dmesg) may say why"
	}
	if len(softMissing) > 0 && (outcome == finitNotFound || outcome == finitOther) {
		// The module's init function failed, and what modules.softdep says
		// it asks for at run time is missing: that is the cause to fix.
		fix = fmt.Sprintf("modules.softdep says to load %s before %s, and halb could not: that is the likely cause; "+
			"make it loadable (it comes with this kernel's modules: %s); the kernel log (dmesg) says what %s asked for",
			strings.Join(softMissing, ", "), s.name, modulesPackages(h.release), s.name)
	}
	return h.errorf(s.name, neededBy, stepFinit, file, err, fix)
}

// finitResult sorts what finit_module(2) returned; finitOutcome, beside the
// system call, does the sorting.
type finitResult int

const (
	finitOther finitResult = iota
	finitExists
	finitDenied
	finitSignature
	finitBadFormat
	finitNotFound
	finitNoDecompress
)

const (
	disabledFix = "nothing can be loaded until the next boot: list the module in " + BootConfig +
		" (configs/modules-load.d/halb.conf) so it loads at boot, before loading is switched off"
	signatureFix = "use the module from this kernel's own package, which is signed, or sign it with a key the kernel trusts"
)

// denied says why the kernel refused with EPERM and what to do: the host's
// state tells a missing capability from a switched-off or locked-down kernel.
func (h *host) denied(err error) (fix string, cause error) {
	if h.modulesDisabled() {
		return disabledFix, fmt.Errorf("%w: %w", err, ErrModulesDisabled)
	}
	bootFix := "or have it loaded before halb starts: list it in " + BootConfig + " (configs/modules-load.d/halb.conf)"
	has, known := h.capSysModule()
	if known && !has {
		return "halb lacks CAP_SYS_MODULE: run it as root or grant it the capability (systemd: AmbientCapabilities=CAP_SYS_MODULE), " + bootFix,
			fmt.Errorf("%w: %w", err, ErrNoPermission)
	}
	if mode := h.lockdown(); mode != "" && mode != "none" {
		return fmt.Sprintf("the kernel is locked down (%s, often because of Secure Boot) and loads signed modules only: %s", mode, signatureFix),
			fmt.Errorf("%w: %w", err, ErrSignatureRejected)
	}
	if !known {
		return "run halb as root or grant it CAP_SYS_MODULE (systemd: AmbientCapabilities=CAP_SYS_MODULE), " + bootFix,
			fmt.Errorf("%w: %w", err, ErrNoPermission)
	}
	return "halb has CAP_SYS_MODULE, so something else refused: a security module (SELinux, AppArmor, LoadPin) or a container, where the capability counts only in the host's user namespace; load the module on the host, " + bootFix,
		fmt.Errorf("%w: %w", err, ErrNoPermission)
}

func (h *host) modulesDisabled() bool {
	data, err := h.readFile(modulesDisabledPath)
	return err == nil && strings.TrimSpace(string(data)) == "1"
}

// capSysModule reports whether this process has CAP_SYS_MODULE in its
// effective set; known is false when /proc/self/status cannot tell.
func (h *host) capSysModule() (has, known bool) {
	data, err := h.readFile(statusPath)
	if err != nil {
		return false, false
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, false
			}
			return caps&(1<<capSysModule) != 0, true
		}
	}
	return false, false
}

// lockdown returns the kernel's lockdown mode, the bracketed word of
// /sys/kernel/security/lockdown ("none [integrity] confidentiality"), or "".
func (h *host) lockdown() string {
	data, err := h.readFile(lockdownPath)
	if err != nil {
		return ""
	}
	for _, w := range strings.Fields(string(data)) {
		if len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' {
			return w[1 : len(w)-1]
		}
	}
	return ""
}

// notShippedFix tells how to get a module this kernel lacks.
func (h *host) notShippedFix(name string) string {
	rel, _ := h.kernelRelease()
	fix := "install this kernel's modules (" + modulesPackages(rel) + ")"
	if name == "ip_vs" || strings.HasPrefix(name, "ip_vs_") {
		fix += ", or run a kernel built with CONFIG_" + strings.ToUpper(name) + "=m or =y"
	}
	return fix
}

// modulesPackages names the packages that hold a kernel's modules on the
// distributions halb meets most.
func modulesPackages(release string) string {
	if release == "" {
		return "the kernel's modules package"
	}
	return "Debian, Raspberry Pi OS: linux-image-" + release + "; Ubuntu: linux-modules-extra-" + release
}
