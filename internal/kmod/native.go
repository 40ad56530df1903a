// Loading without modprobe: finit_module(2) over modules.dep and
// modules.softdep, as kmod's modprobe would.

package kmod

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
)

// dependencies. A soft dependency that cannot be loaded is logged and does
// not stop the load, as with kmod: the module may do without it, and when it
// cannot, its own failure names the soft dependency as the likely cause.
func (h *host) loadNative(ctx context.Context, name string) error {
	rel, err := h.kernelRelease()
	if err != nil {
		return h.errorf(name, "", StepRead, osreleasePath, err, "halb needs the kernel release to find its modules; is /proc mounted?")
	}
	dir := path.Join(libModulesDir, rel)
	depPath := path.Join(dir, "modules.dep")
	_, err = h.modulesDep()
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, statErr := os.Stat(h.path(dir)); errors.Is(statErr, fs.ErrNotExist) {
			return h.errorf(name, "", StepFind, dir, fmt.Errorf("no such directory: %w", ErrNotShipped),
				fmt.Sprintf("this kernel's modules are not installed: install them (%s), or, after a kernel upgrade, reboot into the kernel whose modules are in %s", modulesPackages(rel), libModulesDir))
		}
		return h.errorf(name, "", StepFind, depPath, err, fmt.Sprintf("run depmod %s to write it", rel))
	case err != nil:
		return h.errorf(name, "", StepFind, depPath, err, fmt.Sprintf("run depmod %s to write it again", rel))
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
		return h.errorf(name, "", StepFind, path.Join(dir, "modules.dep"), fmt.Errorf("not listed: %w", ErrNotShipped), h.notShippedFix(name))
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
		return h.errorf(s.name, neededBy, StepFinit, s.file, err, "")
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
		return h.errorf(s.name, neededBy, StepFinit, s.file, err, "")
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
		var me *Error
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
			return h.errorf(s.name, neededBy, StepFinit, file,
				fmt.Errorf("the module is %s-compressed and the kernel cannot decompress it: %s", c, why),
				fmt.Sprintf("install kmod so that halb loads modules through modprobe, which decompresses them itself, or run a kernel with CONFIG_MODULE_DECOMPRESS and CONFIG_MODULE_COMPRESS_%s", strings.ToUpper(c)))
		}
		flags |= moduleInitCompressedFile
	}
	f, err := os.Open(h.path(file))
	if errors.Is(err, fs.ErrNotExist) {
		return h.errorf(s.name, neededBy, StepFinit, file, fmt.Errorf("modules.dep lists it but there is no such file: %w", ErrNotShipped), h.goneFix())
	}
	if err != nil {
		return h.errorf(s.name, neededBy, StepFinit, file, err, "")
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
	return h.errorf(s.name, neededBy, StepFinit, file, err, fix)
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
