package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time by the Makefile: -X main.version=... -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit, Go version and target",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(cmd.OutOrStdout(), versionText())
		},
	}
}

// versionText is what `halb version` and `halb --version` print: the
// same four lines, so that a script may use either.
func versionText() string {
	return fmt.Sprintf("halb %s\ncommit  %s\ngo      %s\ntarget  %s\n", version, commit, runtime.Version(), target())
}

// withVersionFlag gives root a --version flag that prints versionText.
func withVersionFlag(root *cobra.Command) {
	root.Version = version
	root.SetVersionTemplate(versionText())
}

// target names the platform the binary was built for, with the ARM
// variant, which matters on a Raspberry Pi.
func target() string {
	t := runtime.GOOS + "/" + runtime.GOARCH
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "GOARM" && runtime.GOARCH == "arm" {
				t += " GOARM=" + s.Value
			}
		}
	}
	return t
}
