package config

import (
	"fmt"
	"strings"
)

// NoAccept reports whether the instance, as Master, must refuse packets
// addressed to its VIPs (RFC 5798 §6.4.3): it speaks VRRPv3, has accept
// false, and is not the address owner (priority 255). VRRPv2 (RFC 3768)
// has no Accept_Mode, so a v2 instance accepts whatever accept says.
func (in *Instance) NoAccept() bool {
	return in.Version == 3 && !in.Accept && in.Priority != 255 && len(in.VirtualIPs) > 0
}

// Notes returns what a person should know about a valid configuration that
// is not a problem with it: `halb check` prints them after "valid". Their
// lines come from the file at path when it can be read.
func Notes(path string, c *Config) []Problem {
	var notes []Problem
	for i, in := range c.VRRP.Instances {
		if !in.NoAccept() {
			continue
		}
		held := in.HeldVIPs() // the excluded too: the filter holds them
		vips := make([]string, len(held))
		for j, p := range held {
			vips[j] = p.Address.Addr().String()
		}
		services := 0
		for _, s := range c.Services {
			for _, p := range held {
				if s.HasVIP(p.Address.Addr()) {
					services++
				}
			}
		}
		except := "ICMP errors and neighbour discovery"
		if services > 0 {
			except = "halb's " + plural(services, "service") + " on them, " + except
		}
		notes = append(notes, Problem{
			Path: fmt.Sprintf("vrrp.instances[%d].accept", i),
			Msg: fmt.Sprintf("note: accept is false (VRRPv3 Accept_Mode): as MASTER this node drops packets to %s "+
				"except %s, so ping, ssh and any other server on those addresses get no answer; "+
				"set accept: true to serve them", strings.Join(vips, ", "), except)})
	}
	if len(notes) == 0 {
		return nil
	}
	Locate(path, notes)
	return notes
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
