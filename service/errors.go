package service

import "errors"

// The errors a caller acts on, the same from every data path; test them
// with errors.Is. The detail of each is in the error's text (or, for
// ErrUnsupported, in an *UnsupportedError).
var (
	// ErrUnsupported: a data path cannot serve a service as configured
	// (a forward mode or a scheduler it lacks); another data path may.
	// It says nothing about the kernel: a missing kernel feature is
	// cilium/ebpf's ErrNotSupported.
	ErrUnsupported = errors.New("not supported")
	// ErrClosed: the data path was closed; nothing more can be done
	// with it.
	ErrClosed = errors.New("the data path is closed")
)

// UnsupportedError is the detail of ErrUnsupported: what the data path
// lacks. errors.Is(err, ErrUnsupported) holds for it; errors.As gives it.
type UnsupportedError struct {
	Datapath string // "the eBPF data path"
	Feature  string // "forward nat", "scheduler lc"
}

func (e *UnsupportedError) Error() string {
	return e.Feature + ": not supported by " + e.Datapath
}

// Is makes errors.Is(err, ErrUnsupported) hold for every UnsupportedError.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }
