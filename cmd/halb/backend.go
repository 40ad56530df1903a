package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/halb-lb/halb/daemon"
)

// newBackendCmd is `halb backend drain|undrain|weight SERVICE BACKEND [W]`:
// a run-time override of one backend's weight, ipvsadm -e's use, kept by
// the daemon until a reload changes that backend.
func newBackendCmd(f *flags) *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Drain, undrain or reweight a backend at run time, until a reload changes it",
		Long: `backend changes one backend of the running daemon until a reload that
changes that backend (or removes it), or until undrain:

  halb backend drain SERVICE BACKEND       weight 0: no new flows, open flows stay
  halb backend undrain SERVICE BACKEND     the configured weight again
  halb backend weight SERVICE BACKEND W    weight W instead of the configured one

BACKEND is ADDR:PORT, or ADDR when the service has one backend there.
Health checks go on: an unhealthy backend still gets weight 0. halb status
shows each override, with who set it and when. Root only; the daemon logs
who asked. Exit status 2 on an unknown service or backend, 1 when no
daemon answers.`,
	}
	cmd.PersistentFlags().StringVarP(&socket, "socket", "s", "", "control socket (default: control.socket from the config, else /run/halb/halb.sock)")
	action := func(name, short string, nargs int) *cobra.Command {
		use := name + " SERVICE BACKEND"
		if name == "weight" {
			use += " W"
		}
		sub := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.ExactArgs(nargs),
			RunE: func(c *cobra.Command, args []string) error {
				req := daemon.OverrideRequest{Service: args[0], Backend: args[1]}
				if name == "weight" {
					w, err := strconv.Atoi(args[2])
					if err != nil || w < 0 || w > 65535 {
						return &statusError{code: exitBadConfig, msg: fmt.Sprintf("weight %q: give a whole number from 0 to 65535", args[2])}
					}
					req.Weight = w
				}
				var res daemon.OverrideResult
				if err := postControl(c.Context(), socketOf(f, socket), "/v1/backend/"+name, req, &res); err != nil {
					return err
				}
				fmt.Fprintln(c.OutOrStdout(), res.Message)
				return nil
			},
		}
		sub.SetFlagErrorFunc(negativeWeight)
		return sub
	}
	cmd.AddCommand(
		action("drain", "Weight 0 for BACKEND of SERVICE: no new flows; open flows stay", 2),
		action("undrain", "End BACKEND's override: its configured weight applies again", 2),
		action("weight", "Give BACKEND of SERVICE weight W until a reload changes it", 3),
	)
	return cmd
}

// negativeWeight makes `halb backend weight SVC BACKEND -1` the usage error
// it is (exit 2, naming the weight): the flag parser takes -1 for a
// shorthand flag and would answer "unknown shorthand flag".
func negativeWeight(_ *cobra.Command, err error) error {
	var nerr *pflag.NotExistError
	if errors.As(err, &nerr) {
		if n := nerr.GetSpecifiedShortnames(); n != "" && strings.Trim(n, "0123456789") == "" {
			return &statusError{code: exitBadConfig, msg: fmt.Sprintf("weight -%s: give a whole number from 0 to 65535", n)}
		}
	}
	return err
}
