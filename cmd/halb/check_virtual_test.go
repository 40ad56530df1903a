package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// halb check shows a VIP on another interface where the instance's VIPs
// are, and what the instance holds beside them as MASTER; plain VIPs read
// as they always have.
func TestCheckSummaryOfVirtualExtras(t *testing.T) {
	file := filepath.Join(t.TempDir(), "extras.yaml")
	err := os.WriteFile(file, []byte(`datapath: {interfaces: [eth9]}
vrrp:
  instances:
    - name: VI_1
      interface: eth9
      vrid: 51
      virtual_ips: [192.0.2.100/24, {address: 198.51.100.100/24, interface: eth8}]
      virtual_ips_excluded: [{address: "2001:db8:1::100/64", interface: eth8}]
      virtual_routes: [{to: 203.0.113.0/24, via: 198.51.100.254, interface: eth8, metric: 5}]
      virtual_rules: [{from: 198.51.100.100/32, table: 100}]
    - name: VI_2
      interface: eth9
      vrid: 52
      virtual_ips: [192.0.2.200/24]
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := run(t, "check", "-c", file)
	if code != exitOK {
		t.Fatalf("halb check = %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{
		"192.0.2.100/24, 198.51.100.100/24 on eth8\n",
		"VI_1 as MASTER also holds 2001:db8:1::100/64 on eth8 (excluded); " +
			"route 203.0.113.0/24 via 198.51.100.254 dev eth8 metric 5; rule from 198.51.100.100/32 lookup 100\n",
		"multicast  192.0.2.200/24\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "VI_2 as MASTER") {
		t.Errorf("an instance with nothing beside its VIPs has an extra line:\n%s", out)
	}
}
