package vrrp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/netnstest"
)

// logRecord is one line of a JSON log, the fields the notify test reads.
type logRecord struct {
	Msg      string        `json:"msg"`
	State    string        `json:"state"`
	From     string        `json:"from"`
	To       string        `json:"to"`
	Output   string        `json:"output"`
	Err      string        `json:"err"`
	Took     time.Duration `json:"took"`    // slog writes durations as nanoseconds
	Timeout  time.Duration `json:"timeout"` // idem
	received time.Time
}

// inProcess is an Instance run by this test process inside a namespace,
// for what only an unexported knob can set; its log is JSON, read back
// record by record as it arrives.
type inProcess struct {
	in   *Instance
	log  *recordLog
	stop func(t *testing.T)
}

// recordLog keeps the JSON records written to it with the time each
// arrived.
type recordLog struct {
	mu      sync.Mutex
	partial []byte
	records []logRecord
	raw     strings.Builder
}

func (r *recordLog) Write(p []byte) (int, error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.raw.Write(p)
	r.partial = append(r.partial, p...)
	for {
		i := strings.IndexByte(string(r.partial), '\n')
		if i < 0 {
			break
		}
		var rec logRecord
		if err := json.Unmarshal(r.partial[:i], &rec); err == nil {
			rec.received = now
			r.records = append(r.records, rec)
		}
		r.partial = r.partial[i+1:]
	}
	return len(p), nil
}

// find returns the first record that match accepts.
func (r *recordLog) find(match func(logRecord) bool) (logRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		if match(rec) {
			return rec, true
		}
	}
	return logRecord{}, false
}

// wait waits for a record that match accepts.
func (r *recordLog) wait(t *testing.T, what string, limit time.Duration, match func(logRecord) bool) logRecord {
	t.Helper()
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		if rec, ok := r.find(match); ok {
			return rec
		}
	}
	t.Fatalf("no %s logged within %v", what, limit)
	return logRecord{}
}

func (r *recordLog) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.raw.String()
}

// startInProcess parses yaml (one instance), lets tune set unexported
// knobs on the Instance, and runs it inside ns until stop or the end of
// the test.
func startInProcess(t *testing.T, ns *netnstest.NS, yaml string, tune func(*Instance)) *inProcess {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), t.Name()+".yaml")
	if err != nil {
		t.Fatalf("parse the instance's config: %v", err)
	}
	log := &recordLog{}
	in := NewInstance(cfg.VRRP.Instances[0], slog.New(slog.NewJSONHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	tune(in)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ns.Do(func() error { return in.Run(ctx) }) }()
	var once sync.Once
	stop := func(t *testing.T) {
		once.Do(func() {
			cancel()
			// Run waits for the queued notify runs, each bounded by its
			// timeout; this bounds a hang of the test.
			select {
			case err := <-ran:
				if err != nil {
					t.Errorf("in-process instance: %v", err)
				}
			case <-time.After(time.Minute):
				t.Errorf("in-process instance did not stop within a minute")
			}
		})
	}
	p := &inProcess{in: in, log: log, stop: stop}
	t.Cleanup(func() {
		stop(t)
		if t.Failed() {
			t.Logf("log of the in-process instance:\n%s", log)
		}
	})
	return p
}

// The notify script runs beside the state machine, never in its way: while
// the script called for BACKUP hangs, the Master dies and this node takes
// the VIP over as fast as without a script; the hanging script is killed,
// with its process group, at the notify timeout; each run's output and how
// it ended (killed, or its exit status) are logged.
//
// Node a runs in this test process so that the test can shorten the notify
// timeout from 10 s (an unexported knob, not a config key: the issue asks
// for none); its peer b, the Master to die, is the halb binary.
func TestNotifyHangDoesNotDelayTransition(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	dir := t.TempDir()
	calls, pids := filepath.Join(dir, "calls"), filepath.Join(dir, "pids")
	script := filepath.Join(dir, "notify.sh")
	// Every call but STOP hangs, in a child as a real script's curl or
	// systemctl would; STOP fails at once with exit status 3.
	body := fmt.Sprintf(`#!/bin/sh
echo "$3" >> %s
if [ "$3" = STOP ]; then echo "stopping $2"; exit 3; fi
echo "hanging in $3"
sleep 60 &
echo $! >> %s
wait
`, calls, pids)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	// Long beside the 360 ms the takeover needs, so that a takeover that
	// waited for the script shows; short enough for a quick test.
	const timeout = 3 * time.Second
	limit := 10 * time.Second

	b := newNode(t, "b", l.ns[1], v.config(l, 1, 150, true))
	b.start(t)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	a := startInProcess(t, l.ns[0], v.config(l, 0, 100, true)+"      notify: "+script+"\n",
		func(in *Instance) { in.notify.timeout = timeout })

	// The BACKUP call has started and now hangs.
	for start := time.Now(); !strings.HasPrefix(readFile(t, calls), "BACKUP\n"); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > limit {
			t.Fatalf("no notify call for BACKUP within %v; calls: %q", limit, readFile(t, calls))
		}
	}
	b.stop(syscall.SIGKILL)
	took := waitAddr(t, l.h[0], v.vip(), true, limit)
	t.Logf("master killed while a's BACKUP notify hangs: a holds the VIP after %v (master down interval %v, notify timeout %v)",
		took.Round(time.Millisecond), v.masterDown(100), timeout)
	if rec, ok := a.log.find(func(r logRecord) bool { return r.Msg == "notify script killed at its timeout" }); ok {
		t.Fatalf("the takeover came after the hanging BACKUP script was killed (%+v): the script delayed the transition", rec)
	}

	isKilled := func(state string) func(logRecord) bool {
		return func(r logRecord) bool { return r.Msg == "notify script killed at its timeout" && r.State == state }
	}
	backupKill := a.log.wait(t, "kill of the BACKUP notify", timeout+limit, isKilled("BACKUP"))
	master := a.log.wait(t, "transition to MASTER", limit, func(r logRecord) bool { return r.Msg == "transition" && r.To == "MASTER" })
	if !master.received.Before(backupKill.received) {
		t.Errorf("the transition to MASTER was logged at %v, after the BACKUP script's kill at %v",
			master.received.Format(time.StampMilli), backupKill.received.Format(time.StampMilli))
	}
	// The MASTER call waits its turn (calls run one at a time, in order),
	// then hangs and is killed in turn; stopping a then calls STOP.
	a.log.wait(t, "kill of the MASTER notify", timeout+limit, isKilled("MASTER"))
	a.stop(t)
	stop := a.log.wait(t, "failure of the STOP notify", limit, func(r logRecord) bool {
		return r.Msg == "notify script failed" && r.State == "STOP"
	})

	for _, state := range []string{"BACKUP", "MASTER"} {
		rec, _ := a.log.find(isKilled(state))
		t.Logf("%s notify: killed after %v (timeout %v), output %q", state, rec.Took, rec.Timeout, rec.Output)
		if rec.Timeout != timeout {
			t.Errorf("%s notify: logged timeout %v, want %v", state, rec.Timeout, timeout)
		}
		// Killed at the timeout: not before, and not much after (the kill
		// is immediate; 2 s is room for a loaded machine to reap).
		if rec.Took < timeout || rec.Took > timeout+2*time.Second {
			t.Errorf("%s notify: killed after %v, want at the timeout %v", state, rec.Took, timeout)
		}
		if want := "hanging in " + state; rec.Output != want {
			t.Errorf("%s notify: logged output %q, want %q", state, rec.Output, want)
		}
	}
	t.Logf("STOP notify: %s after %v, output %q", stop.Err, stop.Took, stop.Output)
	if !strings.Contains(stop.Err, "exit status 3") || stop.Output != "stopping VI_T" {
		t.Errorf("STOP notify logged err %q output %q, want exit status 3 and %q", stop.Err, stop.Output, "stopping VI_T")
	}
	if got := readFile(t, calls); got != "BACKUP\nMASTER\nSTOP\n" {
		t.Errorf("notify calls %q, want BACKUP, MASTER, STOP", got)
	}

	// The kill took the scripts' children too.
	for _, line := range strings.Fields(readFile(t, pids)) {
		pid, err := strconv.Atoi(line)
		if err != nil {
			t.Fatalf("pid file: %v", err)
		}
		if !processGone(pid, limit) {
			t.Errorf("the hanging script's child %d outlived the kill", pid)
		}
	}
}

// readFile returns the file's content, "" while it does not exist.
func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(data)
}

// processGone waits up to limit for pid to exit; a zombie, dead and
// waiting for its parent to reap it, counts as gone.
func processGone(pid int, limit time.Duration) bool {
	for start := time.Now(); time.Since(start) < limit; time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		line, _ := bufio.NewReader(f).ReadString('\n')
		f.Close()
		if strings.Contains(line, ") Z ") {
			return true
		}
	}
	return false
}

// A notify script that outlives every transition cannot hold the
// instance's stop: calls queued behind the running one are coalesced into
// the newest (the others dropped, and logged), and at the stop the running
// call gets a short wait before it is killed, then STOP runs, as bounded.
// Before, each queued call ran for the whole notify timeout in turn, and a
// stop after a few transitions took over a minute.
func TestNotifyQueueDoesNotHoldStop(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "notify.sh")
	// Every call hangs for 30 s in a child, as a slow curl would: longer
	// than the notify timeout (10 s, left as it is).
	body := fmt.Sprintf("#!/bin/sh\necho \"$3\" >> %s\nsleep 30 &\nwait\n", calls)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	limit := 10 * time.Second
	a := startInProcess(t, l.ns[0], v.config(l, 0, 150, true)+"      notify: "+script+"\n", func(*Instance) {})
	transitions := func() int {
		n := 0
		a.log.mu.Lock()
		defer a.log.mu.Unlock()
		for _, r := range a.log.records {
			if r.Msg == "transition" {
				n++
			}
		}
		return n
	}
	waitTransitions := func(want int) {
		t.Helper()
		for start := time.Now(); transitions() < want; time.Sleep(10 * time.Millisecond) {
			if time.Since(start) > limit {
				t.Fatalf("%d transitions within %v, want %d", transitions(), limit, want)
			}
		}
	}
	waitTransitions(2) // INIT -> BACKUP -> MASTER
	// Three faults and recoveries: nine more transitions, each a notify
	// call, while the first call still hangs.
	for i := range 3 {
		l.setUp(t, 0, false)
		waitTransitions(3 + 3*i)
		l.setUp(t, 0, true)
		waitTransitions(5 + 3*i)
	}
	start := time.Now()
	a.stop(t)
	took := time.Since(start)
	t.Logf("stop with a hanging notify call and %d transitions queued behind it took %v; calls run: %q",
		transitions()-1, took.Round(time.Millisecond), readFile(t, calls))
	// notifyStopWait for the running call, notifyStopTimeout for STOP, room for
	// a loaded machine; before, well over a minute.
	if took > limit {
		t.Errorf("stop took %v, want under %v", took, limit)
	}
	if _, ok := a.log.find(func(r logRecord) bool { return r.Msg == "notify call superseded before it ran; dropped" }); !ok {
		t.Errorf("no superseded notify call logged")
	}
	if _, ok := a.log.find(func(r logRecord) bool { return r.Msg == "notify script killed at stop" }); !ok {
		t.Errorf("the running notify call was not killed at stop")
	}
	got := strings.Fields(readFile(t, calls))
	if len(got) == 0 || got[len(got)-1] != "STOP" {
		t.Errorf("notify calls %q, want STOP last", got)
	}
}
