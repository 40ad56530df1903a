package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// importConf is a keepalived.conf whose script exists on every host the
// tests run on (/usr/bin/test), so that its import passes `halb check`
// here, scripts and all.
const importConf = `vrrp_script maint {
    script "/usr/bin/test ! -e /etc/halb/maintenance"
    interval 2
    timeout 1
    weight -60
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    @a unicast_src_ip 192.0.2.1
    @b unicast_src_ip 192.0.2.2
    unicast_peer {
        @^a 192.0.2.1
        @^b 192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.100/24
    }
    track_script {
        maint
    }
}
`

func runHalb(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = execute(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestImportThenCheck: an exact conversion exits 0, writes the file whole
// (mode 0600: it may hold a password) and `halb check` accepts it.
func TestImportThenCheck(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(in, []byte(importConf), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "halb.yaml")
	code, stdout, stderr := runHalb(t, "import", "--config-id", "b", "-o", out, in)
	if code != 0 || stdout != "" || stderr != "" {
		t.Fatalf("import: %d, stdout %q, stderr %q; want 0 and silence", code, stdout, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "unicast_src: 192.0.2.2") || !strings.Contains(string(data), "unicast_peers: [192.0.2.1]") {
		t.Errorf("the @b lines were not the ones kept:\n%s", data)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	code, stdout, stderr = runHalb(t, "check", "-c", out)
	if code != 0 {
		t.Fatalf("check of the import: %d\n%s%s\n%s", code, stdout, stderr, data)
	}
	// Without -o the YAML goes to stdout, the same bytes.
	code, stdout, _ = runHalb(t, "import", "--config-id", "b", in)
	if code != 0 || stdout != string(data) {
		t.Errorf("import to stdout: %d, %q; want 0 and the file's bytes", code, stdout)
	}
}

// TestImportExitStatuses: 3 with every approximation on stderr, 2 with
// the line of a grammar error or halb's refusal of what keepalived took
// (one instance name twice), 1 for a file that cannot be read; and the
// output file is left as it was unless the conversion succeeded.
func TestImportExitStatuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	approx := write("approx.conf", "global_defs {\n  router_id x\n}\n"+importConf)
	broken := write("broken.conf", importConf+"vrrp_instance X {\n")
	out := write("out.yaml", "previous contents\n")

	code, stdout, stderr := runHalb(t, "import", "--config-id", "a", approx)
	if code != 3 || !strings.Contains(stderr, "approx.conf:2: router_id: dropped:") || !strings.Contains(stdout, "name: VI_1") {
		t.Errorf("approximated: %d, stderr %q; want 3, the router_id line, and the YAML on stdout", code, stderr)
	}
	code, stdout, stderr = runHalb(t, "import", "-o", out, broken)
	if code != 2 || stdout != "" || !strings.Contains(stderr, "broken.conf:26: the block of vrrp_instance is never closed") {
		t.Errorf("broken: %d, stdout %q, stderr %q; want 2 naming line 26", code, stdout, stderr)
	}
	twice := write("twice.conf", importConf+strings.Replace(importConf, "192.0.2.100/24", "192.0.2.101/24", 1)[strings.Index(importConf, "vrrp_instance"):])
	code, stdout, stderr = runHalb(t, "import", "--config-id", "a", "-o", out, twice)
	if code != 2 || stdout != "" || !strings.Contains(stderr, "halb would refuse the converted configuration") || !strings.Contains(stderr, "vrrp.instances[1].name") {
		t.Errorf("refused: %d, stdout %q, stderr %q; want 2 and halb's problem", code, stdout, stderr)
	}
	code, _, stderr = runHalb(t, "import", "-o", out, filepath.Join(dir, "absent.conf"))
	if code != 1 || !strings.Contains(stderr, "absent.conf: no such file or directory") {
		t.Errorf("missing: %d, %q; want 1 and the file named", code, stderr)
	}
	code, _, stderr = runHalb(t, "import", "-o", filepath.Join(dir, "no", "such", "dir.yaml"), approx)
	if code != 1 || !strings.Contains(stderr, "dir.yaml") {
		t.Errorf("unwritable output: %d, %q; want 1 naming it", code, stderr)
	}
	if b, _ := os.ReadFile(out); string(b) != "previous contents\n" {
		t.Errorf("a failed import changed the output file: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
