package service

import (
	"net/netip"
	"time"
)

// RateKey names one row of rates: a service's total, or one of its
// backends.
type RateKey struct {
	Service Key
	Backend netip.AddrPort // the zero AddrPort: the service's total
}

// Rate is one row's counters per second.
type Rate struct {
	Packets, Bytes, NewFlows float64
}

// Rates are the per-second rates between two reports dt apart, of every
// service and backend both hold (`halb status --watch` and the status
// page draw them). One that is new has none yet, and neither has one
// whose counters went down (its data path restarted, or the service was
// programmed again): a rate from a counter's restart would be a guess.
func Rates(prev, cur []Report, dt time.Duration) map[RateKey]Rate {
	if dt <= 0 {
		return nil
	}
	before := make(map[RateKey]Stats, len(prev))
	for _, r := range prev {
		before[RateKey{Service: r.Key}] = r.Stats
		for _, b := range r.Backends {
			before[RateKey{r.Key, b.Addr}] = b.Stats
		}
	}
	out := make(map[RateKey]Rate, len(before))
	add := func(k RateKey, now Stats) {
		was, ok := before[k]
		if !ok || now.Packets < was.Packets || now.Bytes < was.Bytes || now.NewFlows < was.NewFlows {
			return
		}
		sec := dt.Seconds()
		out[k] = Rate{float64(now.Packets-was.Packets) / sec, float64(now.Bytes-was.Bytes) / sec, float64(now.NewFlows-was.NewFlows) / sec}
	}
	for _, r := range cur {
		add(RateKey{Service: r.Key}, r.Stats)
		for _, b := range r.Backends {
			add(RateKey{r.Key, b.Addr}, b.Stats)
		}
	}
	return out
}
