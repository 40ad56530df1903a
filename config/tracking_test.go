package config

import (
	"slices"
	"testing"
	"time"
)

// The per-state notify scripts, track_files and track_processes: each key
// is read, given its defaults, and refused with the field and the fix when
// it is wrong.
func TestTrackingKeys(t *testing.T) {
	const tp = "track_processes: [{name: haproxy, delay: 0s}]"
	in := "vrrp.instances[0]"
	runProblemCases(t, []problemCase{
		{"notify scripts", []string{"auth_pass: secret", "auth_pass: secret\n      notify_master: [/bin/true, --fast]\n" +
			"      notify_backup: [/bin/true]\n      notify_fault: [/bin/true]\n      notify_stop: [/bin/true]"}, "", ""},
		{"notify_master one string", []string{"auth_pass: secret", "auth_pass: secret\n      notify_master: /bin/true"}, "", ""},
		{"notify_master relative", []string{"auth_pass: secret", "auth_pass: secret\n      notify_master: [promote.sh]"},
			in + ".notify_master[0]", `"promote.sh" must be an absolute path to the program`},
		{"notify_backup with spaces", []string{"auth_pass: secret", "auth_pass: secret\n      notify_backup: [\"/bin/demote --now\"]"},
			in + ".notify_backup[0]", "commands run without a shell, so write each argument as its own list item"},
		{"notify_fault a mapping", []string{"auth_pass: secret", "auth_pass: secret\n      notify_fault: {a: 1}"},
			in + ".notify_fault", "a list is expected here"},
		{"notify_stop a number", []string{"auth_pass: secret", "auth_pass: secret\n      notify_stop: [5]"},
			in + ".notify_stop[0]", "5 is not a string"},

		{"track file", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{path: /run/halb/w, weight: -3}]"}, "", ""},
		{"track file relative", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{path: run/w}]"},
			in + ".track_files[0].path", `"run/w" must be an absolute path to the file`},
		{"track file no path", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{weight: 2}]"},
			in + ".track_files[0].path", "a file to read is required"},
		{"track file weight", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{path: /run/w, weight: 255}]"},
			in + ".track_files[0].weight", "255 is out of range: use -254..254"},
		{"track file twice", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{path: /run/w}, {path: /run/w, weight: 2}]"},
			in + ".track_files[1].path", `"/run/w" is tracked twice`},
		{"track file a string", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [/run/w]"},
			in + ".track_files[0]", "is not a mapping of keys"},
		{"track file unknown key", []string{"auth_pass: secret", "auth_pass: secret\n      track_files: [{file: /run/w}]"},
			in + ".track_files[0].file", `unknown key "file"`},

		{"track process args", []string{tp, "track_processes: [{name: haproxy, args: [-f, /etc/haproxy.cfg], min_count: 2, weight: -20, delay: 3s}]"}, "", ""},
		{"track process no name", []string{tp, "track_processes: [{min_count: 1}]"},
			in + ".track_processes[0].name", "a process name is required"},
		{"track process a path", []string{tp, "track_processes: [{name: /usr/sbin/haproxy}]"},
			in + ".track_processes[0].name", `"/usr/sbin/haproxy" is a path: the name is matched against the process name and the base name of its argv[0], so write "haproxy"`},
		{"track process min_count 0", []string{tp, "track_processes: [{name: haproxy, min_count: 0}]"},
			in + ".track_processes[0].min_count", "0 is out of range: use 1..4194304"},
		{"track process weight", []string{tp, "track_processes: [{name: haproxy, weight: -255}]"},
			in + ".track_processes[0].weight", "-255 is out of range: use -254..254"},
		{"track process delay under a second", []string{tp, "track_processes: [{name: haproxy, delay: 500ms}]"},
			in + ".track_processes[0].delay", "500ms is out of range: use 0 (act at once) or 1s..1h0m0s"},
		{"track process delay over an hour", []string{tp, "track_processes: [{name: haproxy, delay: 61m}]"},
			in + ".track_processes[0].delay", "out of range"},
		{"track process delay no unit", []string{tp, "track_processes: [{name: haproxy, delay: 5}]"},
			in + ".track_processes[0].delay", `5 has no unit: write a duration like "5s"`},
		{"track process twice", []string{tp, "track_processes: [{name: haproxy}, {name: haproxy, weight: -2}]"},
			in + ".track_processes[1]", `process "haproxy" with these args is tracked twice`},
		{"track process twice with other args", []string{tp, "track_processes: [{name: haproxy}, {name: haproxy, args: [-x]}]"}, "", ""},
		{"track process NUL in an arg", []string{tp, `track_processes: [{name: haproxy, args: ["a\0b"]}]`},
			in + ".track_processes[0].args[0]", "contains a NUL byte"},

		{"keepalived's track_file", []string{"auth_pass: secret", "auth_pass: secret\n      track_file: [x]"},
			in + ".track_file", "halb calls this track_files"},
		{"keepalived's track_process", []string{"auth_pass: secret", "auth_pass: secret\n      track_process: [x]"},
			in + ".track_process", "halb calls this track_processes"},
	})
}

// syncGroupOf adds a second instance and a sync group of both, with the
// group's extra keys, to baseConfig.
func syncGroupOf(extra string) []string {
	return []string{"      garp_master_refresh: 0s\n", "      garp_master_refresh: 0s\n" +
		"    - {name: VI_2, interface: eth0, vrid: 52, virtual_ips: [192.0.2.101/24]}\n" +
		"  sync_groups:\n    - name: G\n      instances: [VI_1, VI_2]\n" + extra}
}

func TestSyncGroupNotifyKeys(t *testing.T) {
	runProblemCases(t, []problemCase{
		{"all four", syncGroupOf("      notify_master: [/bin/true, g]\n      notify_backup: [/bin/true]\n" +
			"      notify_fault: [/bin/true]\n      notify_stop: [/bin/true]\n"), "", ""},
		{"relative", syncGroupOf("      notify_fault: [fault.sh]\n"), "vrrp.sync_groups[0].notify_fault[0]", "must be an absolute path"},
		{"keepalived's notify", syncGroupOf("      notify: /bin/true\n"), "vrrp.sync_groups[0].notify", `unknown key "notify"`},
	})
}

// The decoded values and the defaults: keepalived's track_file weight 1,
// and a process missed as an interface is, min_count 1 and weight 0.
func TestTrackingDefaults(t *testing.T) {
	cfg, err := Parse(with(t, "track_processes: [{name: haproxy, delay: 0s}]",
		"track_processes: [{name: haproxy}, {name: nginx, args: [-g, daemon off;], min_count: 2, weight: -5, delay: 2s}, {name: bird, args: []}]\n"+
			"      track_files: [{path: /run/halb/w}]\n      notify_master: [/bin/true, --fast]"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in := cfg.VRRP.Instances[0]
	if want := []TrackFile{{Path: "/run/halb/w", Weight: 1}}; !slices.Equal(in.TrackFiles, want) {
		t.Errorf("track_files = %+v, want %+v", in.TrackFiles, want)
	}
	// args: [] (no arguments at all) is not args left out (any).
	if got := in.TrackProcesses; len(got) != 3 || got[2].Args == nil || len(got[2].Args) != 0 || got[0].Name != "haproxy" || got[0].MinCount != 1 || got[0].Weight != 0 || got[0].Delay != 0 || got[0].Args != nil ||
		got[1].Name != "nginx" || !slices.Equal(got[1].Args, []string{"-g", "daemon off;"}) || got[1].MinCount != 2 || got[1].Weight != -5 || got[1].Delay != 2*time.Second {
		t.Errorf("track_processes = %+v", got)
	}
	scripts := in.StateScripts()
	if len(scripts) != 1 || scripts[0].Key != "notify_master" || !slices.Equal(scripts[0].Argv, []string{"/bin/true", "--fast"}) {
		t.Errorf("StateScripts() = %+v, want notify_master [/bin/true --fast] alone", scripts)
	}
}
