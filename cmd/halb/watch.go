package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/service"
)

// watchRows bounds the rates table of `halb status --watch`, so that a
// host with thousands of backends redraws a screen, not a scroll: the
// busiest rows are not picked out, the first ones in the status's order
// are shown and the rest counted.
const watchRows = 40

// watch redraws the status every interval with per-second rates from
// the last two answers, until Ctrl-C (or SIGTERM) or ctx ends.
func watch(ctx context.Context, w io.Writer, socket string, interval time.Duration) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	var prev daemon.Status
	var prevAt time.Time
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, _, err := fetchStatus(ctx, socket)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("no halb daemon answers on %s (is halb run going, and are you root?): %w", socket, err)
		}
		now := time.Now()
		fmt.Fprint(w, "\x1b[H\x1b[2J") // home, clear
		if err := writeStatus(w, st, now); err != nil {
			return err
		}
		if !prevAt.IsZero() {
			writeRates(w, rates(prev.Services, st.Services, now.Sub(prevAt)))
		}
		prev, prevAt = st, now
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rate is one row of per-second rates.
type rate struct {
	service, backend         string
	packets, bytes, newFlows float64
}

// rates are the per-second rates between two reports, by service and
// backend; a service or backend in only one of them has none (new, or
// gone), and a counter that went down (a data path restarted) counts
// from zero.
func rates(prev, cur []service.Report, dt time.Duration) []rate {
	if dt <= 0 {
		return nil
	}
	sec := dt.Seconds()
	per := func(a, b service.Stats) (float64, float64, float64) {
		d := func(x, y uint64) float64 {
			if y < x {
				return float64(y) / sec
			}
			return float64(y-x) / sec
		}
		return d(a.Packets, b.Packets), d(a.Bytes, b.Bytes), d(a.NewFlows, b.NewFlows)
	}
	before := map[string]service.Stats{}
	for _, r := range prev {
		before[r.Key.String()] = r.Stats
		for _, b := range r.Backends {
			before[r.Key.String()+" "+b.Addr.String()] = b.Stats
		}
	}
	var out []rate
	for _, r := range cur {
		if s, ok := before[r.Key.String()]; ok {
			p, b, n := per(s, r.Stats)
			out = append(out, rate{service: r.Name + " " + r.Key.String(), backend: "(all)", packets: p, bytes: b, newFlows: n})
		}
		for _, be := range r.Backends {
			if s, ok := before[r.Key.String()+" "+be.Addr.String()]; ok {
				p, b, n := per(s, be.Stats)
				out = append(out, rate{backend: be.Addr.String(), packets: p, bytes: b, newFlows: n})
			}
		}
	}
	return out
}

// writeRates prints the rates, watchRows of them at most.
func writeRates(w io.Writer, rows []rate) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "\nRATES (per second)\tBACKEND\tPACKETS/S\tBYTES/S\tNEW FLOWS/S\n")
	for i, r := range rows {
		if i == watchRows {
			fmt.Fprintf(tw, "(%d more rows: halb status --json has every counter)\t\t\t\t\n", len(rows)-watchRows)
			break
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\n", r.service, r.backend, r.packets, r.bytes, r.newFlows)
	}
	tw.Flush()
}
