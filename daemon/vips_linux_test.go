package daemon

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/halb-lb/halb/internal/netnstest"
)

// The always VIPs go on lo with the ARP sysctls set, and everything halb
// changed is put back at the end, exactly: an address it did not add
// stays, and so does a sysctl someone changed since. What a killed halb
// left (its state file) is put back by the next one.
func TestVIPHomePutsBack(t *testing.T) {
	ns := netnstest.New(t)
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	v4, v6, mine := netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("2001:db8::100"), netip.MustParseAddr("192.0.2.200")
	err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		// The host's own: arp_announce already 1, an address of its own
		// on lo that is also a VIP.
		writeSysctl(t, "arp_announce", "1")
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(mine, 32))}); err != nil {
			return err
		}
		h, err := newVIPHome(log, dir)
		if err != nil {
			return err
		}
		if err := h.apply([]netip.Addr{v4, v6, mine}); err != nil {
			return err
		}
		checkLo(t, lo, map[string]bool{"192.0.2.100/32": true, "2001:db8::100/128": true, "192.0.2.200/32": true})
		checkSysctl(t, "arp_ignore", "1")
		checkSysctl(t, "arp_announce", "2")

		// A reload leaves v6 alone: v4 goes, and only it.
		if err := h.apply([]netip.Addr{v6}); err != nil {
			return err
		}
		checkLo(t, lo, map[string]bool{"192.0.2.100/32": false, "2001:db8::100/128": true, "192.0.2.200/32": true})

		// Killed: the next halb adopts the state file and puts back
		// what the first one changed.
		if err := h.apply([]netip.Addr{v4, v6}); err != nil {
			return err
		}
		next, err := newVIPHome(log, dir)
		if err != nil {
			return err
		}
		if err := next.remove(); err != nil {
			return err
		}
		checkLo(t, lo, map[string]bool{"192.0.2.100/32": false, "2001:db8::100/128": false, "192.0.2.200/32": true})
		checkSysctl(t, "arp_ignore", "0")
		checkSysctl(t, "arp_announce", "1")
		if _, err := os.Stat(next.state); !os.IsNotExist(err) {
			t.Errorf("state file left after everything was put back: %v", err)
		}

		// A sysctl changed by someone else meanwhile is theirs.
		h2, _ := newVIPHome(log, dir)
		if err := h2.apply([]netip.Addr{v4}); err != nil {
			return err
		}
		writeSysctl(t, "arp_ignore", "2")
		if err := h2.remove(); err != nil {
			return err
		}
		checkSysctl(t, "arp_ignore", "2")
		checkSysctl(t, "arp_announce", "1")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A state file left in a network namespace that is gone, whose inode
// this one has now, is not adopted: the address it lists, on lo here too
// but not added by halb, stays. One that this namespace's halb wrote is.
func TestVIPHomeForeignNamespaceState(t *testing.T) {
	ns := netnstest.New(t)
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	vip := netip.MustParsePrefix("192.0.2.100/32")
	err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(vip)}); err != nil {
			return err
		}
		h, err := newVIPHome(log, dir)
		if err != nil {
			return err
		}
		if h.cookie == 0 {
			t.Fatal("no network namespace cookie on this kernel (5.14 and later have one)")
		}
		// What the next halb does with the file: adopt it, then put back
		// what it lists at its stop.
		adoptAndStop := func(cookie uint64) error {
			data, err := json.Marshal(vipState{NetnsCookie: cookie, Added: []netip.Prefix{vip}})
			if err != nil {
				return err
			}
			if err := os.WriteFile(h.state, data, 0o600); err != nil {
				return err
			}
			next, err := newVIPHome(log, dir)
			if err != nil {
				return err
			}
			return next.remove()
		}
		if err := adoptAndStop(h.cookie + 1); err != nil {
			return err
		}
		checkLo(t, lo, map[string]bool{vip.String(): true})
		if err := adoptAndStop(h.cookie); err != nil {
			return err
		}
		checkLo(t, lo, map[string]bool{vip.String(): false})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func writeSysctl(t *testing.T, name, v string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/"+name, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkSysctl(t *testing.T, name, want string) {
	t.Helper()
	got, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("net.ipv4.conf.all.%s = %s, want %s", name, got, want)
	}
}

// checkLo checks, for each prefix, whether lo holds it.
func checkLo(t *testing.T, lo netlink.Link, want map[string]bool) {
	t.Helper()
	have, err := addrsOf(lo)
	if err != nil {
		t.Fatal(err)
	}
	for p, on := range want {
		if have[netip.MustParsePrefix(p)] != on {
			t.Errorf("%s on lo: %v, want %v", p, have[netip.MustParsePrefix(p)], on)
		}
	}
}
