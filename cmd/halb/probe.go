package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/ipvs"
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
			cfg, note := loadForProbe(cmd, f.configPath())
			mode := config.ModeAuto
			if cfg != nil {
				mode = cfg.Datapath.Mode
			}
			report := loader.Host{Root: root}.Probe()
			decision := loader.Choose(mode, report)
			paths := servicePaths(cfg, decision)
			needed := neededModules(ipvsServices(cfg, paths), report)
			out := probeOutput{report, mode, needed, decision, paths}
			if asJSON {
				return out.writeJSON(cmd.OutOrStdout())
			}
			return out.writeTable(cmd.OutOrStdout(), note)
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

// probeOutput is what `halb probe` prints: the probe's facts, the mode the
// config asks for, the modules its services need and the decision. The
// JSON keys are part of the command-line contract.
type probeOutput struct {
	loader.Report
	ConfiguredMode string `json:"configured_mode"`
	// IPVSNeeded is the modules of the services that run on IPVS here
	// or, when none does, the modules all would need on IPVS.
	IPVSNeeded []moduleNeed    `json:"ipvs_needed"`
	Decision   loader.Decision `json:"decision"`
	Services   []servicePath   `json:"services,omitempty"`
}

// servicePath is the data path a configured service takes on this host.
type servicePath struct {
	Service  string `json:"service"`
	Forward  string `json:"forward"`
	Datapath string `json:"datapath"` // xdp, tc or ipvs
}

// servicePaths says which data path takes each configured service under
// the decision: the eBPF one it chose, or IPVS (mode ipvs, a kernel
// without BTF, or with mode auto an IPVS-only scheduler).
func servicePaths(cfg *config.Config, d loader.Decision) []servicePath {
	out := []servicePath{}
	if cfg == nil {
		return out
	}
	for _, s := range cfg.Services {
		path := config.ServiceDatapath(cfg.Datapath.Mode, d.Mode, s)
		if path == "ebpf" {
			path = d.Mode
		}
		out = append(out, servicePath{Service: s.Name, Forward: s.Forward, Datapath: path})
	}
	return out
}

// ipvsServices is the configured services whose IPVS modules the probe
// lists: those that run on IPVS here (paths, in the config's order), or
// all of them when none does, as what the IPVS path would need.
func ipvsServices(cfg *config.Config, paths []servicePath) []config.Service {
	if cfg == nil {
		return nil
	}
	var on []config.Service
	for i, p := range paths {
		if p.Datapath == config.ModeIPVS {
			on = append(on, cfg.Services[i])
		}
	}
	if len(on) == 0 {
		return cfg.Services
	}
	return on
}

func (o probeOutput) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(o)
}

// writeTable prints the table, after note (where the mode came from) when
// there is one.
func (o probeOutput) writeTable(w io.Writer, note string) error {
	if note != "" {
		fmt.Fprintln(w, note)
	}
	return writeFacts(w, o)
}

// ipvsInUse: some of this host's traffic goes through IPVS, so what IPVS
// needs is needed now, not only were the IPVS path chosen.
func (o probeOutput) ipvsInUse() bool {
	return o.Decision.Mode == config.ModeIPVS ||
		slices.ContainsFunc(o.Services, func(p servicePath) bool { return p.Datapath == config.ModeIPVS })
}

// loadForProbe reads the config when it can: the probe is useful before
// any config exists, so a missing or broken file is mentioned, not fatal.
func loadForProbe(cmd *cobra.Command, path string) (*config.Config, string) {
	cfg, err := config.Load(path)
	switch {
	case err == nil:
		return cfg, fmt.Sprintf("datapath.mode %s from %s", cfg.Datapath.Mode, path)
	case errors.Is(err, fs.ErrNotExist) && !cmd.Flags().Changed("config"):
		return nil, ""
	default:
		return nil, fmt.Sprintf("%s not used (%v); judging datapath.mode auto", path, firstLine(err))
	}
}

// moduleNeed is one kernel module the config's IPVS services need, and
// whether the host has it.
type moduleNeed struct {
	Module string `json:"module"`
	State  string `json:"state"` // loaded | built in | loadable | missing
}

// neededModules lists ip_vs and the scheduler modules services would need
// on the IPVS data path.
func neededModules(services []config.Service, r loader.Report) []moduleNeed {
	if len(services) == 0 {
		return []moduleNeed{}
	}
	var scheds []string
	for _, s := range services {
		scheds = append(scheds, s.Scheduler)
	}
	mods, err := ipvs.Needed(scheds)
	if err != nil {
		return []moduleNeed{{Module: err.Error(), State: "unknown"}}
	}
	out := make([]moduleNeed, 0, len(mods))
	for _, m := range mods {
		n := moduleNeed{Module: m, State: "missing"}
		if m == "ip_vs" {
			switch {
			case r.IPVS.Loaded || r.IPVS.Family.Supported:
				n.State = "loaded"
			case r.IPVS.Builtin:
				n.State = "built in"
			case r.IPVS.Loadable:
				n.State = "loadable"
			}
		} else {
			sched := strings.TrimPrefix(m, "ip_vs_")
			switch {
			case slices.Contains(r.IPVS.LoadedSchedulers, sched):
				n.State = "loaded"
			case slices.Contains(r.IPVS.Schedulers, sched):
				n.State = "loadable"
			}
		}
		out = append(out, n)
	}
	return out
}

// writeFacts writes the probe's facts, the decision and the path each
// service takes as aligned rows, then what the IPVS path needs: loader
// finds out what the kernel has, and this is how a person reads it.
func writeFacts(w io.Writer, o probeOutput) error {
	r, d := o.Report, o.Decision
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	row := func(key, value string) { fmt.Fprintf(tw, "%s\t%s\n", key, value) }

	if r.KernelReleaseError != "" {
		row("kernel", "unknown: "+r.KernelReleaseError)
	} else {
		row("kernel", r.KernelRelease)
	}
	btf := yesNo(r.BTF.Present, r.BTF.Error) + "  " + r.BTF.Path
	row("BTF", btf)
	bpffs := yesNo(r.BPFFS.Mounted, r.BPFFS.Error)
	if r.BPFFS.Mounted {
		bpffs += "  " + strings.Join(r.BPFFS.Mounts, " ")
	}
	row("bpffs", bpffs)
	row("XDP program", yesNo(r.XDP.Supported, r.XDP.Error))
	row("sched_cls program", yesNo(r.SchedCLS.Supported, r.SchedCLS.Error))
	row("XDP link", yesNo(r.XDPLink.Supported, r.XDPLink.Error))
	row("tcx link", yesNo(r.TCX.Supported, r.TCX.Error))
	if m := r.MmapableArrays; m.Supported || m.Error != "" {
		row("mappable arrays", yesNo(m.Supported, m.Error))
	}

	if r.Capabilities.Error != "" {
		row("capabilities", "unknown: "+r.Capabilities.Error)
	} else {
		var have, missing []string
		for _, name := range loader.CapabilityNames() {
			if r.Capabilities.Effective[name] {
				have = append(have, name)
			} else {
				missing = append(missing, name)
			}
		}
		row("capabilities", wordsOrNone(have)+"  (CapEff "+r.Capabilities.CapEff+")")
		row("missing capabilities", wordsOrNone(missing))
	}

	// What this host runs now comes first, ending with the choice and
	// the path each service takes; what the IPVS path needs comes after,
	// under its own heading, so that "ip_vs: missing" under an eBPF
	// choice reads as what it is: what IPVS would need, not a blocker.
	row("datapath", d.Mode)
	row("reason", d.Reason)
	for _, warn := range d.Warnings {
		row("warning", warn)
	}
	for _, p := range o.Services {
		row("service", fmt.Sprintf("%s: %s (forward %s)", p.Service, p.Datapath, p.Forward))
	}
	inUse, needs, need := "not in use here", "would need", "would need"
	if o.ipvsInUse() {
		inUse, needs, need = "in use", "needs", "config needs"
	}
	fmt.Fprintf(tw, "\nIPVS data path (%s): what it %s\n", inUse, needs)
	i := r.IPVS
	row("IPVS family", yesNo(i.Family.Supported, i.Family.Error))
	row("ip_vs", strings.Join([]string{
		choice(i.Loaded, "loaded", "not loaded"),
		choice(i.Builtin, "built in", "not built in"),
		choice(i.Loadable, "module available", "no module"),
	}, ", "))
	row("IPVS schedulers", wordsOrNone(i.Schedulers)+"  (loaded: "+wordsOrNone(i.LoadedSchedulers)+")")
	for _, p := range i.Problems {
		row("IPVS problem", p)
	}
	row("IPVS usable", yesNo(i.Usable(), ""))
	for _, n := range o.IPVSNeeded {
		row(need, n.Module+": "+n.State)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("format probe table: %w", err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write probe table: %w", err)
	}
	return nil
}

func yesNo(ok bool, why string) string {
	switch {
	case ok:
		return "yes"
	case why != "":
		return "no: " + why
	default:
		return "no"
	}
}

func choice(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// wordsOrNone joins s with spaces, or says "none".
func wordsOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, " ")
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
