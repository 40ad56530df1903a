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
			writeRates(w, rateRows(prev.Services, st.Services, now.Sub(prevAt)))
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
	service, backend string
	service.Rate
}

// rateRows are the rows of the rates between two reports dt apart, in
// cur's order: a service's total, then its backends. One with no rate
// (new, or its counters restarted) has no row.
func rateRows(prev, cur []service.Report, dt time.Duration) []rate {
	rates := service.Rates(prev, cur, dt)
	var out []rate
	for _, r := range cur {
		if v, ok := rates[service.RateKey{Service: r.Key}]; ok {
			out = append(out, rate{r.Name + " " + r.Key.String(), "(all)", v})
		}
		for _, b := range r.Backends {
			if v, ok := rates[service.RateKey{Service: r.Key, Backend: b.Addr}]; ok {
				out = append(out, rate{"", b.Addr.String(), v})
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
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.0f\n", r.service, r.backend, r.Packets, r.Bytes, r.NewFlows)
	}
	tw.Flush()
}
