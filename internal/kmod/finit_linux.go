package kmod

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// finitModule is finit_module(2).
func finitModule(f *os.File, params string, flags int) error {
	return unix.FinitModule(int(f.Fd()), params, flags)
}

// finitOutcome sorts an error from finit_module(2) by what the kernel meant
// (kernel/module/main.c, kernel/module/signing.c).
func finitOutcome(err error) finitResult {
	switch {
	case errors.Is(err, unix.EEXIST):
		return finitExists
	case errors.Is(err, unix.EPERM):
		// No CAP_SYS_MODULE, modules_disabled, lockdown with an unsigned
		// module, or a security module's veto.
		return finitDenied
	case errors.Is(err, unix.EKEYREJECTED):
		// Signature enforcement (module.sig_enforce) and a missing or bad
		// signature.
		return finitSignature
	case errors.Is(err, unix.ENOEXEC):
		// Not an ELF module for this kernel: wrong architecture, vermagic
		// or truncated.
		return finitBadFormat
	case errors.Is(err, unix.ENOENT):
		// "Unknown symbol": a dependency (or soft dependency) is not
		// loaded; the module's own init can answer ENOENT too.
		return finitNotFound
	case errors.Is(err, unix.EOPNOTSUPP):
		// MODULE_INIT_COMPRESSED_FILE without CONFIG_MODULE_DECOMPRESS.
		return finitNoDecompress
	}
	return finitOther
}
