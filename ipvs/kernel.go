package ipvs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	cfipvs "github.com/cloudflare/ipvs"

	"github.com/halb-lb/halb/internal/kmod"
)

// Kernel is IPVS's table as halb reads and changes it: the calls of
// cloudflare/ipvs's Client that halb makes, with that client's meaning. The
// Linux implementation is a thin wrapper over that client; tests use an
// in-memory one.
//
// As with cloudflare/ipvs, Services and Destinations return os.ErrNotExist
// itself when there is nothing to list, and errors from the kernel wrap its
// errno (a syscall.Errno).
type Kernel interface {
	Services() ([]cfipvs.ServiceExtended, error)
	Destinations(cfipvs.Service) ([]cfipvs.DestinationExtended, error)
	CreateService(cfipvs.Service) error
	UpdateService(cfipvs.Service) error
	RemoveService(cfipvs.Service) error
	CreateDestination(cfipvs.Service, cfipvs.Destination) error
	UpdateDestination(cfipvs.Service, cfipvs.Destination) error
	RemoveDestination(cfipvs.Service, cfipvs.Destination) error
}

// Sentinel errors for conditions callers act on.
var (
	// ErrFamilyMissing: the kernel has no "IPVS" generic netlink family,
	// even after ip_vs was loaded. It is ip_vs that registers it, as the
	// last step of its initialisation.
	ErrFamilyMissing = errors.New(`the kernel has no IPVS generic netlink family ("IPVS")`)
	// ErrSchedulerMissing: a service's scheduler is not in the kernel, so
	// the service cannot be created or changed to use it. A *SchedulerError
	// wraps it.
	ErrSchedulerMissing = errors.New("IPVS scheduler not available")
	// ErrEmptyTable: a listing found nothing (no services, or a service
	// without destinations). cloudflare/ipvs reports that as os.ErrNotExist;
	// halb reads it as an empty list and never as a failure.
	ErrEmptyTable = errors.New("the IPVS table lists nothing here")
)

// SchedulerError says that a service needs an IPVS scheduler the kernel does
// not have, and how to get it.
type SchedulerError struct {
	Service   string // the service, as Apply names it in errors
	Scheduler string // "wlc"
	Err       error  // the cause: a *kmod.Error, or the kernel's ENOENT
}

func (e *SchedulerError) Error() string {
	mod := "ip_vs_" + e.Scheduler
	var me *kmod.Error
	if errors.As(e.Err, &me) {
		// The module loader has said what failed and how to fix it.
		return fmt.Sprintf("service %s: scheduler %s needs kernel module %s: %v", e.Service, e.Scheduler, mod, e.Err)
	}
	return fmt.Sprintf("service %s: the kernel has no IPVS scheduler %s (%v): kernel module %s is not loaded; load it (modprobe %s) or list it in %s, and check that the kernel ships it (%s)",
		e.Service, e.Scheduler, e.Err, mod, mod, kmod.BootConfig, kernelConfig(mod))
}

func (e *SchedulerError) Unwrap() []error { return []error{ErrSchedulerMissing, e.Err} }

// listed turns cloudflare/ipvs's answer to a listing into halb's: its bare
// os.ErrNotExist becomes ErrEmptyTable. Compare with ==: an ENOENT from the
// kernel also satisfies errors.Is(err, os.ErrNotExist), and means something
// else (for Services, that the generic netlink family went away).
func listed(err error) error {
	if err == os.ErrNotExist {
		return ErrEmptyTable
	}
	return err
}

// isENOENT reports whether the kernel answered ENOENT. For NEW_SERVICE and
// SET_SERVICE that means the scheduler (or persistence engine, which halb
// does not set) is not registered: ip_vs_add_service and ip_vs_edit_service
// in net/netfilter/ipvs/ip_vs_ctl.c.
func isENOENT(err error) bool {
	return err != os.ErrNotExist && errors.Is(err, syscall.ENOENT)
}

// isESRCH reports whether the kernel answered ESRCH: the service named is
// not in its table (ip_vs_genl_set_cmd).
func isESRCH(err error) bool {
	return errors.Is(err, syscall.ESRCH)
}

// Family resolution after loading ip_vs: ip_vs registers the family at the
// end of its init function, and the module loader waits for that, so one
// more try normally succeeds; these bound the wait for anything slower.
const (
	familyTries = 10
	familyWait  = 200 * time.Millisecond
)

// Open resolves IPVS's generic netlink family and returns a Datapath over it.
// When the family is missing it loads ip_vs with opts.Modules and tries again
// for up to about two seconds. Each error names the step that failed.
func Open(ctx context.Context, opts Options) (*Datapath, error) {
	k, err := connect(ctx, opts.modules(), dialNetlink, familyTries, familyWait)
	if err != nil {
		return nil, err
	}
	d, err := New(k, opts)
	if err != nil {
		closeKernel(k)
		return nil, err
	}
	return d, nil
}

// connect calls dial, which returns an error wrapping ErrFamilyMissing when
// the family is not registered; then it loads ip_vs and calls dial up to
// tries more times, wait apart.
func connect(ctx context.Context, mods ModuleLoader, dial func() (Kernel, error), tries int, wait time.Duration) (Kernel, error) {
	k, err := dial()
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, ErrFamilyMissing) {
		return nil, fmt.Errorf("open IPVS: %w", err)
	}
	if err := mods.Ensure(ctx, "ip_vs"); err != nil {
		return nil, fmt.Errorf("open IPVS: the IPVS generic netlink family is missing and ip_vs could not be loaded: %w", err)
	}
	for range tries {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open IPVS: wait for the IPVS generic netlink family after loading ip_vs: %w", ctx.Err())
		case <-time.After(wait):
		}
		if k, err = dial(); err == nil {
			return k, nil
		}
		if !errors.Is(err, ErrFamilyMissing) {
			return nil, fmt.Errorf("open IPVS after loading ip_vs: %w", err)
		}
	}
	return nil, fmt.Errorf("open IPVS: ip_vs is loaded, and %s later still %w; the kernel log (dmesg) may say why ip_vs did not register it",
		time.Duration(tries)*wait, err)
}

func closeKernel(k Kernel) error {
	if c, ok := k.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
