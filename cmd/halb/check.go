package main

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/daemon"
)

func newCheckCmd(f *flags) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration without touching the host",
		Long: `Validate the configuration without touching the host.

A valid file is summarised, after notes on what it does and warnings about
this host (read, never changed): a virtual IP that is already an address of
a local interface, a backend with no route from here. Warnings leave the
exit status 0: the file is valid, and may be meant for another host. On a
host that has every one of datapath.interfaces, what it could not run is a
problem (exit 2): a forward: nat or fullnat backend routed through another
interface, a fullnat snat_address neither its own nor a VRRP VIP.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := f.configPath()
			cfg, warnings, err := config.LoadWithWarnings(path)
			if err != nil {
				return err
			}
			if err := daemon.CheckControlSocket(path, cfg); err != nil {
				return err
			}
			// The file's own warnings (a password others can read), then
			// the host's; what this host cannot run at all is a problem.
			fromHost, err := checkHost(cmd.Context(), path, cfg)
			if err != nil {
				return err
			}
			warnings = append(warnings, fromHost...)
			return writeSummary(cmd.OutOrStdout(), path, cfg, warnings)
		},
	}
}

// writeSummary prints one screen that lets a person see what halb will do
// with the file: notes and warnings about this host first, then the
// instances it runs and the services it balances.
func writeSummary(w io.Writer, path string, c *config.Config, warnings []config.Problem) error {
	fmt.Fprintf(w, "%s: valid\n", path)
	for _, n := range config.Notes(path, c) {
		fmt.Fprintln(w, n.In(path))
	}
	for _, n := range warnings {
		fmt.Fprintln(w, n.In(path))
	}
	fmt.Fprintln(w)
	if c.Datapath.Mode == config.ModeIPVS {
		fmt.Fprintf(w, "datapath  mode ipvs\n\n")
	} else {
		fmt.Fprintf(w, "datapath  mode %s on %s (xdp_mode %s), pinned under %s\n\n",
			c.Datapath.Mode, orNone(strings.Join(c.Datapath.Interfaces, ", ")), c.Datapath.XDPMode, c.Datapath.BPFFS)
	}
	if note := daemon.AlwaysVIPsNote(c.Services); note != "" {
		fmt.Fprintf(w, "bgp       %s\n\n", note)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "INSTANCE\tINTERFACE\tVRID\tVERSION\tPRIORITY\tADVERT\tPREEMPT\tPEERS\tVIRTUAL IPS\n")
	for _, in := range c.VRRP.Instances {
		peers := "multicast"
		if len(in.UnicastPeers) > 0 {
			peers = joinAny(in.UnicastPeers)
		}
		preempt := "no"
		if in.Preempt {
			preempt = "yes"
			if in.PreemptDelay > 0 {
				preempt += " after " + in.PreemptDelay.String()
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\tv%d\t%d\t%s\t%s\t%s\t%s\n",
			in.Name, in.Interface, in.VRID, in.Version, in.Priority, in.AdvertInterval, preempt, peers, joinAny(in.VirtualIPs))
	}
	for _, in := range c.VRRP.Instances {
		if also := heldBeside(in); also != "" {
			fmt.Fprintf(tw, "%s as MASTER also holds %s\n", in.Name, also)
		}
	}
	if len(c.VRRP.Instances) == 0 {
		fmt.Fprintf(tw, "(none)\n")
	}
	fmt.Fprintln(tw)
	// DATAPATH: which data path takes the service (with mode auto, as on
	// a kernel with BTF: `halb probe` says what this one has).
	fmt.Fprintf(tw, "SERVICE\tVIP\tSCHEDULER\tFORWARD\tDATAPATH\tCHECK\tBACKENDS\n")
	for _, s := range c.Services {
		backends := make([]string, 0, len(s.Backends))
		for _, b := range s.Backends {
			backends = append(backends, fmt.Sprintf("%s w%d", netip.AddrPortFrom(b.Address, uint16(b.Port)), b.Weight))
		}
		check := s.HealthCheck.Type
		if check != "none" {
			check += " every " + s.HealthCheck.Interval.String()
			if s.HealthCheck.Port != 0 {
				check += fmt.Sprintf(" on port %d", s.HealthCheck.Port)
			}
		}
		for _, p := range s.Pairs() { // a service group: a line per VIP:port pair
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n",
				s.Name, p, s.Protocol, s.Scheduler, s.Forward,
				config.ServiceDatapath(c.Datapath.Mode, "", s), check, strings.Join(backends, ", "))
		}
	}
	if len(c.Services) == 0 {
		fmt.Fprintf(tw, "(none)\n")
	}
	writeBGPSummary(tw, c)
	return tw.Flush()
}

// writeBGPSummary lists the speaker, its peers and, per service, the host
// route it announces and when: what the routers will be told, before
// halb runs.
func writeBGPSummary(tw io.Writer, c *config.Config) {
	if c.BGP == nil {
		return
	}
	b := c.BGP
	routerID, listen := "from the host (first IPv4 peer's source_address, else lowest global IPv4)", "none (opens every session)"
	if b.RouterID.IsValid() {
		routerID = b.RouterID.String()
	}
	if b.ListenPort != 0 {
		listen = fmt.Sprintf("%d", b.ListenPort)
	}
	fmt.Fprintf(tw, "\nBGP\tAS %d, router id %s, listen %s, drain %s\n\n", b.ASN, routerID, listen, b.DrainTime)
	fmt.Fprintf(tw, "PEER\tASN\tSESSION\tHOLD\tKEEPALIVE\tSOURCE\tMD5\tBFD\tGRACEFUL RESTART\n")
	for _, p := range b.Peers {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			netip.AddrPortFrom(p.Address, uint16(p.Port)), p.ASN, peerSession(b.ASN, p), p.HoldTime,
			keepaliveOf(p), orKernel(p.SourceAddress), onOff(p.Password != ""), bfdOf(p.BFD), onOff(p.GracefulRestart))
	}
	if len(b.Peers) == 0 {
		fmt.Fprintf(tw, "(none)\n")
	}
	fmt.Fprintf(tw, "\nSERVICE\tROUTE\tANNOUNCED\tATTRIBUTES\n")
	for _, s := range c.Services {
		for _, p := range s.Pairs() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()), announceWhen(c, s, p.Addr()), announceAttrs(b.ASN, s.Announce))
		}
	}
}

// peerSession names the kind of session: iBGP, eBGP on a connected
// network, or eBGP multihop with its TTL.
func peerSession(local config.ASN, p config.BGPPeer) string {
	switch {
	case p.ASN == local:
		return "ibgp"
	case p.EBGPMultihop > 0:
		return fmt.Sprintf("ebgp multihop ttl %d", p.EBGPMultihop)
	}
	return "ebgp"
}

func keepaliveOf(p config.BGPPeer) string {
	if p.KeepaliveInterval == 0 {
		return (p.HoldTime / 3).String()
	}
	return p.KeepaliveInterval.String()
}

func bfdOf(b *config.BFD) string {
	if b == nil {
		return "no"
	}
	return fmt.Sprintf("rx %s tx %s x%d (udp 3784)", b.MinRx, b.MinTx, b.Multiplier)
}

// heldBeside lists what the instance holds as MASTER beside the VIPs of
// its advert: the excluded VIPs, the routes and the rules.
func heldBeside(in config.Instance) string {
	var parts []string
	for _, v := range in.VirtualIPsExcluded {
		parts = append(parts, v.String()+" (excluded)")
	}
	for _, r := range in.VirtualRoutes {
		parts = append(parts, "route "+r.String())
	}
	for _, r := range in.VirtualRules {
		parts = append(parts, "rule "+r.String())
	}
	return strings.Join(parts, "; ")
}

// announceWhen says in words when the service's host route is announced.
func announceWhen(c *config.Config, s config.Service, vip netip.Addr) string {
	switch s.Announce.When {
	case config.AnnounceAlways:
		return fmt.Sprintf("always: while this node serves it with at least %d healthy backend(s)", max(s.Quorum, 1))
	case config.AnnounceMaster:
		for _, in := range c.VRRP.Instances {
			for _, v := range in.HeldVIPs() {
				if v.Address.Addr() == vip {
					return "master: while " + in.Name + " is MASTER"
				}
			}
		}
		return "master"
	}
	return "never"
}

// announceAttrs lists the path attributes of an announced route.
func announceAttrs(local config.ASN, a config.Announce) string {
	if a.When == config.AnnounceNever {
		return "-"
	}
	parts := []string{fmt.Sprintf("med %d", a.MED)}
	parts = append(parts, fmt.Sprintf("local_pref %d (ibgp peers)", a.LocalPref))
	if len(a.Communities) > 0 {
		parts = append(parts, "communities "+strings.Join(a.Communities, " "))
	}
	if len(a.LargeCommunities) > 0 {
		parts = append(parts, "large_communities "+strings.Join(a.LargeCommunities, " "))
	}
	return strings.Join(parts, ", ")
}

func orKernel(a netip.Addr) string {
	if !a.IsValid() {
		return "(kernel's choice)"
	}
	return a.String()
}

func onOff(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func joinAny[T fmt.Stringer](xs []T) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = x.String()
	}
	return strings.Join(parts, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "(no interfaces)"
	}
	return s
}
