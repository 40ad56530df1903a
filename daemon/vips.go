package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
)

// vipHome keeps the VIPs of the announce: always services on this node
// while halb runs, so that the kernel takes what the data path passes up
// to them (a ping, a port no service has), without any node answering
// ARP or ND for them: every node holds them, and the routers reach each
// over BGP (ECMP), never over a LAN.
//
//   - Each VIP is on lo, as a /32 or /128. IPv6 answers neighbour
//     solicitations only for the addresses of the interface asked, so lo's
//     are never answered.
//   - IPv4 answers ARP for any local address on every interface by
//     default, so while an IPv4 VIP is there halb sets
//     net.ipv4.conf.all.arp_ignore=1 (answer only for addresses of the
//     interface asked) and arp_announce=2 (never ask with a VIP as the
//     sender address). "all" covers interfaces that come later too; the
//     kernel takes the higher of all and each interface's own value.
//
// What halb changed is put back when the last always VIP goes (a reload,
// a stop): the addresses it added, and each sysctl it changed that still
// holds the value halb wrote. An address already on lo that halb did not
// add is served as it is and never removed. A halb that is killed leaves
// the VIPs on lo and the sysctls set; it wrote down what it changed in a
// state file (in LockDir, one per network namespace), and the next halb
// adopts that and puts it all back at its own stop. A reboot clears it all.
//
// The state file is named by the namespace's inode, which the kernel
// gives again to a namespace made after that one is gone, so the file
// also holds the namespace's cookie (SO_NETNS_COOKIE, never reused while
// the host runs): a file left in a namespace that is gone is not adopted,
// or halb would take away addresses and sysctls it never set in this one.
type vipHome struct {
	log    *slog.Logger
	state  string // the state file's path
	cookie uint64 // the network namespace's; 0 on a kernel without (before 5.14)
	done   vipState
	// foreign are the VIPs found on lo that halb did not add, logged
	// once.
	foreign map[netip.Prefix]bool
}

// vipState is what halb changed on the host: the state file's content.
type vipState struct {
	NetnsCookie uint64         `json:"netns_cookie,omitempty"`
	Added       []netip.Prefix `json:"added"`
	Sysctls     []savedSysctl  `json:"sysctls"`
}

// savedSysctl is one value halb changed: Was is put back while the
// setting still holds Set.
type savedSysctl struct {
	Path string `json:"path"`
	Was  string `json:"was"`
	Set  string `json:"set"`
}

// arpSysctls keep every interface from answering ARP for the VIPs on lo.
var arpSysctls = []struct{ path, value string }{
	{"/proc/sys/net/ipv4/conf/all/arp_ignore", "1"},
	{"/proc/sys/net/ipv4/conf/all/arp_announce", "2"},
}

// newVIPHome reads what a killed halb left in dir's state file.
func newVIPHome(log *slog.Logger, dir string) (*vipHome, error) {
	netns, err := netnsID()
	if err != nil {
		return nil, err
	}
	cookie, err := netnsCookie()
	if err != nil {
		return nil, err
	}
	h := &vipHome{log: log, state: filepath.Join(dir, "bgp-vips-netns"+netns+".json"), cookie: cookie, foreign: map[netip.Prefix]bool{}}
	data, err := os.ReadFile(h.state)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return h, nil
	case err != nil:
		return nil, fmt.Errorf("bgp vips state %s: %w", h.state, err)
	}
	if err := json.Unmarshal(data, &h.done); err != nil {
		return nil, fmt.Errorf("bgp vips state %s: %w; remove it", h.state, err)
	}
	if h.done.NetnsCookie != 0 && h.done.NetnsCookie != h.cookie { // 0: a halb from before cookies
		log.Warn("bgp vips: state left by a halb in a network namespace that is gone, which had this one's inode; not adopted",
			"state", h.state, "cookie", h.done.NetnsCookie, "this_cookie", h.cookie)
		h.done = vipState{}
		return h, nil
	}
	log.Info("bgp vips: adopting what a halb that did not stop left", "state", h.state, "vips", len(h.done.Added), "sysctls", len(h.done.Sysctls))
	return h, nil
}

// apply makes lo hold exactly vips (of those halb adds) and the ARP
// sysctls set while one of them is IPv4; with none, it puts everything
// back.
func (h *vipHome) apply(vips []netip.Addr) error {
	if len(vips) == 0 {
		return h.remove()
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("bgp vips: lo: %w", err)
	}
	var errs []error
	if slices.ContainsFunc(vips, netip.Addr.Is4) {
		errs = append(errs, h.setSysctls())
	}
	errs = append(errs, h.placeAddrs(lo, vips), h.save())
	return errors.Join(errs...)
}

// placeAddrs adds the VIPs lo lacks and removes those halb added that
// are no longer wanted.
func (h *vipHome) placeAddrs(lo netlink.Link, vips []netip.Addr) error {
	have, err := addrsOf(lo)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	var errs []error
	for _, v := range vips {
		p := netip.PrefixFrom(v, v.BitLen())
		want[p] = true
		switch {
		case slices.Contains(h.done.Added, p):
			if have[p] {
				continue
			}
		case have[p]:
			if !h.foreign[p] {
				h.foreign[p] = true
				h.log.Warn("vip already on lo and not added by halb; served as it is and never removed", "vip", p)
			}
			continue
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, fmt.Errorf("bgp vips: add %s to lo: %w", p, err))
			continue
		}
		if !slices.Contains(h.done.Added, p) {
			h.done.Added = append(h.done.Added, p)
		}
		h.log.Info("vip placed on lo for announce: always", "vip", p)
	}
	h.done.Added = slices.DeleteFunc(h.done.Added, func(p netip.Prefix) bool {
		if want[p] {
			return false
		}
		errs = append(errs, delAddr(lo, p))
		h.log.Info("vip removed from lo", "vip", p)
		return true
	})
	return errors.Join(errs...)
}

// setSysctls sets arpSysctls, keeping each value it replaces (once: a
// value already saved is what the host had before halb).
func (h *vipHome) setSysctls() error {
	var errs []error
	for _, s := range arpSysctls {
		cur, err := os.ReadFile(s.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", s.path, err))
			continue
		}
		was := strings.TrimSpace(string(cur))
		if was == s.value {
			continue
		}
		if !slices.ContainsFunc(h.done.Sysctls, func(v savedSysctl) bool { return v.Path == s.path }) {
			h.done.Sysctls = append(h.done.Sysctls, savedSysctl{Path: s.path, Was: was, Set: s.value})
		}
		if err := os.WriteFile(s.path, []byte(s.value), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", s.path, err))
			continue
		}
		h.log.Info("sysctl set while an announce: always vip is on lo", "sysctl", s.path, "value", s.value, "was", was)
	}
	return errors.Join(errs...)
}

// remove puts back what halb changed: the VIPs it added leave lo, and
// each sysctl still holding what halb wrote gets its old value (one set
// otherwise since is someone else's, and stays).
func (h *vipHome) remove() error {
	if len(h.done.Added) == 0 && len(h.done.Sysctls) == 0 {
		return nil
	}
	var errs []error
	if lo, err := netlink.LinkByName("lo"); err != nil {
		errs = append(errs, err)
	} else {
		for _, p := range h.done.Added {
			errs = append(errs, delAddr(lo, p))
			h.log.Info("vip removed from lo", "vip", p)
		}
	}
	for _, s := range h.done.Sysctls {
		cur, err := os.ReadFile(s.Path)
		if err != nil || strings.TrimSpace(string(cur)) != s.Set {
			h.log.Info("sysctl changed since halb set it; left as it is", "sysctl", s.Path)
			continue
		}
		if err := os.WriteFile(s.Path, []byte(s.Was), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s: put back %s: %w", s.Path, s.Was, err))
			continue
		}
		h.log.Info("sysctl put back", "sysctl", s.Path, "value", s.Was)
	}
	if err := errors.Join(errs...); err != nil {
		_ = h.save() // what is left, for the next halb
		return err
	}
	h.done = vipState{}
	if err := os.Remove(h.state); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// save writes what halb changed to the state file, or removes it when
// nothing is changed.
func (h *vipHome) save() error {
	if len(h.done.Added) == 0 && len(h.done.Sysctls) == 0 {
		if err := os.Remove(h.state); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	h.done.NetnsCookie = h.cookie
	data, err := json.Marshal(h.done)
	if err != nil {
		return err
	}
	if err := makeLockDir(filepath.Dir(h.state)); err != nil {
		return err
	}
	tmp := h.state + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, h.state)
}

// addrsOf is the set of l's addresses.
func addrsOf(l netlink.Link) (map[netip.Prefix]bool, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("bgp vips: addresses of lo: %w", err)
	}
	out := map[netip.Prefix]bool{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out[netip.PrefixFrom(ip.Unmap(), ones)] = true
	}
	return out, nil
}

func delAddr(lo netlink.Link, p netip.Prefix) error {
	err := netlink.AddrDel(lo, &netlink.Addr{IPNet: ipNet(p)})
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("bgp vips: remove %s from lo: %w", p, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// alwaysVIPs are the VIPs of the services announced with announce:
// always, each once, in configuration order.
func alwaysVIPs(services []config.Service) []netip.Addr {
	var out []netip.Addr
	for _, s := range services {
		for _, p := range s.Pairs() {
			if s.Announce.When == config.AnnounceAlways && !slices.Contains(out, p.Addr()) {
				out = append(out, p.Addr())
			}
		}
	}
	return out
}

// AlwaysVIPsNote says, for `halb check`, where halb run puts the VIPs of
// the announce: always services and how it keeps the LAN from reaching
// them over ARP; "" when there are none.
func AlwaysVIPsNote(services []config.Service) string {
	vips := alwaysVIPs(services)
	if len(vips) == 0 {
		return ""
	}
	s := make([]string, len(vips))
	v4 := false
	for i, v := range vips {
		s[i] = netip.PrefixFrom(v, v.BitLen()).String()
		v4 = v4 || v.Is4()
	}
	note := "announce: always vips " + strings.Join(s, ", ") + " go on lo while halb runs, and leave at stop"
	if v4 {
		note += "; no interface answers ARP for them: halb sets net.ipv4.conf.all.arp_ignore=1 and arp_announce=2, and puts back the values it replaced at stop"
	}
	return note + " (IPv6 answers no neighbour solicitation for lo's addresses)"
}

// netnsCookie is the cookie of the network namespace halb runs in: 0 on
// a kernel that has none (before 5.14), where the state file is trusted
// by its name alone.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	switch {
	case errors.Is(err, unix.ENOPROTOOPT):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("network namespace cookie: %w", err)
	}
	return cookie, nil
}
