package daemon

import (
	"fmt"
	"strings"
	"time"

	"github.com/halb-lb/halb/config"
)

// reader reads the config file for a reload on a goroutine of its own: a
// read that blocks (a file on a hung network mount) must stall neither a
// SIGTERM nor the health-driven re-apply on the daemon's loop. One read
// at a time: SIGHUPs during a read make one more read after it, however
// many they are. A read that outlives readTimeout is given up; its
// result, if it ever comes, is dropped, and no new read starts until it
// has returned, so that blocked reads never pile up.
type reader struct {
	load    func(string) (*config.Config, []config.Problem, error)
	path    string
	results chan loadResult
	done    chan struct{} // closed when no read is in flight

	began     time.Time
	timer     *time.Timer // nil when no read is in flight
	abandoned bool        // the read in flight passed readTimeout
	pending   bool        // a SIGHUP came during the read
}

type loadResult struct {
	cfg      *config.Config
	warnings []config.Problem
	err      error
}

func newReader(load func(string) (*config.Config, []config.Problem, error), path string) *reader {
	done := make(chan struct{})
	close(done)
	return &reader{load: load, path: path, results: make(chan loadResult, 1), done: done}
}

func (r *reader) busy() bool { return r.timer != nil }

func (r *reader) start() {
	r.began = time.Now()
	r.timer = time.NewTimer(readTimeout)
	r.abandoned = false
	done := make(chan struct{})
	r.done = done
	go func() {
		defer close(done)
		cfg, warnings, err := r.load(r.path)
		r.results <- loadResult{cfg, warnings, err} // room for one, and one read at a time
	}()
}

// timeout fires when the read in flight has taken readTimeout; nil (never)
// otherwise.
func (r *reader) timeout() <-chan time.Time {
	if r.timer == nil || r.abandoned {
		return nil
	}
	return r.timer.C
}

func (r *reader) abandon() { r.abandoned = true }

// finish ends the read whose result came and reports whether to use it.
func (r *reader) finish() bool {
	r.timer.Stop()
	r.timer = nil
	return !r.abandoned
}

// idle is closed when no read is in flight.
func (r *reader) idle() <-chan struct{} { return r.done }

// restartKeys are the keys the running daemon does not apply again: the
// logger's handler, the sockets it listens on, and the data path it opened
// (its mode, interfaces, hooks, pins and map sizes are fixed when it
// loads). Every other key is applied by a reload. TestRestartKeys holds
// this list to the Log, Control and Datapath structs.
var restartKeys = []struct {
	key   string
	value func(*config.Config) string
}{
	{"log.format", func(c *config.Config) string { return c.Log.Format }},
	{"control.socket", func(c *config.Config) string { return c.Control.Socket }},
	{"control.metrics", func(c *config.Config) string { return c.Control.Metrics }},
	{"datapath.mode", func(c *config.Config) string { return c.Datapath.Mode }},
	{"datapath.interfaces", func(c *config.Config) string { return "[" + strings.Join(c.Datapath.Interfaces, ", ") + "]" }},
	{"datapath.xdp_mode", func(c *config.Config) string { return c.Datapath.XDPMode }},
	{"datapath.bpffs", func(c *config.Config) string { return c.Datapath.BPFFS }},
	{"datapath.conntrack_entries", func(c *config.Config) string { return fmt.Sprint(c.Datapath.ConntrackEntries) }},
	{"datapath.maglev_table_size", func(c *config.Config) string { return fmt.Sprint(c.Datapath.MaglevTableSize) }},
	{"datapath.max_backends", func(c *config.Config) string { return fmt.Sprint(c.Datapath.MaxBackends) }},
	{"datapath.snat_ports", func(c *config.Config) string { return c.Datapath.SNATPorts }},
}

// warnRestartKeys logs, one line per key, each key of restartKeys that cfg
// sets otherwise than the running daemon has it.
func (d *Daemon) warnRestartKeys(cfg *config.Config) {
	for _, k := range restartKeys {
		running, configured := k.value(d.boot), k.value(cfg)
		if running != configured {
			d.log.Warn("changes at the next restart", "key", k.key, "running", running, "configured", configured)
		}
	}
}
