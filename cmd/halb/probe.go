package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/loader"
)

func newProbeCmd(f *flags) *cobra.Command {
	var asJSON bool
	var root string
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Report what the kernel can do and which data path halb picks, and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mode, note := configuredMode(cmd, f.configPath())
			report := loader.Host{Root: root}.Probe()
			decision := loader.Choose(mode, report)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					loader.Report
					ConfiguredMode string          `json:"configured_mode"`
					Decision       loader.Decision `json:"decision"`
				}{report, mode, decision})
			}
			if note != "" {
				fmt.Fprintln(cmd.OutOrStdout(), note)
			}
			return report.WriteTable(cmd.OutOrStdout(), decision)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the facts as JSON")
	// --root reads /proc, /sys and /lib/modules below another directory:
	// how the tests, and a curious person, see what halb would decide on
	// a kernel without BTF or IPVS.
	cmd.Flags().StringVar(&root, "root", "", "filesystem root to probe instead of /")
	_ = cmd.Flags().MarkHidden("root")
	return cmd
}

// configuredMode is datapath.mode from the config when it can be read, and
// auto otherwise: the probe is useful before any config exists, so a
// missing or broken file is mentioned, not fatal.
func configuredMode(cmd *cobra.Command, path string) (mode, note string) {
	cfg, err := config.Load(path)
	switch {
	case err == nil:
		return cfg.Datapath.Mode, fmt.Sprintf("datapath.mode %s from %s", cfg.Datapath.Mode, path)
	case errors.Is(err, fs.ErrNotExist) && !cmd.Flags().Changed("config"):
		return config.ModeAuto, ""
	default:
		return config.ModeAuto, fmt.Sprintf("%s not used (%v); judging datapath.mode auto", path, firstLine(err))
	}
}

func firstLine(err error) string {
	s := err.Error()
	for i, c := range s {
		if c == '\n' {
			return s[:i] + " ..."
		}
	}
	return s
}
