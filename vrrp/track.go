package vrrp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// track_files and track_processes (keepalived's track_file and
// track_process): what a reading of the host does to the priority or the
// faults. The readings come from a poller on a goroutine of Run's
// (pollTrackers), so that a slow /proc or a file on a stuck mount never
// holds an advert; the host is read through trackHost (track_linux.go),
// and everything here is pure, table-tested over a fake.
//
// Polling, not inotify: inotify says nothing of files under /proc or
// /sys, of a file written on another NFS client, or of the target of a
// symlink in another directory, while a read a second costs microseconds.
// And /proc has no change events at all but the netlink proc connector,
// which needs CAP_NET_ADMIN and loses events under load.

// trackPoll is how often the trackers are read; a scan of /proc that takes
// longer than trackPoll/trackPollShare stretches it, so that scanning
// never takes more than 1/trackPollShare of a core however many processes
// there are.
const (
	trackPoll      = time.Second
	trackPollShare = 20
)

// maxTrackFileSize is what a track file may hold: an integer and
// whitespace. A longer file is refused, not read on.
const maxTrackFileSize = 64

// trackHost reads what track_files and track_processes watch.
type trackHost interface {
	// readTrackFile returns the content of a track file, at most
	// maxTrackFileSize+1 bytes, without blocking on a FIFO or device: an
	// error wrapping fs.ErrNotExist when there is no file.
	readTrackFile(path string) ([]byte, error)
	// countProcesses counts, for each of ps, the processes that match
	// it (processMatches).
	countProcesses(ps []config.TrackProcess) ([]int, error)
}

// trackReading is one poll of every track file and tracked process.
type trackReading struct {
	files  []fileReading
	counts []int // nil when /proc could not be read
	err    error // why counts is nil
}

type fileReading struct {
	data []byte
	err  error
}

// Why a track file's content is not taken: the previous value stays.
var (
	errTrackEmpty   = errors.New("empty (taken as a write in progress)")
	errTrackNotInt  = errors.New("not an integer")
	errTrackTooBig  = errors.New("outside -2147483648..2147483647")
	errTrackTooLong = fmt.Errorf("longer than %d bytes", maxTrackFileSize)
)

// parseTrackNumber reads a track file's integer, in decimal, with
// whitespace around it, within keepalived's 32-bit range.
func parseTrackNumber(b []byte) (int64, error) {
	if len(b) > maxTrackFileSize {
		return 0, errTrackTooLong
	}
	s := string(bytes.TrimSpace(b))
	if s == "" {
		return 0, errTrackEmpty
	}
	n, err := strconv.ParseInt(s, 10, 32)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return 0, errTrackTooBig
	case err != nil:
		return 0, errTrackNotInt
	}
	return n, nil
}

// fileState follows one track file.
type fileState struct {
	value   int64
	problem string // why the last reading was not taken; "" when it was
}

// update takes one reading, as keepalived does: no file is 0; a file
// that cannot be read or holds no integer leaves the value as it was (0
// at start), the problem reported once. It reports whether the value or
// the problem changed.
func (s *fileState) update(r fileReading) (changed bool) {
	n, problem := s.value, ""
	switch {
	case errors.Is(r.err, fs.ErrNotExist):
		n, problem = 0, "missing (counts as 0)"
	case r.err != nil:
		problem = r.err.Error()
	default:
		if v, err := parseTrackNumber(r.data); err != nil {
			problem = err.Error()
		} else {
			n = v
		}
	}
	changed = n != s.value || problem != s.problem
	s.value, s.problem = n, problem
	return changed
}

// fileEffect is what a track file holding n does with weight w
// (keepalived's rule): weight 0 faults on any n but 0; otherwise n × w
// is added to the priority, and a result below -253, which no priority
// survives, faults the instance.
func fileEffect(n int64, w int) (delta int, fault bool) {
	if w == 0 {
		return 0, n != 0
	}
	p := n * int64(w) // |n| < 2^31, |w| <= 254: no overflow
	if p < -253 {
		return 0, true
	}
	return int(min(p, 254)), false
}

// procState follows one tracked process.
type procState struct {
	known    bool // a count has been read
	ok       bool // enough processes, as far as the instance is concerned
	count    int
	lowSince time.Time // when the count fell below min_count; zero while ok or enough
}

// update takes one count. The first decides at once; after that, too
// few processes for delay (keepalived's terminate delay: a restart is not
// a failure) makes it fail, and enough makes it good again at once. It
// reports whether it changed.
func (s *procState) update(tp config.TrackProcess, count int, now time.Time) bool {
	s.count = count
	enough := count >= tp.MinCount
	if !s.known {
		s.known, s.ok = true, enough
		return true
	}
	if enough {
		s.lowSince = time.Time{}
		if !s.ok {
			s.ok = true
			return true
		}
		return false
	}
	if !s.ok {
		return false
	}
	if s.lowSince.IsZero() {
		s.lowSince = now
	}
	if now.Sub(s.lowSince) >= tp.Delay {
		s.ok = false
		return true
	}
	return false
}

// processMatches says whether a process with kernel name comm (the
// 15-byte /proc/PID/comm) matches tp. cmdline, its NUL-separated argv, is
// only asked for when needed (needsCmdline): a name longer than comm
// holds must be argv[0]'s base name, and args, when given, must be the
// rest of argv exactly. halb trusts these names as keepalived does: any
// local user can start a process called haproxy.
func processMatches(tp config.TrackProcess, comm string, cmdline func() []string) bool {
	if comm != commOf(tp.Name) {
		return false
	}
	if !needsCmdline(tp) {
		return true
	}
	argv := cmdline()
	if len(argv) == 0 {
		return false // a kernel thread, or a process gone
	}
	if len(tp.Name) > len(comm) && path.Base(argv[0]) != tp.Name {
		return false
	}
	if tp.Args == nil {
		return true
	}
	return len(argv)-1 == len(tp.Args) && strings.Join(argv[1:], "\x00") == strings.Join(tp.Args, "\x00")
}

// maxComm is what /proc/PID/comm keeps of a name: TASK_COMM_LEN less the
// NUL.
const maxComm = 15

func commOf(name string) string {
	if len(name) > maxComm {
		return name[:maxComm]
	}
	return name
}

// needsCmdline: comm alone decides unless the name is longer than comm
// holds or args are given. Reading cmdline only then keeps a scan cheap,
// and out of the way of processes whose memory lock is held: reading
// their cmdline waits for it, comm never does.
func needsCmdline(tp config.TrackProcess) bool {
	return len(tp.Name) > maxComm || tp.Args != nil
}

// pollTrackers reads the track files and counts the processes every
// trackPoll (longer when a scan is slow) until ctx ends, and sends each
// reading to the Run loop.
func pollTrackers(ctx context.Context, host trackHost, files []config.TrackFile, procs []config.TrackProcess, out chan<- trackReading) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		r := readTrackers(host, files, procs)
		took := time.Since(start)
		select {
		case out <- r:
		case <-ctx.Done():
			return
		}
		t.Reset(max(trackPoll, took*trackPollShare))
	}
}

func readTrackers(host trackHost, files []config.TrackFile, procs []config.TrackProcess) trackReading {
	var r trackReading
	for _, tf := range files {
		data, err := host.readTrackFile(tf.Path)
		r.files = append(r.files, fileReading{data: data, err: err})
	}
	if len(procs) > 0 {
		r.counts, r.err = host.countProcesses(procs)
	}
	return r
}

// hostTracking adds the faults of track_files and track_processes to
// faults and returns what they add to the priority, and each one's state
// for Status; a process not yet counted does neither.
func (in *Instance) hostTracking(faults map[string]bool) (delta int, tracked []string) {
	for i, tf := range in.cfg.TrackFiles {
		s := in.files[i]
		d, fault := fileEffect(s.value, tf.Weight)
		switch {
		case fault && tf.Weight == 0:
			faults["track file "+tf.Path+" not 0"] = true
		case fault:
			faults["track file "+tf.Path+": value × weight below -253"] = true
		}
		delta += d
		line := fmt.Sprintf("file %s holds %d (weight %d)", tf.Path, s.value, tf.Weight)
		if s.problem != "" {
			line += ": " + s.problem
		}
		tracked = append(tracked, line)
	}
	for i, tp := range in.cfg.TrackProcesses {
		s := in.procs[i]
		switch {
		case !s.known:
		case tp.Weight == 0 && !s.ok:
			faults[fmt.Sprintf("track process %s: fewer than %d running", tp.Name, tp.MinCount)] = true
		case tp.Weight < 0 && !s.ok, tp.Weight > 0 && s.ok:
			delta += tp.Weight
		}
		line := fmt.Sprintf("process %s: %d running, min_count %d (weight %d)", tp.Name, s.count, tp.MinCount, tp.Weight)
		if !s.known {
			line = fmt.Sprintf("process %s: not counted yet (weight %d)", tp.Name, tp.Weight)
		}
		tracked = append(tracked, line)
	}
	return delta, tracked
}

// startTrackers polls the track files and processes on a goroutine Run
// waits for, when the instance has any.
func (in *Instance) startTrackers() {
	if len(in.cfg.TrackFiles)+len(in.cfg.TrackProcesses) == 0 {
		return
	}
	ctx := in.ctx
	in.loops.Go(func() { pollTrackers(ctx, in.host, in.cfg.TrackFiles, in.cfg.TrackProcesses, in.trackReadings) })
}

// trackReading takes one poll, logs what changed and looks afresh when
// anything did.
func (in *Instance) trackReading(now time.Time, r trackReading) {
	changed := false
	for i, fr := range r.files {
		tf, s := in.cfg.TrackFiles[i], &in.files[i]
		if !s.update(fr) {
			continue
		}
		changed = true
		switch {
		case errors.Is(fr.err, fs.ErrNotExist):
			in.log.Info("track file missing; it counts as 0", "path", tf.Path)
		case s.problem != "":
			in.log.Warn("track file not read as a number", "path", tf.Path, "problem", s.problem, "value", s.value)
		default:
			in.log.Info("track file read", "path", tf.Path, "value", s.value, "weight", tf.Weight)
		}
	}
	switch {
	case r.err != nil:
		// The counts stay as they were: /proc is halb's own view, and
		// failing to read it says nothing of the processes.
		if msg := r.err.Error(); msg != in.procErr {
			in.log.Warn("cannot count the tracked processes", "err", r.err)
			in.procErr = msg
		}
	default:
		in.procErr = ""
		for i, n := range r.counts {
			tp, s := in.cfg.TrackProcesses[i], &in.procs[i]
			if !s.update(tp, n, now) {
				continue
			}
			changed = true
			if s.ok {
				in.log.Info("track process running", "name", tp.Name, "count", n, "min_count", tp.MinCount)
			} else {
				in.log.Warn("track process not running", "name", tp.Name, "count", n, "min_count", tp.MinCount, "delay", tp.Delay)
			}
		}
	}
	if changed {
		in.evaluate(now)
	}
}
