package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/trust/trusttest"
)

// The per-state notify scripts, an instance's and a sync group's, go
// through the one script policy when the config is loaded, the program
// and the paths its arguments name, each at its own field.
func TestLoadRefusesStrangersStateScripts(t *testing.T) {
	u := trusttest.NewStranger(t)
	base, shared := trusttest.OpenDir(t, os.ModeSticky|0o777) // like /tmp
	good := filepath.Join(base, "good")
	if err := os.WriteFile(good, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.WriteFile(open, []byte("#!/bin/sh\nexit 0\n"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(shared, "evil.sh")
	u.MustSh(t, "printf 'id\\n' > "+evil)
	config := func(master, stop, groupFault string) string {
		return `datapath:
  interfaces: [eth0]
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      virtual_ips: [192.0.2.100/24]
      notify_master: [` + master + `]
      notify_stop: [` + stop + `]
    - name: VI_2
      interface: eth0
      vrid: 52
      virtual_ips: [192.0.2.101/24]
  sync_groups:
    - name: G
      instances: [VI_1, VI_2]
      notify_fault: [` + groupFault + `]
`
	}
	if got := loadProblems(t, writeConfig(t, config(good, "/bin/sh, "+good, good))); got != "" {
		t.Fatalf("root's own scripts refused:\n%s", got)
	}
	for _, c := range []struct {
		master, stop, group string
		field, want         string
	}{
		{open, good, good, "vrrp.instances[0].notify_master[0]: " + open, "writable by a user other than root (mode 0777)"},
		{good, "/bin/sh, " + evil, good, "vrrp.instances[0].notify_stop[1]: ", "cannot be trusted"},
		{good, good, open, "vrrp.sync_groups[0].notify_fault[0]: " + open, "writable by a user other than root"},
	} {
		got := loadProblems(t, writeConfig(t, config(c.master, c.stop, c.group)))
		if !strings.Contains(got, c.field) || !strings.Contains(got, c.want) {
			t.Errorf("got\n%s\nwant a problem at %s saying %q", got, c.field, c.want)
		}
	}
}
