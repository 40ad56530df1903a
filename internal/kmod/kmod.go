// Package kmod makes kernel modules available to halb: it reads the module
// lists depmod writes under /lib/modules/<release> (modules.dep,
// modules.softdep, modules.alias, modules.builtin) with pure parsers that
// the IPVS data path and the capability probe share, and Loader.Ensure
// loads a module through the system's modprobe or, on hosts without one,
// with finit_module(2) the way the Linux tool kmod does. Every failure is
// an *Error that names the module, the kernel, the step and the fix.
//
// halb loads what it needs explicitly and says precisely what is missing: it
// does not leave modules to the kernel's on-demand loading, which some
// distributions switch off. This package must never unload a module, pass
// module parameters or force flags, never load a file by a path it did not
// take from the modules.dep of /lib/modules/<release> for the running
// kernel (or Loader.Release), and never load anything it was not asked for
// beyond the dependencies modules.dep lists and the soft dependencies
// modules.softdep lists. Which modules a feature needs is its caller's
// business (ipvs.Needed for IPVS).
package kmod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Sentinel errors for conditions callers act on; a *Error wraps them.
var (
	// ErrNotShipped: this kernel has no such module, built in or as a
	// file, or its modules are not installed.
	ErrNotShipped = errors.New("module not shipped with this kernel")
	// ErrNoPermission: the kernel refused to load a module for want of
	// privilege (no CAP_SYS_MODULE, a security module, a container).
	ErrNoPermission = errors.New("not permitted to load kernel modules")
	// ErrDisabled: kernel.modules_disabled is 1, so nothing can be
	// loaded until the next boot.
	ErrDisabled = errors.New("module loading is disabled (kernel.modules_disabled = 1)")
	// ErrSignatureRejected: the kernel accepts signed modules only (signature
	// enforcement or lockdown) and refused this one.
	ErrSignatureRejected = errors.New("the kernel rejected the module's signature")
)

// BootConfig is where a host lists modules to load at boot, before halb
// starts; configs/modules-load.d/halb.conf is the one halb ships.
const BootConfig = "/etc/modules-load.d/halb.conf"

// Error says which module could not be made available, on which
// kernel, what was tried, why it failed and how to fix it.
type Error struct {
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

func (e *Error) Error() string {
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

func (e *Error) Unwrap() error { return e.Err }

// Steps of Error.
const (
	StepRead    = "read"
	StepFind    = "find"
	StepRun     = "run"
	StepFinit   = "finit_module"
	StepConfirm = "confirm"
)

// Loader loads kernel modules on a host. The zero value works on the real
// host.
type Loader struct {
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
	// KernelConfig names the kernel build option that provides a module
	// ("CONFIG_IP_VS_RR"), for the fix when this kernel ships no such
	// module; nil, or "", names none.
	KernelConfig func(module string) string
}

// Paths read, as the host sees them; Loader.Root is put in front.
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
// used the module at that moment would find it half there (IPVS's generic
// netlink family not registered yet, for one).
//
// Names may use '-' or '_'. Every module that is not shipped is reported; any
// other failure stops Ensure, since the next module would fail the same way.
// Each error is a *Error.
func (m Loader) Ensure(ctx context.Context, names ...string) error {
	h := &host{Loader: m}
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
		if !errors.Is(err, ErrNotShipped) {
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
