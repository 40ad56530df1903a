package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/halb-lb/halb/config"
)

// NeedsIPVS reports whether only IPVS can carry s: NAT, or an IPVS-only
// scheduler. With datapath.mode auto such services go to IPVS while the
// rest stay on eBPF.
func NeedsIPVS(s Service) bool {
	return s.Forward == NAT || !slices.Contains(config.BPFSchedulers, s.Scheduler)
}

// Split is a Datapath that hands each service to one of two data paths:
// the services NeedsIPVS picks to the second, opened the first time one
// is there, and the others to the first.
type Split struct {
	First      Datapath
	OpenSecond func(context.Context) (Datapath, error)

	mu     sync.Mutex // guards second, which Report reads from elsewhere
	second Datapath
}

func (s *Split) halves() []Datapath {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []Datapath{s.First, s.second}
}

// open is the halves that are open: the first, and the second once it is.
func (s *Split) open() []Datapath {
	h := s.halves()
	if h[1] == nil {
		return h[:1]
	}
	return h
}

// Name names both halves once the second is open.
func (s *Split) Name() string {
	second := s.halves()[1]
	if second == nil {
		return s.First.Name()
	}
	return s.First.Name() + "+" + second.Name()
}

// Apply gives each half its services. The second half is applied even
// when it gets none, so that services which moved back to the first
// leave it.
func (s *Split) Apply(ctx context.Context, services []Service) error {
	var first, second []Service
	for _, svc := range services {
		if NeedsIPVS(svc) {
			second = append(second, svc)
		} else {
			first = append(first, svc)
		}
	}
	var errs []error
	if s.halves()[1] == nil && len(second) > 0 {
		dp, err := s.OpenSecond(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("open the data path for NAT and IPVS-only schedulers: %w", err))
		}
		s.mu.Lock()
		s.second = dp
		s.mu.Unlock()
	}
	errs = append(errs, s.First.Apply(ctx, first))
	if dp := s.halves()[1]; dp != nil {
		errs = append(errs, dp.Apply(ctx, second))
	}
	return errors.Join(errs...)
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

// Close closes both halves.
func (s *Split) Close() error {
	var errs []error
	for _, dp := range s.open() {
		errs = append(errs, dp.Close())
	}
	return errors.Join(errs...)
}

// Cleanup removes what both halves programmed.
func (s *Split) Cleanup() error {
	var errs []error
	for _, dp := range s.open() {
		errs = append(errs, dp.Cleanup())
	}
	return errors.Join(errs...)
}
