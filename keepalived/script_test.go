package keepalived

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestSplitScript: keepalived's word splitting of a script string, and
// what only a shell would act on.
func TestSplitScript(t *testing.T) {
	for _, tc := range []struct {
		in    string
		words []string
		shell bool
	}{
		{"/usr/bin/check", []string{"/usr/bin/check"}, false},
		{"/usr/bin/check -q  eth0", []string{"/usr/bin/check", "-q", "eth0"}, false},
		{`/x.sh 'a b' "c d" e\ f`, []string{"/x.sh", "a b", "c d", "e f"}, false},
		{"/bin/sh -c 'pidof haproxy'", []string{"/bin/sh", "-c", "pidof haproxy"}, false},
		{"/x.sh 'a | b'", []string{"/x.sh", "a | b"}, false},
		{"/x.sh | logger", []string{"/x.sh", "|", "logger"}, true},
		{"/x.sh && /y.sh", []string{"/x.sh", "&&", "/y.sh"}, true},
		{"/x.sh > /tmp/out", []string{"/x.sh", ">", "/tmp/out"}, true},
		{"/x.sh $HOME", []string{"/x.sh", "$HOME"}, true},
		{"/x.sh `id`", []string{"/x.sh", "`id`"}, true},
		{"/x.sh /etc/*.conf", []string{"/x.sh", "/etc/*.conf"}, true},
		{"A=1 /x.sh", []string{"A=1", "/x.sh"}, true},
		{"/x.sh --opt=1", []string{"/x.sh", "--opt=1"}, false},
		{"/x.sh 'open", []string{"/x.sh", "open"}, true},
	} {
		words, shell := splitScript(tc.in)
		if !slices.Equal(words, tc.words) || shell != tc.shell {
			t.Errorf("splitScript(%q) = %q, %v; want %q, %v", tc.in, words, shell, tc.words, tc.shell)
		}
	}
}

// TestScriptConversion: argv carried as is, a bare name resolved (and
// reported; one found nowhere stops the import, as halb would refuse a
// relative program), a shell string wrapped (and reported) with the
// program it starts with held to the policy check, a program the check
// refuses reported as a warning that leaves the conversion exact, and a
// shell string starting with a name found nowhere warned about (the shell
// would search its PATH as root).
func TestScriptConversion(t *testing.T) {
	refused := errors.New("refused: owned by uid 1000")
	for _, tc := range []struct {
		script  string
		argv    []string
		checked string
		note    string // in the report, "" for none
		exact   bool
	}{
		{"/usr/local/bin/chk -q", []string{"/usr/local/bin/chk", "-q"}, "/usr/local/bin/chk", "", true},
		{"pidof haproxy", []string{"/usr/bin/pidof", "haproxy"}, "/usr/bin/pidof", "pidof is found on PATH by keepalived", false},
		{"/usr/local/bin/chk | grep ok", []string{"/bin/sh", "-c", "/usr/local/bin/chk | grep ok"}, "/usr/local/bin/chk", "uses shell syntax", false},
		{"/home/u/chk.sh", []string{"/home/u/chk.sh"}, "/home/u/chk.sh", "warning: /home/u/chk.sh: halb will refuse to run it on this host: refused", true},
		{"nosuchprog x", nil, "", "", false},
		{"nosuchprog x; /bin/true", []string{"/bin/sh", "-c", "nosuchprog x; /bin/true"}, "", "warning: nosuchprog is not in /usr/local/sbin:", false},
	} {
		conf := keywordConfig("top", "vrrp_script s {\nscript \""+tc.script+"\"\ninterval 2\ntimeout 1\n}\nvrrp_instance VI_3 {\ninterface eth1\nvirtual_router_id 3\nvirtual_ipaddress {\n198.51.100.1/24\n}\ntrack_script {\ns\n}\n}")
		var checked []string
		path := writeFiles(t, map[string]string{"k.conf": conf}) + "/k.conf"
		res, err := Import(path, ImportOptions{
			LookPath: func(name string) (string, bool) {
				if name == "nosuchprog" {
					return "", false
				}
				return "/usr/bin/" + name, true
			},
			CheckProgram: func(p string) error {
				checked = append(checked, p)
				if strings.HasPrefix(p, "/home/") {
					return refused
				}
				return nil
			},
		})
		if tc.script == "nosuchprog x" {
			var rf *RefusedError
			if !errors.As(err, &rf) || !strings.Contains(err.Error(), `"nosuchprog" must be an absolute path`) {
				t.Errorf("%q: %v; want halb's refusal of a relative program", tc.script, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var report strings.Builder
		_ = res.WriteReport(&report)
		want := "command: " + flowList(tc.argv)
		if !strings.Contains(string(res.YAML), want) {
			t.Errorf("%q: want %s in\n%s", tc.script, want, res.YAML)
		}
		if tc.checked != "" && !slices.Contains(checked, tc.checked) {
			t.Errorf("%q: the policy check saw %q, want %s", tc.script, checked, tc.checked)
		}
		if tc.note != "" && !strings.Contains(report.String(), tc.note) || tc.note == "" && report.Len() > 0 {
			t.Errorf("%q: report %q, want %q", tc.script, report.String(), tc.note)
		}
		if res.Exact() != tc.exact {
			t.Errorf("%q: exact = %v, want %v", tc.script, res.Exact(), tc.exact)
		}
	}
}
