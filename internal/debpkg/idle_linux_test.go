package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/internal/netnstest"
)

// idleScenario starts halb with the package's config, looks at what an
// operator would, and stops it.
const idleScenario = `set -e
mount -t bpf bpf /sys/fs/bpf
"$HALB" run -c "$CONFIG" >"$LOG" 2>&1 &
pid=$!
i=0
until grep -q "halb starting" "$LOG" || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done
sleep 2
echo "running: $(kill -0 $pid && echo yes)"
echo "socket: $(test -S "$HALB_CONTROL_SOCKET" && echo ours)"
echo "links: $(ip -o link | wc -l)"
echo "addresses: $(ip -o addr | wc -l)"
echo "pins: $(ls /sys/fs/bpf | grep -cv debug || true)"
kill -TERM $pid
wait $pid && echo "exit: 0"
echo "after: pins $(ls /sys/fs/bpf | grep -cv debug || true)"
`

// The config the package installs configures nothing: `halb run` with it
// starts, stays up, and touches no link, address or pin (in a network
// namespace whose one link, lo, is down), and stops cleanly. Its control
// socket goes to the test's directory (HALB_CONTROL_SOCKET), not /run/halb.
func TestPackagedConfigIdles(t *testing.T) {
	netnstest.Require(t)
	need(t, "unshare", "ip")
	config, err := os.ReadFile("../../configs/deb/halb.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := newScenario(t, string(config))
	out := s.run(t, idleScenario, "HALB_CONTROL_SOCKET="+filepath.Join(s.dir, "run", "halb.sock"))
	for _, want := range []string{"running: yes", "socket: ours", "links: 1", "addresses: 0", "pins: 0", "exit: 0", "after: pins 0"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}
