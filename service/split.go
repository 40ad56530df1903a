package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
)

// NeedsIPVS reports whether only IPVS can carry s: an IPVS-only
// scheduler. With datapath.mode auto such services go to IPVS while the
// rest, every forward kind (dr, tun, nat, fullnat), stay on eBPF.
func NeedsIPVS(s Service) bool {
	return !slices.Contains(config.BPFSchedulers(), s.Scheduler)
}

// Split is a Datapath that hands each service to one of two data paths:
// the services NeedsIPVS picks to the second, opened the first time one
// is there, and the others to the first.
type Split struct {
	First      Datapath
	OpenSecond func(context.Context) (Datapath, error)

	mu     sync.Mutex // guards second, which Report reads from elsewhere, and closed
	second Datapath   // nil until OpenSecond succeeded
	closed bool       // set by Close and Cleanup: Apply opens nothing more
}

func (s *Split) halves() []Datapath {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []Datapath{s.First, s.second}
}

// open is the halves that are open: the first, and the second once it
// is. A nil half is left out, so that no method calls through one.
func (s *Split) open() []Datapath {
	var out []Datapath
	for _, dp := range s.halves() {
		if dp != nil {
			out = append(out, dp)
		}
	}
	return out
}

// Name names both halves once the second is open.
func (s *Split) Name() string {
	var names []string
	for _, dp := range s.open() {
		names = append(names, dp.Name())
	}
	return strings.Join(names, "+")
}

// Apply gives each half its services. The second half is applied even
// when it gets none, so that services which moved back to the first
// leave it. After Close it fails with ErrClosed and opens nothing.
func (s *Split) Apply(ctx context.Context, services []Service) error {
	if s.isClosed() {
		return fmt.Errorf("split apply: %w", ErrClosed)
	}
	var parts [2][]Service
	for _, svc := range services {
		if NeedsIPVS(svc) {
			parts[1] = append(parts[1], svc)
		} else {
			parts[0] = append(parts[0], svc)
		}
	}
	var errs []error
	if len(parts[1]) > 0 {
		errs = append(errs, s.openSecond(ctx))
	}
	halves := s.halves()
	if halves[0] == nil && len(parts[0]) > 0 {
		errs = append(errs, errors.New("split apply: no data path for the services eBPF carries"))
	}
	for i, dp := range halves {
		if dp != nil {
			errs = append(errs, dp.Apply(ctx, parts[i]))
		}
	}
	return errors.Join(errs...)
}

func (s *Split) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// openSecond opens the second half unless it is open. A half that failed
// to open is not kept (an opener may hand back a non-nil interface
// holding a nil pointer with its error), so the next Apply tries again.
// The open runs without the lock, as it may wait for a kernel module; a
// Close meanwhile wins, and the half just opened is closed again.
func (s *Split) openSecond(ctx context.Context) error {
	if s.halves()[1] != nil {
		return nil
	}
	dp, err := s.OpenSecond(ctx)
	if err != nil {
		return fmt.Errorf("open the data path for NAT and IPVS-only schedulers: %w", err)
	}
	if dp == nil {
		return errors.New("open the data path for NAT and IPVS-only schedulers: the opener returned none")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.Join(fmt.Errorf("split apply: %w", ErrClosed), dp.Close())
	}
	s.second = dp
	return nil
}

// Resync is the shorter of the halves' resync intervals, as one Apply
// applies both; 0 when neither wants one.
func (s *Split) Resync() time.Duration {
	var every time.Duration
	for _, dp := range s.open() {
		if r := dp.Resync(); r > 0 && (every == 0 || r < every) {
			every = r
		}
	}
	return every
}

// Report is what both halves report, the first's services first.
func (s *Split) Report() ([]Report, error) {
	var out []Report
	var errs []error
	for _, dp := range s.open() {
		rep, err := dp.Report()
		out = append(out, rep...)
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

// Hooks are the hooks of both halves.
func (s *Split) Hooks() []string {
	var out []string
	for _, dp := range s.open() {
		out = append(out, dp.Hooks()...)
	}
	return out
}

// Counters are both halves' counters, a family both keep summed.
func (s *Split) Counters() ([]Counter, error) {
	var out []Counter
	var errs []error
	for _, dp := range s.open() {
		c, err := dp.Counters()
		out = mergeCounters(out, c)
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

// Close closes both halves; Apply then fails with ErrClosed.
func (s *Split) Close() error {
	s.markClosed()
	var errs []error
	for _, dp := range s.open() {
		errs = append(errs, dp.Close())
	}
	return errors.Join(errs...)
}

// Cleanup removes what both halves programmed, and closes them.
func (s *Split) Cleanup() error {
	s.markClosed()
	var errs []error
	for _, dp := range s.open() {
		errs = append(errs, dp.Cleanup())
	}
	return errors.Join(errs...)
}

func (s *Split) markClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}
