// What the host says about its modules (/sys/module, the lists under
// /lib/modules), read once per Ensure, and loading through modprobe.

package kmod

import (
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
	"strings"
	"time"
)

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
	Loader

	release    string
	releaseErr error
	releaseSet bool

	builtin    map[string]bool
	builtinErr error
	builtinSet bool

	dep    Dep
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
			h.builtin, err = ParseBuiltin(r)
			return err
		})
	}
	return h.builtin, h.builtinErr
}

func (h *host) modulesDep() (Dep, error) {
	if !h.depSet {
		h.depSet = true
		h.depErr = h.parseModulesFile("modules.dep", func(r io.Reader) (err error) {
			h.dep, err = ParseDep(r)
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
			h.softdeps, err = parseSoftdep(r)
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
			h.aliases, err = parseAlias(r)
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

func (h *host) errorf(name, neededBy, step, p string, err error, fix string) *Error {
	rel, _ := h.kernelRelease()
	return &Error{Module: name, NeededBy: neededBy, Release: rel, Step: step, Path: p, Err: err, Fix: fix}
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
			return h.errorf(name, neededBy, StepConfirm, dir, errors.New("the module did not appear after loading"), fix)
		case stateGoing:
			return h.errorf(name, neededBy, StepConfirm, dir, errors.New("the module is being unloaded"), "wait for whatever unloads it (modprobe -r, rmmod) to finish, then start halb again")
		}
		if time.Now().After(deadline) {
			return h.errorf(name, neededBy, StepConfirm, dir,
				fmt.Errorf("the module is still initialising after %s (initstate \"coming\")", settle),
				"the kernel log (dmesg) may say what it waits for")
		}
		select {
		case <-ctx.Done():
			return h.errorf(name, neededBy, StepConfirm, dir, ctx.Err(), "")
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
		return h.errorf(name, "", StepRun, prog, ctx.Err(), "")
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
		return h.errorf(name, "", StepRun, prog, fmt.Errorf("%w: %w", err, ErrDisabled), disabledFix)
	case isGone:
		// kmod words a module file that cannot be opened as "Unknown symbol
		// in module, or unknown parameter", and the kernel log has nothing:
		// the kernel never saw it.
		neededBy := ""
		if gone.name != name {
			neededBy = name
		}
		return h.errorf(gone.name, neededBy, StepRun, prog,
			fmt.Errorf("%w: modules.dep lists %s but there is no such file: %w", err, goneFile, ErrNotShipped), h.goneFix())
	case h.notShipped(name) || strings.Contains(msg, "not found in directory"):
		return h.errorf(name, "", StepRun, prog, fmt.Errorf("%w: %w", err, ErrNotShipped), h.notShippedFix(name))
	case strings.Contains(msg, "Operation not permitted"):
		fix, cause := h.denied(err)
		return h.errorf(name, "", StepRun, prog, cause, fix)
	case strings.Contains(msg, "Key was rejected by service"):
		return h.errorf(name, "", StepRun, prog, fmt.Errorf("%w: %w", err, ErrSignatureRejected), signatureFix)
	}
	return h.errorf(name, "", StepRun, prog, err, "the kernel log (dmesg) may say why")
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
