// This file says which kernel modules IPVS needs; internal/kmod loads them.

package ipvs

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/kmod"
)

// schedulers are IPVS's schedulers as services.scheduler names them; each is
// the module ip_vs_<name>.
var schedulers = config.IPVSSchedulers()

// Needed returns the modules a director needs for services that use the
// given schedulers: ip_vs first, then ip_vs_<scheduler> once each, in the
// order the schedulers are first used. Each is loaded on its own, rather
// than left to the kernel's on-demand loading, which some distributions
// switch off, so that a missing one is named.
//
// The forwarding method adds nothing. NAT is ip_vs itself, and the conntrack
// it needs is a dependency modules.dep lists. Tunnelling needs neither ipip
// nor ip6_tunnel on the director: ip_vs_tunnel_xmit (ip_vs_xmit.c) pushes the
// outer IPv4 or IPv6 header, and the GUE or GRE header, itself and sends the
// packet with ip_local_out, never through a tunl0 or ip6tnl0 device. The
// helpers it calls (iptunnel_handle_offloads, gre_build_header) are in the
// core kernel or inline. ipip and ip6_tunnel are what the backends need, to
// take the packet out of the tunnel, and halb does not run there.
func Needed(scheds []string) ([]string, error) {
	mods := []string{"ip_vs"}
	for _, s := range scheds {
		if !slices.Contains(schedulers, s) {
			return nil, fmt.Errorf("scheduler %q: IPVS has no such scheduler (use one of %s)", s, strings.Join(schedulers, ", "))
		}
		if m := "ip_vs_" + s; !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	return mods, nil
}

// hostModules is the host's module loader, telling which kernel option
// provides an IPVS module when the kernel ships none.
func hostModules(log *slog.Logger) kmod.Loader {
	return kmod.Loader{Log: log, KernelConfig: kernelConfig}
}

// kernelConfig names the kernel option of an IPVS module (ip_vs_rr is
// CONFIG_IP_VS_RR), or "" for any other module.
func kernelConfig(module string) string {
	if module != "ip_vs" && !strings.HasPrefix(module, "ip_vs_") {
		return ""
	}
	return "CONFIG_" + strings.ToUpper(module)
}
