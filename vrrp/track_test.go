package vrrp

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halb-lb/halb/config"
)

func TestParseTrackNumber(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		err  error
	}{
		{"5", 5, nil},
		{" -12\n", -12, nil},
		{"+3\r\n", 3, nil},
		{"0", 0, nil},
		{"2147483647", 2147483647, nil},
		{"-2147483648", -2147483648, nil},
		{"2147483648", 0, errTrackTooBig},
		{"-99999999999999999999", 0, errTrackTooBig},
		{"", 0, errTrackEmpty},
		{" \n\t", 0, errTrackEmpty},
		{"abc", 0, errTrackNotInt},
		{"5 6", 0, errTrackNotInt},
		{"0x10", 0, errTrackNotInt}, // decimal only
		{"1.5", 0, errTrackNotInt},
		{"5\x00", 0, errTrackNotInt},
		{strings.Repeat(" ", maxTrackFileSize) + "1", 0, errTrackTooLong},
		{strings.Repeat(" ", maxTrackFileSize-1) + "1", 1, nil},
	} {
		n, err := parseTrackNumber([]byte(c.in))
		if n != c.want || !errors.Is(err, c.err) {
			t.Errorf("parseTrackNumber(%q) = %d, %v; want %d, %v", c.in, n, err, c.want, c.err)
		}
	}
}

// A track file's readings, one after another: no file is 0, a reading
// that is not a number keeps the value, each change is reported once.
func TestFileStateUpdate(t *testing.T) {
	var s fileState
	missing := fileReading{err: &fs.PathError{Op: "open", Path: "/run/w", Err: fs.ErrNotExist}}
	for i, step := range []struct {
		r       fileReading
		value   int64
		problem string
		changed bool
	}{
		{fileReading{data: []byte("0\n")}, 0, "", false},
		{fileReading{data: []byte("7\n")}, 7, "", true},
		{fileReading{data: []byte("7\n")}, 7, "", false},
		{fileReading{data: []byte("seven")}, 7, "not an integer", true},
		{fileReading{data: []byte("seven")}, 7, "not an integer", false},
		{fileReading{data: []byte("")}, 7, "empty (taken as a write in progress)", true},
		{fileReading{err: errors.New("/run/w is not a regular file")}, 7, "/run/w is not a regular file", true},
		{fileReading{data: []byte("9999999999")}, 7, "outside -2147483648..2147483647", true},
		{fileReading{data: []byte("-3")}, -3, "", true},
		{missing, 0, "missing (counts as 0)", true},
		{missing, 0, "missing (counts as 0)", false},
		{fileReading{data: []byte("0")}, 0, "", true},
	} {
		changed := s.update(step.r)
		if s.value != step.value || s.problem != step.problem || changed != step.changed {
			t.Errorf("step %d: value %d problem %q changed %v; want %d %q %v", i, s.value, s.problem, changed, step.value, step.problem, step.changed)
		}
	}
}

func TestFileEffect(t *testing.T) {
	for _, c := range []struct {
		n     int64
		w     int
		delta int
		fault bool
	}{
		{0, 0, 0, false},
		{1, 0, 0, true},
		{-1, 0, 0, true},
		{3, 1, 3, false},
		{3, -10, -30, false},
		{-253, 1, -253, false},
		{-254, 1, 0, true}, // keepalived: below -253 is FAULT
		{-127, 2, 0, true},
		{1000, 1, 254, false},
		{2147483647, 254, 254, false},
		{-2147483648, 254, 0, true},
		{-2147483648, -254, 254, false},
	} {
		delta, fault := fileEffect(c.n, c.w)
		if delta != c.delta || fault != c.fault {
			t.Errorf("fileEffect(%d, %d) = %d, %v; want %d, %v", c.n, c.w, delta, fault, c.delta, c.fault)
		}
	}
}

// A tracked process's counts: the first decides at once; a drop counts
// only after delay, a recovery at once, and a short drop not at all.
func TestProcStateUpdate(t *testing.T) {
	tp := config.TrackProcess{Name: "haproxy", MinCount: 2, Delay: 3 * time.Second}
	var s procState
	for i, step := range []struct {
		at      time.Duration
		count   int
		ok      bool
		changed bool
	}{
		{0, 0, false, true}, // the first count decides, no delay
		{time.Second, 2, true, true},
		{2 * time.Second, 1, true, false}, // too few, for less than delay
		{4 * time.Second, 1, true, false},
		{5 * time.Second, 3, true, false}, // back before delay: never failed
		{6 * time.Second, 0, true, false},
		{9 * time.Second, 0, false, true}, // delay over
		{10 * time.Second, 0, false, false},
		{11 * time.Second, 2, true, true},
	} {
		changed := s.update(tp, step.count, t0.Add(step.at))
		if s.ok != step.ok || changed != step.changed || s.count != step.count {
			t.Errorf("step %d (%v, %d running): ok %v changed %v; want %v %v", i, step.at, step.count, s.ok, changed, step.ok, step.changed)
		}
	}
	// Without a delay the drop counts at the first count that shows it.
	s = procState{}
	tp.Delay = 0
	s.update(tp, 2, t0)
	if !s.update(tp, 1, t0.Add(time.Second)) || s.ok {
		t.Errorf("delay 0: a drop did not fail at once: %+v", s)
	}
}

func TestProcessMatches(t *testing.T) {
	long := "haproxy-with-a-long-name" // more than comm's 15 bytes
	for _, c := range []struct {
		tp      config.TrackProcess
		comm    string
		argv    []string
		want    bool
		cmdline bool // cmdline was read
	}{
		{config.TrackProcess{Name: "haproxy"}, "haproxy", nil, true, false},
		{config.TrackProcess{Name: "haproxy"}, "haproxy2", nil, false, false},
		{config.TrackProcess{Name: "haproxy"}, "hapr", nil, false, false},
		{config.TrackProcess{Name: "haproxy", Args: []string{"-f", "/etc/h.cfg"}}, "haproxy", []string{"/usr/sbin/haproxy", "-f", "/etc/h.cfg"}, true, true},
		{config.TrackProcess{Name: "haproxy", Args: []string{"-f", "/etc/h.cfg"}}, "haproxy", []string{"/usr/sbin/haproxy", "-f", "/etc/other.cfg"}, false, true},
		{config.TrackProcess{Name: "haproxy", Args: []string{"-f"}}, "haproxy", []string{"/usr/sbin/haproxy", "-f", "/etc/h.cfg"}, false, true},
		{config.TrackProcess{Name: "haproxy", Args: []string{"a b"}}, "haproxy", []string{"haproxy", "a", "b"}, false, true},
		// args: [] means no arguments at all.
		{config.TrackProcess{Name: "haproxy", Args: []string{}}, "haproxy", []string{"haproxy"}, true, true},
		{config.TrackProcess{Name: "haproxy", Args: []string{}}, "haproxy", []string{"haproxy", "-d"}, false, true},
		{config.TrackProcess{Name: long}, long[:15], []string{"/opt/bin/" + long, "x"}, true, true},
		{config.TrackProcess{Name: long}, long[:15], []string{"/opt/bin/" + long[:15] + "-other"}, false, true},
		{config.TrackProcess{Name: long}, long[:15], []string{}, false, true}, // a kernel thread
		{config.TrackProcess{Name: long}, "haproxy", nil, false, false},
	} {
		read := false
		got := processMatches(c.tp, c.comm, func() []string { read = true; return c.argv })
		if got != c.want || read != c.cmdline {
			t.Errorf("processMatches(%+v, %q, %q) = %v (cmdline read %v), want %v (%v)", c.tp, c.comm, c.argv, got, read, c.want, c.cmdline)
		}
	}
}

// fakeHost is a trackHost whose files and counts a test sets.
type fakeHost struct {
	mu     sync.Mutex
	files  map[string]string // absent: no such file
	counts map[string]int
	err    error // of countProcesses
}

func (h *fakeHost) set(f func(h *fakeHost)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func (h *fakeHost) readTrackFile(path string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.files[path]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

func (h *fakeHost) countProcesses(ps []config.TrackProcess) ([]int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return nil, h.err
	}
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = h.counts[p.Name]
	}
	return out, nil
}

// track_files and track_processes move the priority and the faults as
// keepalived's do, through the instance's own look at its readings; a
// Master advertises each new priority.
func TestHostTrackingPriority(t *testing.T) {
	cfg := baseConfig()
	cfg.TrackFiles = []config.TrackFile{{Path: "/run/w", Weight: 2}, {Path: "/run/maint", Weight: 0}}
	cfg.TrackProcesses = []config.TrackProcess{
		{Name: "haproxy", MinCount: 2, Weight: -30, Delay: 2 * time.Second},
		{Name: "bird", MinCount: 1, Weight: 0},
		{Name: "bonus", MinCount: 1, Weight: 5},
	}
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	if d.m.Priority() != 100 {
		t.Fatalf("priority %d before any reading, want 100", d.m.Priority())
	}
	if got := d.Status().Tracking; len(got) != 5 || got[2] != "process haproxy: not counted yet (weight -30)" {
		t.Errorf("status tracking before any reading: %q", got)
	}
	host := &fakeHost{files: map[string]string{}, counts: map[string]int{"haproxy": 2, "bird": 1}}
	steps := []struct {
		what  string
		set   func(h *fakeHost)
		after time.Duration
		prio  uint8
		fault string
	}{
		{"first reading: no files, enough processes, no bonus", nil, 0, 100, ""},
		{"w holds 5 (× 2)", func(h *fakeHost) { h.files["/run/w"] = "5\n" }, 0, 110, ""},
		{"bonus runs (+5)", func(h *fakeHost) { h.counts["bonus"] = 1 }, 0, 115, ""},
		{"w holds -20", func(h *fakeHost) { h.files["/run/w"] = "-20" }, 0, 65, ""},
		{"w garbled: the value stays", func(h *fakeHost) { h.files["/run/w"] = "x" }, 0, 65, ""},
		{"w still garbled", nil, 0, 65, ""},
		{"haproxy down to 1: within its delay", func(h *fakeHost) { h.counts["haproxy"] = 1 }, time.Second, 65, ""},
		{"haproxy still 1 after its delay (-30)", nil, 2 * time.Second, 35, ""},
		{"w removed (0)", func(h *fakeHost) { delete(h.files, "/run/w") }, 0, 75, ""},
		{"maint holds 1 (weight 0)", func(h *fakeHost) { h.files["/run/maint"] = "1" }, 0, 75, "track file /run/maint not 0"},
		{"maint 0", func(h *fakeHost) { h.files["/run/maint"] = "0" }, 0, 75, ""},
		{"bird gone (weight 0)", func(h *fakeHost) { h.counts["bird"] = 0 }, 0, 75, "track process bird: fewer than 1 running"},
		{"/proc unreadable: the counts stay", func(h *fakeHost) { h.err = errors.New("no /proc") }, 0, 75, "track process bird: fewer than 1 running"},
		{"/proc still unreadable", nil, 0, 75, "track process bird: fewer than 1 running"},
		{"bird back, haproxy 2", func(h *fakeHost) { h.err = nil; h.counts["bird"], h.counts["haproxy"] = 1, 2 }, 0, 105, ""},
		{"w -254: below -253 faults", func(h *fakeHost) { h.files["/run/w"] = "-127" }, 0, 105, "track file /run/w: value × weight below -253"},
	}
	for _, s := range steps {
		if s.set != nil {
			host.set(s.set)
		}
		now = now.Add(s.after)
		before := len(f.sentAdverts())
		d.trackReading(now, readTrackers(host, cfg.TrackFiles, cfg.TrackProcesses))
		if d.m.Priority() != s.prio || d.Status().Priority != s.prio {
			t.Errorf("%s: priority %d (status %d), want %d", s.what, d.m.Priority(), d.Status().Priority, s.prio)
		}
		faults := d.Status().Faults
		if (s.fault == "") != (len(faults) == 0) || (s.fault != "" && !slices.Contains(faults, s.fault)) {
			t.Errorf("%s: faults %q, want %q", s.what, faults, s.fault)
		}
		if s.fault == "" && d.m.State() == Fault {
			t.Errorf("%s: FAULT with no fault", s.what)
		}
		if a := f.sentAdverts()[before:]; d.m.State() == Master && slices.ContainsFunc(a, func(a sentAdvert) bool { return a.priority != s.prio }) {
			t.Errorf("%s: sent %+v, want priority %d", s.what, a, s.prio)
		}
	}
	want := []string{
		"file /run/w holds -127 (weight 2)", "file /run/maint holds 0 (weight 0)",
		"process haproxy: 2 running, min_count 2 (weight -30)", "process bird: 1 running, min_count 1 (weight 0)",
		"process bonus: 1 running, min_count 1 (weight 5)",
	}
	if got := d.Status().Tracking; !slices.Equal(got, want) {
		t.Errorf("status tracking:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Each change is logged once: "x" read twice, /proc failing twice,
	// three processes short (bonus at first, haproxy, bird).
	for want, times := range map[string]int{"problem=\"not an integer\"": 1, "cannot count the tracked processes": 1, "track process not running": 3} {
		if n := strings.Count(d.log.String(), want); n != times {
			t.Errorf("%q logged %d times, want %d", want, n, times)
		}
	}
}

// The poller reads at once, then every trackPoll, and ends with its
// context; a slow host stretches its period instead of taking a core.
func TestPollTrackers(t *testing.T) {
	host := &fakeHost{files: map[string]string{"/run/w": "3"}, counts: map[string]int{}}
	out := make(chan trackReading)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		pollTrackers(ctx, host, []config.TrackFile{{Path: "/run/w", Weight: 1}}, []config.TrackProcess{{Name: "x", MinCount: 1}}, out)
	}()
	r := <-out
	if len(r.files) != 1 || string(r.files[0].data) != "3" || len(r.counts) != 1 || r.counts[0] != 0 {
		t.Errorf("first reading %+v", r)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the poller did not end with its context")
	}
}
