package main

import (
	"bufio"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// syscallScenario runs halb under strace in a mount and network namespace
// of its own: a VRRPv3 instance on a VMAC with a track script and a
// notify script, an XDP service with a TCP check, a SIGHUP reload, then a
// stop. It waits for the notify script to report MASTER, at most 30 s.
const syscallScenario = `set -e
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
ip link add vh0 type veth peer name vh1
ip link set vh0 up; ip link set vh1 up
ip addr add 192.0.2.1/24 dev vh0
strace -f -qq -o "$TRACE" "$HALB" run -c "$CONFIG" >"$LOG" 2>&1 &
tracer=$!
i=0
until grep -q MASTER "$NOTIFIED" 2>/dev/null || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
halb=$(cat /proc/$tracer/task/$tracer/children)
kill -HUP $halb; sleep 1
kill -TERM $halb; wait $tracer || true
grep -q MASTER "$NOTIFIED"
`

// The unit's SystemCallFilter and RestrictAddressFamilies hold what halb
// and its scripts do: every system call strace sees in the scenario is in
// the filter as systemd expands it, and every socket is of an allowed
// family. A call outside them would fail with EPERM under the unit.
func TestUnitAllowsWhatHalbCalls(t *testing.T) {
	netnstest.Require(t)
	need(t, "strace", "systemd-analyze", "unshare", "ip")
	allowed, families := unitFilter(t, "../../configs/systemd/halb.service")
	dir := t.TempDir()
	notify := filepath.Join(dir, "notify.sh")
	notified := filepath.Join(dir, "notified")
	if err := os.WriteFile(notify, []byte("#!/bin/sh\necho \"$@\" >> "+notified+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(dir, "trace")
	newScenario(t, strings.ReplaceAll(`control:
  socket: @SOCKET@
  metrics: "127.0.0.1:9130"
datapath:
  mode: xdp
  interfaces: [vh0]
vrrp:
  instances:
    - name: VI_1
      interface: vh0
      vrid: 51
      version: 3
      priority: 150
      advert_interval: 100ms
      virtual_ips: [192.0.2.100/24]
      use_vmac: true
      notify: @NOTIFY@
      track_scripts:
        - command: [/bin/true]
          interval: 200ms
          timeout: 100ms
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    protocol: tcp
    forward: dr
    backends:
      - address: 192.0.2.2
    health_check:
      type: tcp
      interval: 200ms
      timeout: 100ms
`, "@NOTIFY@", notify)).run(t, syscallScenario, "TRACE="+trace, "NOTIFIED="+notified)
	calls, sockets := traced(t, trace)
	t.Logf("%d distinct system calls, socket families %v", len(calls), slices.Sorted(slices.Values(sockets)))
	if len(calls) < 40 {
		t.Fatalf("only %d system calls traced: %v", len(calls), calls)
	}
	for _, c := range calls {
		if !allowed[c] {
			t.Errorf("halb called %s, which the unit's SystemCallFilter does not allow", c)
		}
	}
	for _, f := range sockets {
		if !families[f] {
			t.Errorf("halb opened an %s socket, which RestrictAddressFamilies does not allow", f)
		}
	}
}

// unitFilter reads the unit's SystemCallFilter= (expanded by
// systemd-analyze, groups within groups) and RestrictAddressFamilies=.
func unitFilter(t *testing.T, unit string) (calls, families map[string]bool) {
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	calls, families = map[string]bool{}, map[string]bool{}
	var expand func(string)
	expand = func(name string) {
		if !strings.HasPrefix(name, "@") {
			calls[name] = true
			return
		}
		out, err := exec.Command("systemd-analyze", "syscall-filter", name).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
		}
		for line := range strings.Lines(string(out)) {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(line, " ") && f[0] != "#" && f[0] != name {
				expand(f[0])
			}
		}
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "SystemCallFilter="); ok {
			if strings.HasPrefix(v, "~") {
				t.Fatalf("a deny list (%s) is beyond this test: teach unitFilter", strings.TrimSpace(line))
			}
			for _, name := range strings.Fields(v) {
				expand(name)
			}
		}
		if v, ok := strings.CutPrefix(line, "RestrictAddressFamilies="); ok {
			for _, f := range strings.Fields(v) {
				families[f] = true
			}
		}
	}
	if len(calls) < 100 || len(families) == 0 {
		t.Fatalf("the unit's filter expands to %d calls and %d families", len(calls), len(families))
	}
	return calls, families
}

var (
	traceCall   = regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]`)
	traceSocket = regexp.MustCompile(`\bsocket\((AF_[A-Z0-9]+)`)
)

// traced lists the distinct system calls and socket families in strace's
// output.
func traced(t *testing.T, path string) (calls, families []string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen, fams := map[string]bool{}, map[string]bool{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if m := traceCall.FindStringSubmatch(line); m != nil {
			seen[m[1]] = true
		}
		if m := traceSocket.FindStringSubmatch(line); m != nil {
			fams[m[1]] = true
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return slices.Sorted(maps.Keys(seen)), slices.Sorted(maps.Keys(fams))
}
