package halbtest

import (
	"errors"

	"github.com/cilium/ebpf"
)

// ErrNoKernel is NoKernel's answer to every question.
var ErrNoKernel = errors.New("not on this test kernel")

// NoKernel is the probe's kernel (loader.Kernel) answering every question
// with "no", so that a test that probes does not depend on the machine it
// runs on.
type NoKernel struct{}

func (NoKernel) ProgramType(ebpf.ProgramType) error { return ErrNoKernel }
func (NoKernel) XDPLink() error                     { return ErrNoKernel }
func (NoKernel) TCX() error                         { return ErrNoKernel }
func (NoKernel) IPVSFamily() error                  { return ErrNoKernel }
func (NoKernel) MmapableArrays() error              { return ErrNoKernel }
