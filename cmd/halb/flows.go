package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/service"
)

// newFlowsCmd is `halb flows [--service NAME] [--limit N] [--json]`: the
// flows the data path holds open, ipvsadm -Lnc's use.
func newFlowsCmd(f *flags) *cobra.Command {
	var (
		socket, svc string
		limit       int
		asJSON      bool
	)
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "List the flows the data path holds open: client, service, backend, age, packets",
		Long: `flows asks the running daemon for the flows its data path holds open,
each with its client, service, backend, age and packets.

The eBPF data path lists its conntrack map (halb_ct): AGE is the time since
the flow's first packet (its last SYN, for TCP), PACKETS the packets the
data path balanced for it (approximate: one CPU's count, which may miss a
few when two CPUs carry one flow). A flow stays in the map until it is
evicted, so flows that have ended show too. A backend that has left the
configuration since is shown as "gone (id N)": the flow's next packet is
scheduled again. A full NAT flow shows the source port it was given.

IPVS lists its connection table (as ipvsadm -Lnc): it keeps no start time
and no packet count for a connection, only its state and when it expires,
so AGE and PACKETS show "-" and STATE and EXPIRES are shown instead.

At most --limit flows are shown (and "N of M flows shown" says when more
matched), --limit itself at most 10000 (use --service to narrow a larger
table); at most 1 048 576 entries of the table are read. Root only: the
flows show clients' addresses. Exit status 2 on a --limit out of range or
an unknown service, 1 when no daemon answers.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if limit < 1 || limit > service.MaxFlowLimit {
				return &statusError{code: exitBadConfig, msg: fmt.Sprintf("--limit %d: give a whole number from 1 to %d", limit, service.MaxFlowLimit)}
			}
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if svc != "" {
				q.Set("service", svc)
			}
			var list service.FlowList
			raw, err := callControl(c.Context(), socketOf(f, socket), http.MethodGet, "/v1/flows?"+q.Encode(), nil, &list)
			if err != nil {
				return err
			}
			if asJSON {
				_, err := c.OutOrStdout().Write(raw)
				return err
			}
			return writeFlows(c.OutOrStdout(), list)
		},
	}
	cmd.Flags().StringVar(&svc, "service", "", "only the flows of this service (its name in the config)")
	cmd.Flags().IntVar(&limit, "limit", service.DefaultFlowLimit, fmt.Sprintf("show at most this many flows (1 to %d)", service.MaxFlowLimit))
	// A --limit that is no number is as much a usage error as one out of
	// range: both exit 2, not 1.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &statusError{code: exitBadConfig, msg: err.Error()}
	})
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the flows as JSON")
	cmd.Flags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	return cmd
}

// writeFlows prints list as a table; IPVS's flows, which have a state,
// get STATE and EXPIRES columns.
func writeFlows(w io.Writer, list service.FlowList) error {
	ipvs := false
	for _, fl := range list.Flows {
		ipvs = ipvs || fl.State != ""
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "CLIENT\tSERVICE\tBACKEND\tAGE\tPACKETS"
	if ipvs {
		head += "\tSTATE\tEXPIRES"
	}
	fmt.Fprintln(tw, head)
	for _, fl := range list.Flows {
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", fl.Client, serviceOf(fl), backendOf(fl), ageOf(fl.AgeSeconds), packetsOf(fl.Packets))
		if ipvs {
			row += fmt.Sprintf("\t%s\t%s", orDash(fl.State), ageOf(fl.ExpiresSeconds))
		}
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(list.Flows) < list.Total {
		fmt.Fprintf(w, "%d of %d flows shown (--limit to see more)\n", len(list.Flows), list.Total)
	}
	if list.Partial {
		fmt.Fprintln(w, "the table holds more entries than one listing reads: the count covers those read")
	}
	if list.Total == 0 {
		fmt.Fprintln(w, "no flows")
	}
	return nil
}

// serviceOf names a flow's service, or its VIP when the data path no
// longer serves it.
func serviceOf(fl service.Flow) string {
	if fl.Service == "" {
		return fl.Key.String()
	}
	return fl.Service
}

func backendOf(fl service.Flow) string {
	if !fl.Backend.IsValid() {
		return fmt.Sprintf("gone (id %d)", fl.BackendID)
	}
	if fl.SourcePort != 0 {
		return fmt.Sprintf("%s from port %d", fl.Backend, fl.SourcePort)
	}
	return fl.Backend.String()
}

// ageOf is seconds as "42s", "3m05s", "2h07m" or "3d04h"; "-" unknown.
func ageOf(s *int64) string {
	if s == nil {
		return "-"
	}
	d := time.Duration(*s) * time.Second
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", *s)
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", *s/60, *s%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", *s/3600, *s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", *s/86400, *s%86400/3600)
}

func packetsOf(p *uint64) string {
	if p == nil {
		return "-"
	}
	return strconv.FormatUint(*p, 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
