//go:build !linux

package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// SystemKernel asks the running kernel; halb's data paths exist only on
// Linux, so elsewhere every check fails. This file exists so that the
// package, and the CLI that prints the probe, still build for development.
type SystemKernel struct{}

var _ Kernel = SystemKernel{}

func (SystemKernel) ProgramType(t ebpf.ProgramType) error {
	return fmt.Errorf("load %s program: %w", t, ebpf.ErrNotSupported)
}

func (SystemKernel) XDPLink() error {
	return fmt.Errorf("attach XDP link: %w", ebpf.ErrNotSupported)
}

func (SystemKernel) TCX() error {
	return fmt.Errorf("attach tcx link: %w", ebpf.ErrNotSupported)
}

func (SystemKernel) MmapableArrays() error {
	return fmt.Errorf("create a BPF array with BPF_F_MMAPABLE: %w", ebpf.ErrNotSupported)
}

func (SystemKernel) IPVSFamily() error {
	return fmt.Errorf("resolve generic netlink family IPVS: %w", ebpf.ErrNotSupported)
}
