package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/daemon"
)

func newDrainCmd(f *flags) *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "BGP: withdraw this node's routes and wait bgp.drain_time while it goes on serving",
		Long: `drain withdraws every route this node announces over BGP, then waits
bgp.drain_time while the routers move the flows to the other nodes; halb
goes on serving what still arrives. It does not stop halb: the routes stay
withdrawn until ` + "`halb undrain`" + ` or a restart of halb (SIGTERM drains the
same way before it stops). Interrupting the wait leaves the routes
withdrawn. Root only; the daemon logs who asked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			socket = socketOf(f, socket)
			var res daemon.DrainResult
			if err := postControl(cmd.Context(), socket, "/v1/bgp/drain", nil, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "withdrawn: %s\n", listOrNone(res.Withdrawn))
			fmt.Fprintf(out, "waiting %s (bgp.drain_time) for the routers to move the flows away; still serving\n", res.DrainTime)
			if err := sleepCtx(cmd.Context(), res.DrainTime); err != nil {
				return fmt.Errorf("wait cut short (%w): the routes stay withdrawn", err)
			}
			fmt.Fprintln(out, "drained: the routes stay withdrawn until `halb undrain` or a restart of halb")
			return nil
		},
	}
	cmd.Flags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	return cmd
}

func newUndrainCmd(f *flags) *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "undrain",
		Short: "BGP: end a drain: announce again what this node serves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := postControl(cmd.Context(), socketOf(f, socket), "/v1/bgp/undrain", nil, nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "undrained: what this node serves is announced again (halb status shows each service's announcement)")
			return nil
		},
	}
	cmd.Flags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	return cmd
}

// postControl posts in (as JSON, unless nil) to the daemon's control
// socket and decodes its JSON answer into out (unless nil). A request the
// daemon finds naming something it does not have (404, 400) is an exit
// status 2, like a bad config.
func postControl(ctx context.Context, socket, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	_, err := callControl(ctx, socket, http.MethodPost, path, body, out)
	return err
}

// callControl sends a request to the daemon's control socket, as
// postControl says, and returns the answer's body as well.
func callControl(ctx context.Context, socket, method, path string, body io.Reader, out any) ([]byte, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://halb"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := controlClient(socket).Do(req)
	var untrusted *untrustedPeerError
	if errors.As(err, &untrusted) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("no halb daemon answers on %s (is halb run going, and are you root?): %w", socket, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusBadRequest {
		return nil, &statusError{code: exitBadConfig, msg: "the daemon refused: " + strings.TrimSpace(string(answer))}
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("the daemon refused: %s", strings.TrimSpace(string(answer)))
	}
	if out == nil {
		return answer, nil
	}
	return answer, json.Unmarshal(answer, out)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none (nothing was announced)"
	}
	return strings.Join(s, ", ")
}
