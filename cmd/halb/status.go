package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/daemon"
)

func newStatusCmd(f *flags) *cobra.Command {
	var asJSON, watching bool
	var socket string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask the running daemon for VRRP states, the data path and backend health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			socket = socketOf(f, socket)
			if watching {
				if asJSON {
					return &statusError{code: exitBadConfig, msg: "--watch draws the table: give --json or --watch, not both"}
				}
				ctx := cmd.Context()
				if ctx == nil {
					ctx = context.Background()
				}
				return watch(ctx, cmd.OutOrStdout(), socket, time.Second)
			}
			st, raw, err := fetchStatus(cmd.Context(), socket)
			var untrusted *untrustedPeerError
			if errors.As(err, &untrusted) {
				return err
			}
			if err != nil {
				return fmt.Errorf("no halb daemon answers on %s (is halb run going, and are you root?): %w", socket, err)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			return writeStatus(cmd.OutOrStdout(), st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.Flags().BoolVar(&watching, "watch", false, "redraw every second with per-second rates, until Ctrl-C")
	cmd.Flags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	return cmd
}

// socketOf is the control socket a command asks: the --socket flag, else
// control.socket from the config, else the default.
func socketOf(f *flags, socket string) string {
	if socket != "" {
		return socket
	}
	if cfg, err := config.Load(f.configPath()); err == nil {
		return cfg.Control.Socket
	}
	return "/run/halb/halb.sock"
}

// controlClient talks to the daemon on its control socket, once the
// kernel says who serves it is trusted (checkPeer).
func controlClient(socket string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", socket)
			if err != nil {
				return nil, err
			}
			if err := checkPeer(c, socket); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		}},
	}
}

func fetchStatus(ctx context.Context, socket string) (daemon.Status, []byte, error) {
	var st daemon.Status
	if ctx == nil {
		ctx = context.Background()
	}
	client := controlClient(socket)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://halb/v1/status", nil)
	if err != nil {
		return st, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, nil, fmt.Errorf("daemon answered %s", resp.Status)
	}
	return st, raw, json.Unmarshal(raw, &st)
}

// untrustedPeerError is a control socket served by a user who is neither
// root nor the caller.
type untrustedPeerError struct {
	socket   string
	uid, pid int32
}

func (e *untrustedPeerError) Error() string {
	return fmt.Sprintf("refusing the answer on %s: it comes from uid %d (pid %d), not root, so it may show a state that is not halb's; "+
		"find out who made that socket, and keep control.socket in a directory only root can write such as /run/halb", e.socket, e.uid, e.pid)
}

// checkPeer trusts the daemon at the other end of c only when the kernel
// says it runs as root or as the caller (SO_PEERCRED): anyone else who
// made a socket at that path could show root a state of their choosing.
func checkPeer(c net.Conn, socket string) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("control socket %s: not a unix socket", socket)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("control socket %s: who serves it (SO_PEERCRED): %w", socket, credErr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return &untrustedPeerError{socket: socket, uid: int32(cred.Uid), pid: cred.Pid}
	}
	return nil
}

// writeTracking lists each instance's trackers and their state, when any
// instance has some: what moved the priority, or why it is in FAULT.
func writeTracking(tw io.Writer, instances []daemon.InstanceStatus) {
	if !slices.ContainsFunc(instances, func(in daemon.InstanceStatus) bool { return len(in.Tracking) > 0 }) {
		return
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "INSTANCE\tTRACKING\n")
	for _, in := range instances {
		for i, line := range in.Tracking {
			name := in.Name
			if i > 0 {
				name = ""
			}
			fmt.Fprintf(tw, "%s\t%s\n", name, line)
		}
	}
}

// writeStatus renders st as a table; now is when it is read, for how long
// each instance has been in its state.
func writeStatus(w io.Writer, st daemon.Status, now time.Time) error {
	fmt.Fprintf(w, "datapath  %s\n", st.Datapath)
	for _, h := range st.Hooks {
		fmt.Fprintf(w, "          %s\n", h)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "INSTANCE\tINTERFACE\tVRID\tSTATE\tPRIORITY\tFOR\tREASON\tVIRTUAL IPS\n")
	for _, in := range st.Instances {
		reason := in.Reason
		if len(in.Faults) > 0 {
			reason = strings.Join(in.Faults, "; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", in.Name, in.Interface, in.VRID, in.ShownState(), in.Priority,
			now.Sub(in.Since).Round(time.Second), reason, strings.Join(in.VirtualIPs, ", "))
	}
	if len(st.Instances) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	writeTracking(tw, st.Instances)
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "SERVICE\tBACKEND\tCHECK\tHEALTH\tLAST ERROR\n")
	for _, b := range st.Backends {
		health := b.Health
		if !b.Confirmed {
			health += " (presumed)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Service, b.Backend, b.Check, health, b.LastError)
	}
	if len(st.Backends) == 0 {
		fmt.Fprintln(tw, "(no health-checked backends)")
	}
	writeOverrides(tw, st.Backends, now)
	if len(st.Services) > 0 {
		fmt.Fprintln(tw)
		// CONNS: what IPVS holds now, active/inactive; the eBPF data
		// path does not count open flows.
		// REPLIES: the packets/bytes of a NAT backend's replies the eBPF
		// data path translated back to the clients; PACKETS and BYTES
		// count the way to the backends.
		// PROBLEM: why the data path cannot serve a backend now.
		fmt.Fprintf(tw, "SERVICE\tBACKEND\tWEIGHT\tNEW FLOWS\tCONNS\tPACKETS\tBYTES\tREPLIES\tPROBLEM\n")
		for _, s := range st.Services {
			fmt.Fprintf(tw, "%s %s (%s)\t(all)\t\t%d\t\t%d\t%d\t\t\n", s.Name, s.Key, s.Datapath, s.NewFlows, s.Packets, s.Bytes)
			for _, b := range s.Backends {
				weight := fmt.Sprint(b.Weight)
				switch {
				case b.Problem != "" && !b.Live:
					weight += " (not served)"
				case !b.Live:
					weight += " (drained)"
				}
				conns := "-"
				if b.Conns != nil {
					conns = fmt.Sprintf("%d/%d", b.Active, b.Inactive)
				}
				replies := "-"
				if b.Replies != nil {
					replies = fmt.Sprintf("%d/%d", b.Replies.Packets, b.Replies.Bytes)
				}
				fmt.Fprintf(tw, "\t%s\t%s\t%d\t%s\t%d\t%d\t%s\t%s\n", b.Addr, weight, b.NewFlows, conns, b.Packets, b.Bytes, replies, b.Problem)
			}
		}
	}
	if st.BGP != nil {
		writeBGP(tw, st.BGP, now)
	}
	return tw.Flush()
}

// writeBGP renders the BGP sessions and what each service has announced
// and why (or why not).
func writeBGP(tw io.Writer, b *daemon.BGPStatus, now time.Time) {
	fmt.Fprintln(tw)
	if b.Drained != "" {
		fmt.Fprintf(tw, "BGP AS %d: DRAINED (%s): nothing announced until `halb undrain` or a restart\n", b.ASN, b.Drained)
	}
	// UP: how long the session has been established; SENT/RECEIVED:
	// prefixes; UPDATES: messages sent/received.
	fmt.Fprintf(tw, "BGP PEER\tASN\tSTATE\tUP\tSENT\tRECEIVED\tUPDATES\tLAST ERROR\n")
	for _, p := range b.Peers {
		up := "-"
		if p.Since != nil {
			up = now.Sub(*p.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d/%d\t%s\n", p.Address, p.ASN, p.State, up,
			p.PrefixesSent, p.PrefixesReceived, p.UpdatesSent, p.UpdatesReceived, p.LastError)
	}
	if len(b.Peers) == 0 {
		fmt.Fprintln(tw, "(no peers)")
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "SERVICE\tPREFIX\tANNOUNCE\tANNOUNCED\tWHY\n")
	for _, a := range b.Announcements {
		yes := "no"
		if a.Announced {
			yes = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Service, a.Prefix, a.Mode, yes, a.Reason)
	}
	if len(b.Announcements) == 0 {
		fmt.Fprintln(tw, "(no service has announce: always or master)")
	}
}

// writeOverrides lists the backends' run-time overrides (`halb backend`),
// when there are any.
func writeOverrides(w io.Writer, backends []daemon.BackendStatus, now time.Time) {
	header := false
	for _, b := range backends {
		o := b.Override
		if o == nil {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\nOVERRIDE\tSERVICE\tBACKEND\tSINCE\tBY\n")
			header = true
		}
		what := "drained"
		if !o.Drained && o.Weight != nil {
			what = fmt.Sprintf("weight %d", *o.Weight)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s ago\t%s\n", what, b.Service, b.Backend, now.Sub(o.Since).Round(time.Second), o.By)
	}
}
