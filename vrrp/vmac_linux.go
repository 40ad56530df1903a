package vrrp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vmacAlias marks a macvlan as made by halb (the link's ifalias, which
// `ip -d link` shows): halb removes or reuses only a link that carries it
// and has the parent and MAC it would have made, never someone else's
// link that happens to have the name.
const vmacAlias = "halb vrrp vmac"

// vmacSysctls make the VMAC interface answer ARP only for the VIPs it
// holds, and accept what it sends to itself (keepalived's settings). IPv6 gets no
// link-local address on the VMAC: both nodes' VMACs share one MAC, and a
// backup sending DAD or router solicitations from it would move the MAC on
// the switch.
var vmacSysctls = []struct{ path, value string }{
	{"ipv4/conf/%s/arp_ignore", "1"},
	{"ipv4/conf/%s/arp_filter", "0"},
	{"ipv4/conf/%s/accept_local", "1"},
	{"ipv4/conf/%s/rp_filter", "0"},
	{"ipv6/conf/%s/addr_gen_mode", "1"},
}

// On the base interface: answer ARP only for its own addresses, and never
// ask with a VIP as the sender address (which would teach the LAN the base
// interface's MAC for the VIP when the VIP's replies leave through it).
var baseSysctls = []struct{ path, value string }{
	{"ipv4/conf/%s/arp_ignore", "1"},
	{"ipv4/conf/%s/arp_filter", "1"},
	{"ipv4/conf/%s/arp_announce", "2"},
}

func setSysctls(ifname string, list []struct{ path, value string }) error {
	var errs []error
	for _, s := range list {
		p := filepath.Join("/proc/sys/net", fmt.Sprintf(s.path, ifname))
		if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("sysctl %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// The base interface's settings belong to the host: halb changes them for
// as long as one of its VMACs sits on the interface, and puts back, when
// the last one goes, each value it changed that is still what halb wrote.
// keepalived does the same for arp_ignore and arp_filter (a reference
// count per base interface, reset with the last VMAC), so a user who
// moves from it expects the interface back as it was; a value someone
// changed since is theirs and stays. What a halb that was killed changed
// cannot be known by the next one (it finds the values already set), and
// stays.
var baseUsers = struct {
	sync.Mutex
	m map[baseKey]*baseUse
}{m: map[baseKey]*baseUse{}}

// baseKey names a base interface by network namespace and index, so that
// two namespaces' interfaces with one index (tests run several) never
// share an entry.
type baseKey struct {
	netns uint64
	index int
}

// baseUse is one base interface's VMACs and the values halb changed on it.
type baseUse struct {
	name  string
	vmacs map[string]bool
	saved []savedSysctl
}

type savedSysctl struct{ path, was, set string }

func currentBaseKey(index int) baseKey {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return baseKey{index: index}
	}
	return baseKey{netns: st.Ino, index: index}
}

// useBase records that vmac needs base's settings and, if it is the first
// VMAC there, applies them, keeping the values they replace. It returns
// release, which undoes exactly this call.
func useBase(base netlink.Link, vmac string) (release func(), err error) {
	key := currentBaseKey(base.Attrs().Index)
	baseUsers.Lock()
	defer baseUsers.Unlock()
	u := baseUsers.m[key]
	if u == nil {
		u = &baseUse{name: base.Attrs().Name, vmacs: map[string]bool{}}
		for _, s := range baseSysctls {
			p := filepath.Join("/proc/sys/net", fmt.Sprintf(s.path, u.name))
			was, rerr := os.ReadFile(p)
			if rerr != nil {
				continue // no such setting here (no IPv4 on it): nothing to set
			}
			if w := strings.TrimSpace(string(was)); w != s.value {
				u.saved = append(u.saved, savedSysctl{path: p, was: w, set: s.value})
			}
		}
		if err := setSysctls(u.name, baseSysctls); err != nil {
			restoreSysctls(u.saved)
			return nil, err
		}
		baseUsers.m[key] = u
	}
	added := !u.vmacs[vmac]
	u.vmacs[vmac] = true
	return func() {
		if added {
			releaseBase(key, vmac)
		}
	}, nil
}

// adoptBase records that vmac, found from an earlier run, sits on base:
// the values it replaced are unknown, so none is put back.
func adoptBase(base netlink.Link, vmac string) {
	key := currentBaseKey(base.Attrs().Index)
	baseUsers.Lock()
	defer baseUsers.Unlock()
	u := baseUsers.m[key]
	if u == nil {
		u = &baseUse{name: base.Attrs().Name, vmacs: map[string]bool{}}
		baseUsers.m[key] = u
	}
	u.vmacs[vmac] = true
}

// releaseBase forgets vmac on its base interface and, with the last VMAC
// gone, puts back what halb changed there.
func releaseBase(key baseKey, vmac string) {
	baseUsers.Lock()
	defer baseUsers.Unlock()
	u := baseUsers.m[key]
	if u == nil || !u.vmacs[vmac] {
		return
	}
	delete(u.vmacs, vmac)
	if len(u.vmacs) > 0 {
		return
	}
	delete(baseUsers.m, key)
	restoreSysctls(u.saved)
}

// restoreSysctls writes back each saved value whose setting still holds
// what halb wrote; one changed since, or gone with its interface, is left.
func restoreSysctls(saved []savedSysctl) {
	for _, s := range saved {
		now, err := os.ReadFile(s.path)
		if err != nil || strings.TrimSpace(string(now)) != s.set {
			continue
		}
		_ = os.WriteFile(s.path, []byte(s.was), 0o644)
	}
}

// ensureVMAC makes (or finds) the instance's macvlan on base, private
// mode, with the virtual MAC, configured and up. A link of that name that
// halb did not make is left alone, and is an error. A failure leaves the
// host as the call found it: the link it made is deleted, and the base
// interface's settings it changed are put back.
func ensureVMAC(base netlink.Link, vrid int, v6 bool) (_ netlink.Link, err error) {
	name := vmacName(vrid, v6, base.Attrs().Index)
	mac := virtualMAC(vrid, v6)
	if l, err := netlink.LinkByName(name); err == nil {
		if !isOwnVMAC(l, base.Attrs().Index, mac) {
			return nil, fmt.Errorf("interface %s exists and is not the VMAC halb makes on %s (a macvlan with MAC %s and alias %q): remove or rename it",
				name, base.Attrs().Name, mac, vmacAlias)
		}
		adoptBase(base, name)
		return l, netlink.LinkSetUp(l)
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: base.Attrs().Index, HardwareAddr: mac},
		Mode:      netlink.MACVLAN_MODE_PRIVATE,
	}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("create VMAC %s on %s: %w", name, base.Attrs().Name, err)
	}
	// From here every failure deletes the link this call made, found by
	// the index the kernel gave it (a link of that name made by someone
	// else in between is not touched).
	created := mv.Attrs().Index
	defer func() {
		if err == nil {
			return
		}
		if l, lerr := netlink.LinkByIndex(created); lerr == nil && l.Attrs().Name == name {
			if derr := netlink.LinkDel(l); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove VMAC %s again: %w", name, derr))
			}
		}
	}()
	// The kernel takes no alias at creation: set it now, and take back a
	// link that cannot be marked (nothing would ever remove it).
	if err := netlink.LinkSetAlias(mv, vmacAlias); err != nil {
		return nil, fmt.Errorf("mark VMAC %s as halb's: %w", name, err)
	}
	if err := setSysctls(name, vmacSysctls); err != nil {
		return nil, err
	}
	release, err := useBase(base, name)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	l, err := netlink.LinkByIndex(created)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			if other := macvlanWithMAC(base.Attrs().Index, mac, l.Attrs().Index); other != "" {
				err = fmt.Errorf("%w: %s on %s already has MAC %s (keepalived's VMAC, or one an older halb left): remove it", err, other, base.Attrs().Name, mac)
			}
		}
		return nil, fmt.Errorf("bring up VMAC %s: %w", name, err)
	}
	return l, nil
}

// macvlanWithMAC names another link on the interface with index base that
// has mac, "" when there is none: the kernel lets only one of them up.
func macvlanWithMAC(base int, mac net.HardwareAddr, except int) string {
	links, err := netlink.LinkList()
	if err != nil {
		return ""
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Index != except && a.ParentIndex == base && a.HardwareAddr.String() == mac.String() {
			return a.Name
		}
	}
	return ""
}

// isOwnVMAC reports whether l is a macvlan halb made on the interface with
// index base for mac.
func isOwnVMAC(l netlink.Link, base int, mac net.HardwareAddr) bool {
	_, ok := l.(*netlink.Macvlan)
	a := l.Attrs()
	return ok && a.ParentIndex == base && a.HardwareAddr.String() == mac.String() && a.Alias == vmacAlias
}

// removeVMAC deletes the instance's macvlan on the interface with index
// base, if it is there and halb made it; with the last VMAC on base gone,
// the base interface's settings halb changed are put back.
func removeVMAC(vrid int, v6 bool, base int) error {
	name := vmacName(vrid, v6, base)
	defer releaseBase(currentBaseKey(base), name)
	l, err := netlink.LinkByName(name)
	if err != nil || !isOwnVMAC(l, base, virtualMAC(vrid, v6)) {
		return nil
	}
	return netlink.LinkDel(l)
}
