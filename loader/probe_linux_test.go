package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/cilium/ebpf/link"
	"github.com/halb-lb/halb/config"
	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/internal/nsthread"
)

// The real host probe. halb's development and CI machines run the same
// kernel (BTF, XDP, tcx, no IPVS), so these expectations hold on both; a
// machine where they do not is one halb is not tested on.
func TestHostProbe(t *testing.T) {
	netnstest.Require(t)
	r := Host{}.Probe()
	t.Logf("report: %+v", r)

	if r.KernelRelease == "" {
		t.Errorf("no kernel release: %s", r.KernelReleaseError)
	}
	if !r.BTF.Present || r.BTF.Path != "/sys/kernel/btf/vmlinux" {
		t.Errorf("BTF = %+v, want present at /sys/kernel/btf/vmlinux", r.BTF)
	}
	for name, f := range map[string]Feature{"xdp": r.XDP, "sched_cls": r.SchedCLS, "xdp_link": r.XDPLink, "tcx": r.TCX} {
		if !f.Supported {
			t.Errorf("%s not supported: %s", name, f.Error)
		}
	}
	if r.Capabilities.Error != "" || !r.Capabilities.Effective["CAP_SYS_ADMIN"] {
		t.Errorf("Capabilities = %+v, want CAP_SYS_ADMIN as root", r.Capabilities)
	}
	// Checked after the probe: asking for the IPVS family may load ip_vs
	// where it is a module.
	if _, err := os.Stat("/proc/net/ip_vs"); errors.Is(err, fs.ErrNotExist) {
		if r.IPVS.Family.Supported || r.IPVS.Loaded {
			t.Errorf("IPVS = %+v, want absent: /proc/net/ip_vs does not exist", r.IPVS)
		}
		if r.IPVS.Family.Error == "" {
			t.Error("IPVS family absent without an error saying why")
		}
	}
	// Derived from the host's files rather than assumed.
	if _, err := os.Stat(filepath.Join("/lib/modules", r.KernelRelease)); errors.Is(err, fs.ErrNotExist) {
		want := "no /lib/modules/" + r.KernelRelease + ": modules not installed"
		if len(r.IPVS.Problems) != 1 || r.IPVS.Problems[0] != want {
			t.Errorf("IPVS.Problems = %q, want [%q]", r.IPVS.Problems, want)
		}
	}

	if d := Choose(config.ModeAuto, r); d.Mode != config.ModeXDP || d.Reason != "xdp: BTF present, XDP loads" {
		t.Errorf("Choose(auto) = %+v, want xdp", d)
	}
	t.Logf("decision: %+v", Choose(config.ModeAuto, r))
}

// The link checks must agree with reality: where they say supported, a real
// program attaches to a real interface through the same kind of link.
func TestLinkChecksMatchAttach(t *testing.T) {
	netnstest.Require(t)
	for _, tc := range []struct {
		name   string
		check  func() error
		typ    ebpf.ProgramType
		ret    int64
		attach func(prog *ebpf.Program, ifindex int) (link.Link, error)
	}{
		{
			name:  "xdp",
			check: SystemKernel{}.XDPLink,
			typ:   ebpf.XDP,
			ret:   2, // XDP_PASS
			attach: func(prog *ebpf.Program, ifindex int) (link.Link, error) {
				return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
			},
		},
		{
			name:  "tcx",
			check: SystemKernel{}.TCX,
			typ:   ebpf.SchedCLS,
			ret:   0, // TC_ACT_OK
			attach: func(prog *ebpf.Program, ifindex int) (link.Link, error) {
				return link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr := tc.check()

			ns := netnstest.New(t)
			h := ns.Netlink(t)
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halbprobe0"}, PeerName: "halbprobe1"}
			if err := h.LinkAdd(veth); err != nil {
				t.Fatalf("add veth pair: %v", err)
			}
			if err := h.LinkSetUp(veth); err != nil {
				t.Fatalf("set halbprobe0 up: %v", err)
			}
			prog, err := trivialProgram(tc.typ, "halb_test", tc.ret)
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			progInfo, err := prog.Info()
			if err != nil {
				t.Fatal(err)
			}
			progID, _ := progInfo.ID()

			var attachErr error
			err = ns.Do(func() error {
				ifi, err := net.InterfaceByName("halbprobe0")
				if err != nil {
					return err
				}
				l, err := tc.attach(prog, ifi.Index)
				if err != nil {
					attachErr = err
					return nil
				}
				defer l.Close()
				info, err := l.Info()
				if err != nil {
					return err
				}
				if info.Program != progID {
					t.Errorf("link runs program %d, want %d", info.Program, progID)
				}
				if tc.typ == ebpf.XDP {
					// The kernel's own view of the interface agrees.
					nl, err := h.LinkByName("halbprobe0")
					if err != nil {
						return err
					}
					if x := nl.Attrs().Xdp; x == nil || !x.Attached || x.ProgId != uint32(progID) {
						t.Errorf("halbprobe0 XDP attrs = %+v, want program %d attached", x, progID)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if (checkErr == nil) != (attachErr == nil) {
				t.Fatalf("%s check says %v, a real attach says %v", tc.name, checkErr, attachErr)
			}
			// This machine supports both; see TestHostProbe.
			if checkErr != nil {
				t.Fatalf("%s check: %v", tc.name, checkErr)
			}
		})
	}
}

// The link checks attach inside a namespace of their own: the host's lo never
// sees a program, and no thread of this process is left outside the
// namespace it started in. Leaving the probe's thread locked instead of
// returning it fails here: the goroutine often runs on the main thread,
// which the runtime parks rather than ends, in the throwaway namespace.
func TestLinkChecksLeaveHostAlone(t *testing.T) {
	netnstest.Require(t)
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := (SystemKernel{}).XDPLink(); err != nil {
			t.Fatal(err)
		}
		if err := (SystemKernel{}).TCX(); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if x := lo.Attrs().Xdp; x != nil && x.Attached {
		t.Errorf("host lo has an XDP program attached: %+v", x)
	}

	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread ended meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		if ns != hostNS {
			t.Errorf("thread %s is in %s, want the host's %s", task.Name(), ns, hostNS)
		}
	}
}

// A namespace the probe could not make is reported as `halb probe` has
// always printed it (cmd/halb's tests hold that text); what fn returned,
// and a thread lost on the way back, pass through.
func TestInProbeWords(t *testing.T) {
	eperm := &nsthread.EnterError{Op: "unshare network namespace", Err: os.ErrPermission}
	lost := fmt.Errorf("%w: %w", nsthread.ErrThreadLost, errors.New("setns refused"))
	fnErr := errors.New("attach xdp link to lo: invalid argument")
	for _, tc := range []struct {
		name string
		in   error
		want string
		is   []error
	}{
		{"no error", nil, "", nil},
		{"fn's error", fnErr, fnErr.Error(), []error{fnErr}},
		{"cannot unshare", eperm, "unshare network namespace for the probe (needs CAP_SYS_ADMIN): permission denied", []error{os.ErrPermission}},
		{"cannot unshare, then lost", errors.Join(eperm, lost),
			"unshare network namespace for the probe (needs CAP_SYS_ADMIN): permission denied\n" + eperm.Error() + "\n" + lost.Error(),
			[]error{os.ErrPermission, nsthread.ErrThreadLost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := inProbeWords(tc.in)
			if tc.in == nil {
				if got != nil {
					t.Fatalf("inProbeWords(nil) = %v", got)
				}
				return
			}
			if got == nil || got.Error() != tc.want {
				t.Fatalf("got %v, want %q", got, tc.want)
			}
			for _, target := range tc.is {
				if !errors.Is(got, target) {
					t.Errorf("%v is not %v", got, target)
				}
			}
		})
	}
}
