package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/service"
)

// heldDatapath is a data path whose Report, once held, blocks until it is
// released, as a slow kernel dump would, and which records when a held
// Report returned and when it was closed. (The metrics registry reads it
// at start too, unheld.)
type heldDatapath struct {
	nopDatapath
	held      atomic.Bool
	reporting chan struct{} // a Report has begun
	release   chan struct{}
	mu        sync.Mutex
	events    []string
}

func newHeldDatapath() *heldDatapath {
	return &heldDatapath{reporting: make(chan struct{}, 1), release: make(chan struct{})}
}

func (h *heldDatapath) Report() ([]service.Report, error) {
	if !h.held.Load() {
		return nil, nil
	}
	select {
	case h.reporting <- struct{}{}:
	default:
	}
	<-h.release
	h.record("report returned")
	return nil, nil
}

func (h *heldDatapath) Close() error { h.record("closed"); return nil }

func (h *heldDatapath) record(e string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, e)
}

func (h *heldDatapath) recorded() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// controlClient reaches the control socket sock as http://halb/ and
// anything else over TCP, one connection per request.
func controlClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			var dialer net.Dialer
			if addr == "halb:80" {
				return dialer.DialContext(ctx, "unix", sock)
			}
			return dialer.DialContext(ctx, "tcp", addr)
		},
	}}
}

// A status request or a scrape in flight when the daemon is told to stop
// (SIGTERM or its context) completes, and the data path it reads is
// closed only after its handler returned; a handler that never returns is
// given up on at the shutdown bound, by name, and the data path is closed
// then.
func TestShutdownWaitsForHandlersBeforeClosingDatapath(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		byCtx     bool // stop by cancelling Run's context, not SIGTERM
		stuck     bool // the handler never returns while Run runs
		server    string
	}{
		{name: "status then SIGTERM", url: "http://halb/v1/status", server: "control socket"},
		{name: "scrape then cancel", url: "/metrics", byCtx: true, server: "metrics"},
		{name: "stuck status", url: "http://halb/v1/status", stuck: true, server: "control socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, path, _ := newTestDaemon(t)
			var logs halbtest.Log
			d.log = NewLogger(&logs, "text", &d.level)
			sock := filepath.Join(filepath.Dir(path), "halb.sock")
			metrics := halbtest.FreeAddr(t)
			cfg := goodConfig + "control: {socket: " + sock + ", metrics: \"" + metrics + "\"}\n"
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := d.Reload(); err != nil { // as New would have read it
				t.Fatal(err)
			}
			d.boot = d.cfg
			dp := newHeldDatapath()
			var sdp service.Datapath = dp
			d.dp = dp
			d.datapath.Store(&sdp)
			released := sync.OnceFunc(func() { close(dp.release) })
			t.Cleanup(released)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stop, reload := make(chan os.Signal, 1), make(chan os.Signal, 1)
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx, stop, reload) }()

			waitLogged(t, &logs, `msg="services programmed"`)
			dp.held.Store(true)
			url := tc.url
			if !strings.HasPrefix(url, "http://halb/") {
				url = "http://" + metrics + url
			}
			client := controlClient(sock)
			// The request's goroutine ends with the subtest: the stuck
			// one's request fails once Run gives up on it, and its
			// retries must not run on into the next test, whose
			// goroutine count they would spoil.
			reqCtx, stopRequests := context.WithCancel(context.Background())
			answered, requested := make(chan error, 1), make(chan struct{})
			defer func() { stopRequests(); <-requested }()
			go func() {
				defer close(requested)
				var resp *http.Response
				var err error
				for start := time.Now(); time.Since(start) < 10*time.Second && reqCtx.Err() == nil; time.Sleep(10 * time.Millisecond) {
					req, _ := http.NewRequestWithContext(reqCtx, http.MethodGet, url, nil)
					if resp, err = client.Do(req); err == nil {
						break
					}
				}
				if err != nil {
					answered <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("%s: %s", url, resp.Status)
				}
				answered <- err
			}()
			select {
			case <-dp.reporting:
			case err := <-answered:
				t.Fatalf("%s answered (%v) before its handler read the data path", url, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no Report within 10s:\n%s", url, logs.String())
			}

			if tc.byCtx {
				cancel()
			} else {
				stop <- syscall.SIGTERM
			}
			waitRefused(t, client, url, &logs)
			if e := dp.recorded(); len(e) > 0 {
				t.Fatalf("with the handler in flight and the server shut: %v, want nothing yet", e)
			}
			if !tc.stuck {
				released()
				if err := <-answered; err != nil {
					t.Errorf("the request in flight at shutdown: %v", err)
				}
			}
			runReturns(t, done, 20*time.Second, "of the stop", &logs)
			want := []string{"report returned", "closed"}
			if tc.stuck {
				want = []string{"closed"}
			}
			if e := dp.recorded(); !slices.Equal(e, want) {
				t.Errorf("data path saw %v, want %v", e, want)
			}
			left := `msg="did not stop in time; exiting without it" what="` + tc.server + `"`
			if got := strings.Contains(logs.String(), left); got != tc.stuck {
				t.Errorf("%q logged: %v, want %v:\n%s", left, got, tc.stuck, logs.String())
			}
		})
	}
}

// waitRefused waits until the server behind url takes no new request:
// shutdown has begun with the request in flight.
func waitRefused(t *testing.T, client *http.Client, url string, logs *halbtest.Log) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodHead, url+"-not-there", nil)
		resp, err := client.Do(req)
		cancel()
		if err != nil {
			return
		}
		resp.Body.Close()
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s still served 10s after the stop:\n%s", url, logs.String())
		}
	}
}

// waitLogged waits until logs hold what, at most 10s.
func waitLogged(t *testing.T, logs *halbtest.Log, what string) {
	t.Helper()
	for start := time.Now(); !strings.Contains(logs.String(), what); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no %q logged within 10s:\n%s", what, logs.String())
		}
	}
}

// runReturns waits for Run's result on done, at most for bound, after
// what (for the failure's message), and fails t unless it is nil.
func runReturns(t *testing.T, done <-chan error, bound time.Duration, after string, logs *halbtest.Log) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(bound):
		t.Fatalf("Run did not return within %s %s:\n%s", bound, after, logs.String())
	}
}
