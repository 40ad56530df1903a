// Why the kernel refused a module, and what the user should do about it.

package kmod

import (
	"fmt"
	"strconv"
	"strings"
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
		return disabledFix, fmt.Errorf("%w: %w", err, ErrDisabled)
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
	if h.KernelConfig != nil {
		if opt := h.KernelConfig(name); opt != "" {
			fix += ", or run a kernel built with " + opt + "=m or =y"
		}
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
