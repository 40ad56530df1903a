package ipvs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/kmod"
)

func TestListed(t *testing.T) {
	if err := listed(os.ErrNotExist); err != ErrEmptyTable {
		t.Errorf("listed(os.ErrNotExist) = %v, want ErrEmptyTable", err)
	}
	// A real ENOENT also satisfies errors.Is(err, os.ErrNotExist); it is not
	// an empty table.
	enoent := kernelErr(syscall.ENOENT)
	if err := listed(enoent); errors.Is(err, ErrEmptyTable) || !isENOENT(err) {
		t.Errorf("listed(ENOENT) = %v, want the ENOENT itself", err)
	}
	if isENOENT(os.ErrNotExist) {
		t.Error("isENOENT(os.ErrNotExist): cloudflare/ipvs's empty listing taken for the kernel's ENOENT")
	}
	if listed(nil) != nil {
		t.Error("listed(nil) != nil")
	}
}

func TestSchedulerError(t *testing.T) {
	kernel := &SchedulerError{Service: "web (192.0.2.10:80/tcp)", Scheduler: "wlc", Err: kernelErr(syscall.ENOENT)}
	for _, s := range []string{"web (192.0.2.10:80/tcp)", "ip_vs_wlc", "modprobe ip_vs_wlc", kmod.BootConfig, "CONFIG_IP_VS_WLC"} {
		if !strings.Contains(kernel.Error(), s) {
			t.Errorf("%q does not say %q", kernel, s)
		}
	}
	if !errors.Is(kernel, ErrSchedulerMissing) || !errors.Is(kernel, syscall.ENOENT) {
		t.Errorf("%v: want ErrSchedulerMissing and ENOENT", kernel)
	}
	const disabledFix = "nothing can be loaded until the next boot"
	loader := &SchedulerError{Service: "web", Scheduler: "mh", Err: &kmod.Error{Module: "ip_vs_mh", Step: kmod.StepRun, Path: "/sbin/modprobe", Err: kmod.ErrDisabled, Fix: disabledFix}}
	if !strings.Contains(loader.Error(), "needs kernel module ip_vs_mh") || !strings.Contains(loader.Error(), disabledFix) || strings.Contains(loader.Error(), "modprobe ip_vs_mh") {
		t.Errorf("%q: want the module loader's account and fix, not a second one", loader)
	}
	if !errors.Is(loader, kmod.ErrDisabled) {
		t.Errorf("%v: want kmod.ErrDisabled", loader)
	}
}

// dialer answers like cfipvs.New: the family is missing for the first
// missing dials.
type dialer struct {
	missing int
	err     error // instead of "missing" once those are used up
	dials   int
}

func (d *dialer) dial() (Kernel, error) {
	d.dials++
	if d.dials <= d.missing {
		return nil, fmt.Errorf("%w: %w", ErrFamilyMissing, kernelErr(syscall.ENOENT))
	}
	if d.err != nil {
		return nil, d.err
	}
	return &fakeIPVS{}, nil
}

func TestConnect(t *testing.T) {
	ctx := context.Background()
	t.Run("family there", func(t *testing.T) {
		mods, dl := &fakeModules{}, &dialer{}
		if _, err := connect(ctx, mods, dl.dial, 3, time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if len(mods.ensured) != 0 {
			t.Errorf("loaded %q with the family there", mods.ensured)
		}
	})
	t.Run("family after loading ip_vs", func(t *testing.T) {
		mods, dl := &fakeModules{}, &dialer{missing: 3}
		if _, err := connect(ctx, mods, dl.dial, 3, time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if len(mods.ensured) != 1 || mods.ensured[0] != "ip_vs" || dl.dials != 4 {
			t.Errorf("loaded %q and dialled %d times, want ip_vs and 4", mods.ensured, dl.dials)
		}
	})
	t.Run("family never there", func(t *testing.T) {
		mods, dl := &fakeModules{}, &dialer{missing: 100}
		_, err := connect(ctx, mods, dl.dial, 3, time.Millisecond)
		if !errors.Is(err, ErrFamilyMissing) || !strings.Contains(err.Error(), "ip_vs is loaded, and 3ms later still") || dl.dials != 4 {
			t.Errorf("connect = %v after %d dials, want ErrFamilyMissing after 4", err, dl.dials)
		}
	})
	t.Run("ip_vs cannot be loaded", func(t *testing.T) {
		mods := &fakeModules{missing: map[string]error{"ip_vs": &kmod.Error{Module: "ip_vs", Step: kmod.StepFind, Err: kmod.ErrNotShipped}}}
		dl := &dialer{missing: 100}
		_, err := connect(ctx, mods, dl.dial, 3, time.Millisecond)
		if !errors.Is(err, kmod.ErrNotShipped) || !strings.Contains(err.Error(), "ip_vs could not be loaded") || dl.dials != 1 {
			t.Errorf("connect = %v after %d dials, want kmod.ErrNotShipped after 1", err, dl.dials)
		}
	})
	t.Run("another failure", func(t *testing.T) {
		mods, dl := &fakeModules{}, &dialer{err: kernelErr(syscall.EPROTONOSUPPORT)}
		_, err := connect(ctx, mods, dl.dial, 3, time.Millisecond)
		if !errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, ErrFamilyMissing) || len(mods.ensured) != 0 {
			t.Errorf("connect = %v, loaded %q; want the socket's error and no module", err, mods.ensured)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := connect(ctx, &fakeModules{}, (&dialer{missing: 100}).dial, 3, time.Hour)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("connect = %v, want context.Canceled", err)
		}
	})
}

func TestStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "halb", "ipvs-services")
	keys := keySet{
		web.Key: true,
		v6.Key:  true,
		dns.Key: true,
	}
	if err := writeState(path, keys); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := stateHeader + "192.0.2.10:80/tcp\n192.0.2.53:53/udp\n[2001:db8::10]:443/tcp\n"
	if string(data) != want {
		t.Errorf("state file:\n%s\nwant:\n%s", data, want)
	}
	got, problems, err := readState(path)
	if err != nil || len(problems) != 0 || !got.equal(keys) {
		t.Errorf("readState = %v, %v, %v; want %v", got, problems, err, keys)
	}

	got, problems, err = readState(filepath.Join(t.TempDir(), "none"))
	if err != nil || len(problems) != 0 || len(got) != 0 {
		t.Errorf("readState(missing) = %v, %v, %v; want an empty set", got, problems, err)
	}

	bad := "# comment\n192.0.2.10:80/tcp\n192.0.2.10/tcp\n192.0.2.10:80/sctp\nhello\n\n[2001:db8::10]:443/tcp\n"
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	got, problems, err = readState(path)
	if err != nil || len(problems) != 3 || !got.equal(keySet{web.Key: true, v6.Key: true}) {
		t.Errorf("readState(bad lines) = %v, %q, %v; want web and web6, 3 problems", got, problems, err)
	}
	if len(problems) > 0 && !strings.Contains(problems[0].Error(), path+": line 3") {
		t.Errorf("problem %q does not say where", problems[0])
	}
}

func TestNewUnreadableState(t *testing.T) {
	dir := t.TempDir() // a directory where the file should be
	_, err := New(&fakeIPVS{}, Options{Modules: &fakeModules{}, StateFile: dir})
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("New with a directory as state file = %v, want an error naming it", err)
	}
}
