package daemon

import (
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
// data path.)
type workers struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	stops    []func()
	running  map[string]int // by name, the workers that have not returned
	stopping bool           // stop has begun: nothing more starts
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
	stops := slices.Clone(w.stops)
	w.mu.Unlock()
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
// changed, as the worker name. Stopping it closes the server and its
// listener (a unix socket's file goes with it), and Serve returns at once.
func (d *Daemon) serve(w *workers, name string, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	w.Go(name, func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("server stopped", "server", name, "err", err)
		}
	}, func() { _ = srv.Close() })
}
