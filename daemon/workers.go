package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// workers are the goroutines one Run starts beside its loop: the control
// and metrics servers and the health monitor. Run is their owner: on its
// way out it tells each to stop and waits for them all, at most for a
// bound, so that nothing stuck can hold a SIGTERM for ever, and names any
// it leaves behind. (The VRRP instances have their owner in vrrpSet, the
// config reads theirs in reader, the data path's goroutines theirs in the
// data path.) Run stops them before it closes the data path, which the
// servers' handlers read.
type workers struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	stops    []func()
	running  map[string]int // by name, the workers that have not returned
	stopping bool           // stop has begun: nothing more starts
	late     context.Context
	giveUp   context.CancelFunc // ends late, once stop no longer waits
}

// overdue is done once stop has given up waiting: a worker still winding
// down (a server waiting for its handlers) then cuts what is left.
func (w *workers) overdue() context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.init()
	return w.late
}

// init makes late; the caller holds mu.
func (w *workers) init() {
	if w.late == nil {
		w.late, w.giveUp = context.WithCancel(context.Background())
	}
}

// Go starts fn as the worker name; stop tells it to return, without
// waiting for it.
func (w *workers) Go(name string, fn func(), stop func()) {
	if !w.enter(name) {
		stop()
		return
	}
	w.mu.Lock()
	w.stops = append(w.stops, stop)
	w.mu.Unlock()
	go func() {
		defer w.returned(name)
		fn()
	}()
}

// enter counts one more worker name, unless stop has begun. Counting
// under the lock that stop takes first keeps every wg.Add before
// stop's wg.Wait.
func (w *workers) enter(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return false
	}
	if w.running == nil {
		w.running = map[string]int{}
	}
	w.running[name]++
	w.wg.Add(1)
	return true
}

func (w *workers) returned(name string) {
	w.mu.Lock()
	if w.running[name]--; w.running[name] == 0 {
		delete(w.running, name)
	}
	w.mu.Unlock()
	w.wg.Done()
}

// stop tells every worker to stop, the last started first, and waits for
// them all, at most for bound. It returns the names of those still
// running then, sorted.
func (w *workers) stop(bound time.Duration) []string {
	w.mu.Lock()
	w.stopping = true
	w.init()
	stops := slices.Clone(w.stops)
	w.mu.Unlock()
	defer w.giveUp() // after left is counted: those still running are left
	for _, stop := range slices.Backward(stops) {
		stop()
	}
	all := make(chan struct{})
	go func() { w.wg.Wait(); close(all) }()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-all:
		return nil
	case <-t.C:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var left []string
	for name := range w.running {
		left = append(left, name)
	}
	slices.Sort(left)
	return left
}

// serve serves h on ln, a listener made at start before anything visible
// changed, as the worker name. Stopping it closes its listener (a unix
// socket's file goes with it) and lets the requests in flight finish, so
// that none reads a data path Run has closed; those still running when
// stop gives up are cut, and the worker is named as left behind.
func (d *Daemon) serve(w *workers, name string, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ConnContext: withConn}
	quit := make(chan struct{})
	overdue := w.overdue()
	w.Go(name, func() {
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		select {
		case err := <-served: // failed on its own
			d.logServed(name, err)
			return
		case <-quit:
		}
		if err := srv.Shutdown(overdue); err != nil {
			_ = srv.Close()
		}
		d.logServed(name, <-served)
	}, func() { close(quit) })
}

// logServed logs why a server stopped, unless it was told to.
func (d *Daemon) logServed(name string, err error) {
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		d.log.Error("server stopped", "server", name, "err", err)
	}
}
