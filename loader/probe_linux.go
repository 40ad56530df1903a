package loader

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
)

// SystemKernel asks the running kernel.
type SystemKernel struct{}

var _ Kernel = SystemKernel{}

// ProgramType reports whether a program of type t loads. cilium/ebpf caches
// the answer for the life of the process.
func (SystemKernel) ProgramType(t ebpf.ProgramType) error {
	if err := features.HaveProgramType(t); err != nil {
		return fmt.Errorf("load %s program: %w", t, err)
	}
	return nil
}

// XDPLink attaches a pass-everything XDP program through a bpf_link to the
// loopback of a throwaway network namespace. cilium/ebpf has no exported
// probe for XDP links, and attaching to an invalid ifindex fails with EINVAL
// whether or not links are supported, so only a real attach tells.
func (SystemKernel) XDPLink() error {
	return attachToThrowawayLo(ebpf.XDP, "halb_probe_xdp", 2 /* XDP_PASS */, "XDP link", func(p *ebpf.Program, lo int) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: p, Interface: lo})
	})
}

// TCX attaches a sched_cls program to the ingress of the loopback of a
// throwaway network namespace through a tcx link (Linux 6.6 and later).
func (SystemKernel) TCX() error {
	return attachToThrowawayLo(ebpf.SchedCLS, "halb_probe_tcx", 0 /* TC_ACT_OK */, "tcx link", func(p *ebpf.Program, lo int) (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Program: p, Interface: lo, Attach: ebpf.AttachTCXIngress})
	})
}

// attachToThrowawayLo loads a program that returns ret and attaches it, as
// attach says, to lo in a network namespace of its own, then detaches it.
func attachToThrowawayLo(t ebpf.ProgramType, name string, ret int64, what string, attach func(*ebpf.Program, int) (link.Link, error)) error {
	return inThrowawayNetns(func() error {
		prog, err := trivialProgram(t, name, ret)
		if err != nil {
			return err
		}
		defer prog.Close()
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return fmt.Errorf("find lo in the probe's network namespace: %w", err)
		}
		l, err := attach(prog, lo.Index)
		if err != nil {
			return fmt.Errorf("attach %s to lo: %w", what, err)
		}
		if err := l.Close(); err != nil {
			return fmt.Errorf("detach %s from lo: %w", what, err)
		}
		return nil
	})
}

// MmapableArrays makes a small BPF array with BPF_F_MMAPABLE (Linux 5.5).
// cilium/ebpf caches the answer for the life of the process.
func (SystemKernel) MmapableArrays() error {
	if err := features.HaveMapFlag(features.BPF_F_MMAPABLE); err != nil {
		return fmt.Errorf("create a BPF array with BPF_F_MMAPABLE: %w", err)
	}
	return nil
}

// IPVSFamily resolves the "IPVS" generic netlink family, the interface the
// IPVS data path drives. Asking for a family that is not registered makes
// the kernel try to load its module (net-pf-16-proto-16-family-IPVS), so on
// a host with ip_vs shipped as a module this check may load it.
func (SystemKernel) IPVSFamily() error {
	_, err := netlink.GenlFamilyGet("IPVS")
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("resolve generic netlink family IPVS: not registered, ip_vs is not loaded (%w)", err)
	}
	if err != nil {
		return fmt.Errorf("resolve generic netlink family IPVS: %w", err)
	}
	return nil
}

func trivialProgram(t ebpf.ProgramType, name string, ret int64) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         t,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(ret)), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		return nil, fmt.Errorf("load %s program: %w", t, err)
	}
	return prog, nil
}

// inThrowawayNetns runs fn on a thread in a new, empty network namespace,
// so that whatever fn attaches never reaches the host's interfaces.
func inThrowawayNetns(fn func() error) error {
	return inProbeWords(nsthread.DoThrowaway(fn))
}

// inProbeWords says why the probe's namespace could not be made in the
// words `halb probe` has always printed, which name the capability it
// needs; any other error, a lost thread included, stays as it is.
func inProbeWords(err error) error {
	enter, ok := errors.AsType[*nsthread.EnterError](err)
	if !ok {
		return err
	}
	unshare := fmt.Errorf("unshare network namespace for the probe (needs CAP_SYS_ADMIN): %w", enter.Err)
	if errors.Is(err, nsthread.ErrThreadLost) {
		return errors.Join(unshare, err)
	}
	return unshare
}
