package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/halb-lb/halb/loader"
)

// noKernel answers every kernel question with "no", so the daemon's tests
// do not depend on the machine they run on.
type noKernel struct{}

var errNo = errors.New("not on this test kernel")

func (noKernel) ProgramType(ebpf.ProgramType) error { return errNo }
func (noKernel) XDPLink() error                     { return errNo }
func (noKernel) TCX() error                         { return errNo }
func (noKernel) IPVSFamily() error                  { return errNo }

const goodConfig = `
log: {level: info}
vrrp:
  instances:
    # An interface that does not exist: the instance waits in FAULT and
    # sends nothing, so this in-process test never touches a real link.
    - {name: VI_1, interface: halbnone0, vrid: 7, virtual_ips: [192.0.2.7/24]}
`

func newTestDaemon(t *testing.T) (*Daemon, string, *bytes.Buffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(path, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	d, err := New(path, &logs, loader.Host{Root: t.TempDir(), Kernel: noKernel{}})
	if err != nil {
		t.Fatal(err)
	}
	return d, path, &logs
}

func TestReloadKeepsRunningConfigOnBadFile(t *testing.T) {
	d, path, logs := newTestDaemon(t)
	before := d.Config()
	if err := os.WriteFile(path, []byte(strings.Replace(goodConfig, "vrid: 7", "vrid: 0", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err == nil {
		t.Fatal("a bad file was accepted")
	}
	if d.Config() != before {
		t.Error("the running config changed after a rejected reload")
	}
	if !strings.Contains(logs.String(), "vrrp.instances[0].vrid") {
		t.Errorf("the rejection log does not name the field:\n%s", logs)
	}
}

func TestReloadAppliesLevel(t *testing.T) {
	d, path, _ := newTestDaemon(t)
	if err := os.WriteFile(path, []byte(strings.Replace(goodConfig, "level: info", "level: debug", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if d.level.Level() != slog.LevelDebug || d.Config().Log.Level != "debug" {
		t.Errorf("level after reload = %v", d.level.Level())
	}
}

func TestRunStopsOnSIGTERM(t *testing.T) {
	d, _, logs := newTestDaemon(t)
	signals := make(chan os.Signal, 1)
	signals <- syscall.SIGTERM
	if err := d.Run(context.Background(), signals); err != nil {
		t.Fatal(err)
	}
	// With no BTF in the probed tree the decision is IPVS, and it is logged.
	if !strings.Contains(logs.String(), "datapath=ipvs") || !strings.Contains(logs.String(), "halb stopping") {
		t.Errorf("logs:\n%s", logs)
	}
}
