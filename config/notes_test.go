package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNotesAcceptMode(t *testing.T) {
	const file = `vrrp:
  instances:
    - name: VI_V3
      interface: eth0
      vrid: 51
      version: 3
      virtual_ips: [192.0.2.100/24]
    - name: VI_ACCEPT
      interface: eth0
      vrid: 52
      version: 3
      accept: true
      virtual_ips: [192.0.2.101/24]
    - name: VI_OWNER
      interface: eth0
      vrid: 53
      version: 3
      priority: 255
      virtual_ips: [192.0.2.102/24]
    - name: VI_V2
      interface: eth0
      vrid: 54
      version: 2
      virtual_ips: [192.0.2.103/24]
    - name: VI_EXPLICIT
      interface: eth0
      vrid: 55
      version: 3
      accept: false
      virtual_ips: [192.0.2.104/24, 192.0.2.105/24]
`
	path := filepath.Join(t.TempDir(), "halb.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	notes := Notes(path, cfg)
	if len(notes) != 2 {
		t.Fatalf("got %d notes, want 2 (VI_V3, VI_EXPLICIT): %v", len(notes), notes)
	}
	for i, want := range []struct {
		path string
		line int
		vips string
	}{
		// accept absent: the instance's line; present: its own.
		{"vrrp.instances[0].accept", 3, "192.0.2.100 "},
		{"vrrp.instances[4].accept", 29, "192.0.2.104, 192.0.2.105 "},
	} {
		n := notes[i]
		if n.Path != want.path || n.Line != want.line || !strings.Contains(n.Msg, want.vips) ||
			!strings.Contains(n.Msg, "set accept: true") || !strings.HasPrefix(n.Msg, "note: ") {
			t.Errorf("note %d = %+v, want path %s line %d about %q", i, n, want.path, want.line, want.vips)
		}
	}
	if got, want := notes[0].In(path), path+":3: vrrp.instances[0].accept: note: "; !strings.HasPrefix(got, want) {
		t.Errorf("printed as %q, want it to start %q", got, want)
	}
}

func TestNoAccept(t *testing.T) {
	somePrefix := PlainVIPs(netip.MustParsePrefix("192.0.2.100/24"))
	for _, tc := range []struct {
		in   Instance
		want bool
	}{
		{Instance{Version: 3, Priority: 100}, false}, // no VIPs, nothing to filter
		{Instance{Version: 3, Priority: 100, VirtualIPs: somePrefix}, true},
		{Instance{Version: 3, Priority: 100, Accept: true, VirtualIPs: somePrefix}, false},
		{Instance{Version: 3, Priority: 255, VirtualIPs: somePrefix}, false},
		{Instance{Version: 2, Priority: 100, VirtualIPs: somePrefix}, false},
	} {
		if got := tc.in.NoAccept(); got != tc.want {
			t.Errorf("%+v: NoAccept = %v, want %v", tc.in, got, tc.want)
		}
	}
}
