package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/vrrp"
)

// acceptConfig is a config whose one v3 instance is NoAccept: it needs the
// filter, with a rule for its service.
func acceptConfig() *config.Config {
	vip := netip.MustParseAddr("192.0.2.100")
	return &config.Config{
		VRRP: config.VRRP{Instances: []config.Instance{{Name: "VI_A", Interface: "eth0", VRID: 51, Version: 3, Priority: 100,
			VirtualIPs: config.PlainVIPs(netip.PrefixFrom(vip, 24))}}},
		Services: []config.Service{{Name: "web", VIP: vip, Port: 80, Protocol: "tcp"}},
	}
}

// The accept filter comes back at the next apply (each resync) when
// `nft flush ruleset` removed it or someone changed it, with a log line
// saying so; and a second filter in the same namespace, of a second
// halb, neither replaces the first one's table nor removes it.
func TestAcceptFilterRestoredAndOwned(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.New(t)
	lockDir := t.TempDir()
	cfg := acceptConfig()
	want := vrrp.AcceptRules(cfg)
	err := ns.Do(func() error {
		var logs halbtest.Log
		var level slog.LevelVar
		a, err := newAcceptFilter(NewLogger(&logs, "text", &level), lockDir)
		if err != nil {
			return err
		}
		if err := a.claimFor(cfg); err != nil {
			return err
		}
		a.apply(cfg)
		if ok, why := a.table.Holds(want); !ok {
			return fmt.Errorf("after apply the kernel does not hold the filter: %s\n%s", why, logs.String())
		}
		a.apply(cfg) // nothing changed: nothing logged
		if n := strings.Count(logs.String(), "reinstalling"); n != 0 {
			t.Errorf("an unchanged filter was reinstalled:\n%s", logs.String())
		}

		// What nftables.service does at start and reload.
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		conn.FlushRuleset()
		if err := conn.Flush(); err != nil {
			return err
		}
		if a.table.Installed() {
			return errors.New("the table survived nft flush ruleset")
		}
		a.apply(cfg)
		if ok, why := a.table.Holds(want); !ok {
			t.Errorf("after a flush and a resync: %s", why)
		}
		if !strings.Contains(logs.String(), `msg="accept_mode filter changed or removed outside halb; reinstalling" table="inet halb_accept" found="the table is gone"`) {
			t.Errorf("the reinstall is not logged:\n%s", logs.String())
		}

		// A rule someone added to halb's chain.
		table := &nftables.Table{Family: nftables.TableFamilyINet, Name: vrrp.AcceptTableName}
		conn.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: "input", Table: table},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		if err := conn.Flush(); err != nil {
			return err
		}
		if ok, _ := a.table.Holds(want); ok {
			return errors.New("Holds misses a rule added to the chain")
		}
		a.apply(cfg)
		if ok, why := a.table.Holds(want); !ok {
			t.Errorf("after a rule was added and a resync: %s", why)
		}
		if !strings.Contains(logs.String(), "found=\"it has "+strconv.Itoa(len(want)+1)+" rules, not halb's "+strconv.Itoa(len(want))+"\"") {
			t.Errorf("the changed table is not logged:\n%s", logs.String())
		}

		// A second halb's filter: refused at start, and it touches
		// nothing, neither on apply nor at its exit.
		var logs2 halbtest.Log
		b, err := newAcceptFilter(NewLogger(&logs2, "text", &level), lockDir)
		if err != nil {
			return err
		}
		other := acceptConfig()
		other.VRRP.Instances[0].VirtualIPs = config.PlainVIPs(netip.MustParsePrefix("192.0.2.101/24"))
		other.Services[0].VIP = netip.MustParseAddr("192.0.2.101")
		var locked *LockedError
		if err := b.claimFor(other); !errors.As(err, &locked) || !strings.Contains(err.Error(), "accept_mode filter (nftables table inet halb_accept) is in use by halb pid") {
			t.Errorf("a second filter's claim: %v, want it refused naming the holder", err)
		}
		b.apply(other)
		b.apply(&config.Config{})
		b.remove()
		if ok, why := a.table.Holds(want); !ok {
			t.Errorf("after a second halb's filter applied and was removed, the first one's: %s", why)
		}
		if !strings.Contains(logs2.String(), "accept_mode filter not installed") {
			t.Errorf("the second filter did not say why it is not installed:\n%s", logs2.String())
		}
		a.remove()
		if a.table.Installed() {
			t.Error("the owner's remove left the table")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
