package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/daemon"
)

// newVRRPCmd is `halb vrrp release|resume INSTANCE [--force]`: an
// operator hands a node's mastership away for maintenance and takes part
// again after.
func newVRRPCmd(f *flags) *cobra.Command {
	var socket string
	var force bool
	cmd := &cobra.Command{
		Use:   "vrrp",
		Short: "Hand a VRRP instance's mastership away (release) and take part again (resume)",
		Long: `release makes the instance advertise priority 0 and hold BACKUP until
resume; the members of its sync group go with it. Without --force it is
refused when the VIPs would go nowhere: on a BACKUP that heard no master
within three advert intervals, and on a MASTER whose release no peer took
over within three advert intervals. VRRP backups are silent, so a MASTER
learns that a peer listens only by offering the mastership: it keeps its
VIPs while it advertises priority 0 and gives them up at the new master's
first advert; with no taker they never leave it. --force gives them up at
once. halb status shows a released instance as BACKUP (released). resume has
the instance take part again: with preempt, a higher priority takes the
VIPs back. Root only; the daemon logs who asked. Exit status 2 on an
unknown instance, 1 when refused or when no daemon answers.`,
	}
	cmd.PersistentFlags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	action := func(name, short string) *cobra.Command {
		return &cobra.Command{
			Use:   name + " INSTANCE",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(c *cobra.Command, args []string) error {
				var res daemon.VRRPResult
				if err := postControl(c.Context(), socketOf(f, socket), "/v1/vrrp/"+name, daemon.VRRPRequest{Instance: args[0], Force: force}, &res); err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "%s: %s\n", strings.Join(res.Instances, ", "), res.Message)
				return nil
			},
		}
	}
	release := action("release", "Advertise priority 0 and hold BACKUP until resume")
	release.Flags().BoolVar(&force, "force", false, "release even when no peer would take the VIPs")
	cmd.AddCommand(release, action("resume", "Take part again after a release"))
	return cmd
}
