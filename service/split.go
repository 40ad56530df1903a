package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

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

// Close closes both halves.
func (s *Split) Close() error {
	err := s.First.Close()
	if dp := s.halves()[1]; dp != nil {
		err = errors.Join(err, dp.Close())
	}
	return err
}

// Cleanup removes what both halves programmed, where they can.
func (s *Split) Cleanup() error {
	var errs []error
	for _, dp := range s.halves() {
		if c, ok := dp.(Cleaner); ok {
			errs = append(errs, c.Cleanup())
		} else if dp != nil {
			errs = append(errs, dp.Close())
		}
	}
	return errors.Join(errs...)
}
