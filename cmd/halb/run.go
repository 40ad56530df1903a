package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/loader"
)

func newRunCmd(f *flags) *cobra.Command {
	var cleanup bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon in the foreground; SIGHUP reloads, SIGTERM stops",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := daemon.New(f.configPath(), cmd.ErrOrStderr(), loader.Host{})
			if err != nil {
				return err
			}
			d.Cleanup = cleanup
			daemon.Build.Version, daemon.Build.Commit = version, commit
			// A channel each: Go drops a signal whose channel is full, so
			// SIGHUPs coalesce in theirs (one pending reload at most) and
			// can never crowd out a SIGTERM.
			stop := make(chan os.Signal, 1)
			reload := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
			signal.Notify(reload, syscall.SIGHUP)
			defer signal.Stop(stop)
			defer signal.Stop(reload)
			return d.Run(context.Background(), stop, reload)
		},
	}
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "on shutdown remove the data path (eBPF pins and attachments, halb's IPVS services) instead of leaving it to forward")
	return cmd
}
