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
	return &cobra.Command{
		Use:   "run",
		Short: "Run the daemon in the foreground; SIGHUP reloads, SIGTERM stops",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := daemon.New(f.configPath(), cmd.ErrOrStderr(), loader.Host{})
			if err != nil {
				return err
			}
			signals := make(chan os.Signal, 4)
			signal.Notify(signals, syscall.SIGHUP, syscall.SIGTERM, os.Interrupt)
			defer signal.Stop(signals)
			return d.Run(context.Background(), signals)
		},
	}
}
