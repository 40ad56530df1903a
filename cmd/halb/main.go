// Command halb is a high-availability load balancer: VRRP moves virtual
// IPs between nodes, and an eBPF (or, where the kernel has no BTF, IPVS)
// data path spreads the traffic to them over backends.
//
// Each subcommand is a front on a package: run on daemon, check on config
// (with a read-only look at this host), probe on the loader's probe (its
// table and JSON are rendered here), status, drain and undrain on the
// running daemon's control socket, import on keepalived. Only `halb run`
// may change the host: check, probe and status must never change it, save
// that the probe's lookup of the IPVS netlink family may make the kernel
// itself load ip_vs (see loader); drain and undrain change only what the
// daemon announces over BGP; import writes only the file -o names.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/halb-lb/halb/config"
)

// Exit statuses of ../shared/spec/cli.md.
const (
	exitOK        = 0
	exitFailure   = 1
	exitBadConfig = 2
)

const defaultConfig = "/etc/halb/halb.yaml"

func main() {
	// No memory profile: nothing in halb reads one, and the runtime's
	// sampling, on by default, keeps for good a table of the stacks it
	// sampled (1.4 MiB of address space, resident where the samples of a
	// config load and a first apply fall).
	runtime.MemProfileRate = 0
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs the command line and returns the exit status; tests call it
// directly.
func execute(args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var serr *statusError
	if errors.As(err, &serr) {
		fmt.Fprintln(root.ErrOrStderr(), "halb:", serr.msg)
		return serr.code
	}
	var cerr *config.Error
	if errors.As(err, &cerr) {
		fmt.Fprintln(root.ErrOrStderr(), cerr.Error())
		fmt.Fprintf(root.ErrOrStderr(), "%s: %d problem(s)\n", cerr.File, len(cerr.Problems))
		return exitBadConfig
	}
	fmt.Fprintln(root.ErrOrStderr(), "halb:", err)
	return exitFailure
}

// flags is what every command may read: the config path comes from -c,
// else HALB_CONFIG, else the default.
type flags struct {
	v *viper.Viper
}

func (f *flags) configPath() string { return f.v.GetString("config") }

func newRoot() *cobra.Command {
	f := &flags{v: viper.New()}
	root := &cobra.Command{
		Use:           "halb",
		Short:         "High-availability load balancer: VRRP failover and an eBPF/IPVS layer-4 data path",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringP("config", "c", defaultConfig, "configuration file")
	_ = f.v.BindPFlag("config", root.PersistentFlags().Lookup("config"))
	_ = f.v.BindEnv("config", config.EnvPrefix+"_CONFIG")
	root.AddCommand(newRunCmd(f), newCheckCmd(f), newProbeCmd(f), newStatusCmd(f), newDrainCmd(f), newUndrainCmd(f), newBackendCmd(f), newVRRPCmd(f), newFlowsCmd(f), newImportCmd(), newVersionCmd())
	withVersionFlag(root)
	for _, c := range tagged {
		root.AddCommand(c())
	}
	return root
}

// tagged holds the commands that only some builds have: docs.go's, built
// with -tags halbdocs by `make deb` to write the man pages and completions
// (the binary the package ships does without them).
var tagged []func() *cobra.Command
