package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// prermScenario runs in a mount and network namespace of its own (unshare),
// with a fresh bpf filesystem on /sys/fs/bpf, where the prerm looks: halb
// attaches its XDP program to a veth and stops, leaving it pinned and
// attached as it does for a restart; then the prerm runs as dpkg runs it on
// removal. Each step prints what an operator would look at.
const prermScenario = `set -e
mount -t bpf bpf /sys/fs/bpf
ip link add vh0 type veth peer name vh1
ip link set vh0 up; ip link set vh1 up
ip addr add 192.0.2.1/24 dev vh0
"$HALB" run -c "$CONFIG" >"$LOG" 2>&1 &
pid=$!
i=0
until [ -e /sys/fs/bpf/halb/halb_xdp_lb_vh0 ] || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
kill -TERM $pid; wait $pid || true
echo "stopped: pins $(ls /sys/fs/bpf/halb 2>/dev/null | wc -l)"
ip -d link show vh0 | grep -q 'prog/xdp' && echo "stopped: xdp attached" || echo "stopped: no xdp"
sh "$PRERM" remove
echo "removed: pins $(ls /sys/fs/bpf/halb 2>/dev/null | wc -l)"
ip -d link show vh0 | grep -q 'prog/xdp' && echo "removed: xdp attached" || echo "removed: no xdp"
`

// Removing the package while halb's XDP program is attached must not leave
// it attached with nobody to manage it: the prerm takes the data path away
// as `halb run --cleanup` would.
func TestPrermDetachesDataPath(t *testing.T) {
	netnstest.Require(t)
	need(t, "unshare", "ip")
	prerm, err := filepath.Abs("../../configs/deb/prerm")
	if err != nil {
		t.Fatal(err)
	}
	out := newScenario(t, `control:
  socket: @SOCKET@
  metrics: ""
datapath:
  mode: xdp
  interfaces: [vh0]
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    protocol: tcp
    forward: dr
    backends:
      - address: 192.0.2.2
    health_check:
      type: none
`).run(t, prermScenario, "PRERM="+prerm)
	for _, want := range []string{"stopped: xdp attached", "removed: pins 0", "removed: no xdp"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "stopped: pins 0\n") {
		t.Errorf("halb left no pins at stop, so the prerm was not put to the test:\n%s", out)
	}
}
