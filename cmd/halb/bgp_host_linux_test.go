package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// On a host where the bgp section cannot run (no IPv4 address to take as
// the router ID, BFD towards a peer on no connected network), `halb run`
// refuses the file as it refuses any bad configuration: exit 2, each
// problem with the file, its line and its field, as `halb check` warns
// of them there.
func TestBGPRunRefusesHostProblemsWithExit2(t *testing.T) {
	ns := netnstest.New(t) // loopback only
	bin := halbtest.Build(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "bgp.yaml")
	if err := os.WriteFile(file, []byte("control: {socket: "+filepath.Join(dir, "halb.sock")+"}\n"+`bgp:
  asn: 65001
  peers:
    - address: 192.0.2.254
      asn: 65000
      bfd: {}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "-c", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := ns.Start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitBadConfig {
		t.Fatalf("halb run = %v, want exit 2\n%s", err, stderr.String())
	}
	for _, want := range []string{
		file + ":2: bgp.router_id: this host has no IPv4 address",
		file + ":7: bgp.peers[0].bfd: 192.0.2.254 is on no network directly connected",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("halb run's stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
