package daemon

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/vrrp"
)

// announceInput is what decides whether one service's VIP is announced
// over BGP: its announce mode and what this node knows of it now.
type announceInput struct {
	Mode string // config.Announce*
	// Served: the data path programmed the service (an apply that failed
	// for it leaves it unserved).
	Served bool
	// Healthy is how many of its backends are live, Quorum how many it
	// needs (health.Live, the service's quorum, at least 1).
	Healthy, Quorum int
	// Instance is the VRRP instance holding the VIP, "" when none runs;
	// State is its state.
	Instance string
	State    vrrp.State
}

// decideAnnounce says whether a service's VIP is announced and why, in
// the words `halb status` shows. It is the one place the rule lives:
//
//   - always: while the data path serves the service and its quorum of
//     healthy backends holds; a node without them is withdrawn, so that
//     the routers send its share of the flows to the nodes that have
//     them;
//   - master: while the VRRP instance holding the VIP is MASTER;
//   - never: not announced.
//
// A drain (SIGTERM, `halb drain`) overrides it: see bgpRunner.
func decideAnnounce(in announceInput) (bool, string) {
	switch in.Mode {
	case config.AnnounceAlways:
		switch {
		case !in.Served:
			return false, "not served: the data path did not program the service"
		case in.Healthy < in.Quorum:
			return false, fmt.Sprintf("quorum lost: %d healthy, quorum %d", in.Healthy, in.Quorum)
		}
		return true, fmt.Sprintf("serving: %d healthy, quorum %d", in.Healthy, in.Quorum)
	case config.AnnounceMaster:
		switch {
		case in.Instance == "":
			return false, "no running vrrp instance holds the vip"
		case in.State != vrrp.Master:
			return false, fmt.Sprintf("vrrp instance %s is %s", in.Instance, in.State)
		}
		return true, fmt.Sprintf("vrrp instance %s is %s", in.Instance, in.State)
	}
	return false, "announce: never"
}

// holderOf is the VRRP instance, of those running, whose virtual_ips (or
// virtual_ips_excluded) hold vip, and its state; "" when none does.
func holderOf(vip netip.Addr, insts []vrrp.Status) (string, vrrp.State) {
	for _, st := range insts {
		for _, p := range slices.Concat(st.VirtualIPs, st.Excluded) {
			if p.Addr() == vip {
				return st.Name, st.State
			}
		}
	}
	return "", vrrp.Initialize
}
