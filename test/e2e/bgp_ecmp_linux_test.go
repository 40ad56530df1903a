package e2e

import (
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/halbtest"
)

// The hold time the nodes propose (the router offers the same). bgpHold
// is the shortest BGP allows, so that a lost node is withdrawn soon; with
// BFD the hold time is longer, so that a quick withdrawal shows that BFD
// made it.
const (
	bgpHold    = 3 * time.Second
	bgpHoldBFD = 9 * time.Second
)

// TestBGP runs halb nodes against a real router, FRR's zebra and bgpd,
// on networks of their own, at once: see bgpECMP, bgpBFDAndDrain and
// bgpMaster for what each shows.
func TestBGP(t *testing.T) {
	frrtest.Require(t)
	bin := halbtest.Build(t)
	t.Run("ecmp", func(t *testing.T) {
		t.Parallel()
		bgpECMP(t, bin)
	})
	t.Run("bfd and drain", func(t *testing.T) {
		t.Parallel()
		bgpBFDAndDrain(t, bin)
	})
	t.Run("announce master", func(t *testing.T) {
		t.Parallel()
		bgpMaster(t, bin)
	})
}

// bgpECMP runs three halb nodes with announce: always and shows, one
// step after the other:
//
//   - the router's RIB holds the VIP with the three nodes as equal
//     (multipath) next hops, and its kernel route has the three;
//   - every node holds the VIP on lo, and none answers the router's ARP
//     request for it (each answers for its own address);
//   - 300 connections from one client through the router are served by
//     all three nodes (each node's counters) and spread over the
//     backends within ±25 %;
//   - every backend failing its health check withdraws the VIP from
//     every node, and their recovery announces it again;
//   - a node lost (off the network, its halb killed with SIGKILL) is
//     withdrawn by the router once the hold time expires, and at least
//     99 % of 200 connections held open across the loss complete a
//     request afterwards: the flows the router moves reach the same
//     backends through the other nodes, whose Maglev tables are the
//     lost node's.
func bgpECMP(t *testing.T, bin string) {
	bn := newBGPNet(t, bin, 3, false)
	bn.startAll(nodeSpec{announce: "always", holdTime: bgpHold, drainTime: time.Second})

	// The VIP is on every node, and no node answers ARP for it.
	for _, nd := range bn.nodes {
		if !holdsOnLo(t, nd.ns, vip) {
			t.Errorf("%s does not hold the VIP on lo", nd.name)
		}
	}
	if macs := arpWhoHas(t, bn.router, "eth0", bgpRouterLAN, bn.nodes[0].addr); len(macs) != 1 {
		t.Errorf("the router's ARP request for %s's address got %d answers %v, want one", bn.nodes[0].name, len(macs), macs)
	}
	if macs := arpWhoHas(t, bn.router, "eth0", bgpRouterLAN, vip); len(macs) != 0 {
		t.Errorf("the router's ARP request for the VIP got answers from %v, want none", macs)
	}

	// 300 connections over three nodes.
	before := bn.flows(t)
	counts := bn.client.spread(t, 40000, 300)
	after := bn.flows(t)
	t.Logf("300 connections through the router: backends %v", counts)
	checkSpread(t, "300 connections through the router", counts, 300)
	sum := uint64(0)
	for i, nd := range bn.nodes {
		n := after[i] - before[i]
		sum += n
		t.Logf("%s scheduled %d of the flows", nd.name, n)
		if n == 0 {
			t.Errorf("%s scheduled none of the 300 flows: the router did not spread them over it", nd.name)
		}
	}
	if sum < 300 {
		t.Errorf("the nodes scheduled %d flows for 300 connections", sum)
	}

	// All backends failing withdraws the VIP; their recovery announces
	// it again.
	for _, s := range bn.servers {
		s.stop()
	}
	took := bn.waitRoute("the VIP withdrawn by every node")
	t.Logf("the VIP left the router's RIB %s after the backends' servers stopped (health: fall %d × interval %s)",
		took.Round(time.Millisecond), daemonFall, daemonInterval)
	for _, s := range bn.servers {
		s.start()
	}
	took = bn.waitRoute("the VIP announced again by all three nodes", bn.nodes...)
	t.Logf("the VIP was back through three nodes %s after the servers started (health: rise %d × interval %s)",
		took.Round(time.Millisecond), daemonRise, daemonInterval)
	// A node announces the VIP again once its first backend is healthy;
	// the nodes' tables are the same again once every node has all
	// three.
	for _, nd := range bn.nodes {
		nd.waitLive("web", nd.name+": all three backends live again", 3)
	}
	if counts := bn.client.spread(t, 40400, 30); total(counts) != 30 {
		t.Errorf("after the recovery: %v", counts)
	}

	// A node lost: the hold timer.
	res := bn.loseNode(t, bn.nodes[1], 51000, false)
	t.Logf("%s lost: the router's RIB withdrew it %s after (hold time %s); %d of %d held connections completed a request afterwards",
		bn.nodes[1].name, res.withdrawn.Round(time.Millisecond), bgpHold, res.ok, nConns)
	if res.withdrawn > 2*bgpHold {
		t.Errorf("the router withdrew the lost node after %s, more than twice the hold time %s", res.withdrawn, bgpHold)
	}
	if len(res.failed) > nConns/100 {
		t.Errorf("%d of %d connections failed after the node was lost (at most 1%% may): %v", len(res.failed), nConns, res.failed)
	}
}

// flows is each node's count of flows scheduled for web, in node order.
func (bn *bgpNet) flows(t testing.TB) []uint64 {
	t.Helper()
	var out []uint64
	for _, nd := range bn.nodes {
		n, err := nd.newFlows()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

// lossResult is what loseNode measured.
type lossResult struct {
	withdrawn time.Duration // from the loss to the node's path leaving the router's RIB
	ok        int           // connections that completed a request afterwards
	failed    []string
}

// loseNode opens nConns connections from ports first and up, then loses
// node nd as a machine fails: its switch port goes down, so that it
// sends nothing more (no BGP notification, no TCP reset), and its halb
// is killed. It waits for the router to route the VIP through the other
// nodes alone, then has every connection make a request, at once, each
// within 20 s (TCP retransmits over the gap). With machineUp, only halb
// is killed: the node's kernel closes the session, and its data path,
// which outlives halb, forwards on.
func (bn *bgpNet) loseNode(t testing.TB, nd *bgpNode, first int, machineUp bool) lossResult {
	t.Helper()
	conns := bn.client.connectMany(t, first, nConns)
	spread := map[string]int{}
	for _, cn := range conns {
		spread[cn.backend]++
	}
	t.Logf("%d connections through the router: %v", nConns, spread)

	rest := bn.others(nd)
	lost := time.Now()
	if !machineUp {
		bn.unplug(nd)
	}
	nd.proc.Kill()
	res := lossResult{withdrawn: bn.withdrawnSince(lost, "the lost node withdrawn", nd)}
	nd.gone = true
	bn.waitRoute("the VIP through the other nodes", rest...)

	res.ok, res.failed = requestAll(conns, "after the loss")
	return res
}

// requestAll has every connection make a request at once, each within
// 20 s, and counts those that got their backend's answer.
func requestAll(conns []*conn, what string) (ok int, failed []string) {
	for i, err := range exchangeAll(conns, what) {
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", conns[i].backend, err))
		} else {
			ok++
		}
	}
	return ok, failed
}

// exchangeAll has every connection make one request at once, TCP
// retransmitting over a failover's gap (20 s at most), and returns each
// one's error, nil for its backend's answer.
func exchangeAll(conns []*conn, what string) []error {
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, cn := range conns {
		wg.Go(func() { errs[i] = cn.exchange(fmt.Sprintf("%s %d", what, i), 20*time.Second) })
	}
	wg.Wait()
	return errs
}

// others is the nodes still running but nd.
func (bn *bgpNet) others(nd *bgpNode) []*bgpNode {
	var out []*bgpNode
	for _, o := range bn.nodes {
		if o != nd && !o.gone {
			out = append(out, o)
		}
	}
	return out
}

// unplug takes node nd off the LAN: its switch port goes down.
func (bn *bgpNet) unplug(nd *bgpNode) {
	bn.t.Helper()
	port, err := bn.lan.h.LinkByIndex(nd.port)
	if err == nil {
		err = bn.lan.h.LinkSetDown(port)
	}
	if err != nil {
		bn.t.Fatalf("unplug %s: %v", nd.name, err)
	}
}

// bgpBFDAndDrain runs three halb nodes with announce: always and BFD on
// their sessions (100 ms × 3 both ways; the hold time 9 s), and shows:
//
//   - a node told to stop with SIGTERM withdraws the VIP, serves what
//     still arrives for drain_time while the router moves its flows to
//     the other nodes, and only then exits: none of 200 connections held
//     open through the drain fails an exchange;
//   - a node lost as in bgpECMP is withdrawn by the router long before
//     the hold time could expire (BFD), and at least 99 % of 200
//     connections held open across the loss complete a request
//     afterwards.
func bgpBFDAndDrain(t *testing.T, bin string) {
	const drainTime = 3 * time.Second
	bn := newBGPNet(t, bin, 3, true)
	bn.startAll(nodeSpec{announce: "always", holdTime: bgpHoldBFD, drainTime: drainTime, bfd: true})
	bn.bfdUp()

	nd := bn.nodes[2]
	dres := bn.drainNode(t, nd, drainTime, 52000)
	t.Logf("SIGTERM to %s: withdrawn from the router's RIB after %s, exited after %s (drain_time %s); %d exchanges on %d held connections, %d failed; %d completed a request after the exit",
		nd.name, dres.withdrawn.Round(time.Millisecond), dres.exited.Round(time.Millisecond), drainTime, dres.ok+len(dres.failed), nConns, len(dres.failed), dres.connsOK)
	if dres.exitedFirst {
		t.Errorf("%s exited before the router withdrew its route: it did not drain", nd.name)
	}
	if dres.exited < drainTime {
		t.Errorf("%s exited %s after SIGTERM, before its drain_time %s", nd.name, dres.exited, drainTime)
	}
	if len(dres.failed) > 0 || dres.connsOK != nConns {
		t.Errorf("%d exchanges failed through the drain, and %d of %d connections completed a request after it; failures %v",
			len(dres.failed), dres.connsOK, nConns, dres.failed)
	}

	res := bn.loseNode(t, bn.nodes[0], 53000, false)
	t.Logf("%s lost: the router's RIB withdrew it %s after (BFD 100ms × 3; hold time %s); %d of %d held connections completed a request afterwards",
		bn.nodes[0].name, res.withdrawn.Round(time.Millisecond), bgpHoldBFD, res.ok, nConns)
	if res.withdrawn > bgpHoldBFD/2 {
		t.Errorf("the router withdrew the lost node after %s: not BFD (the hold time is %s)", res.withdrawn, bgpHoldBFD)
	}
	if len(res.failed) > nConns/100 {
		t.Errorf("%d of %d connections failed after the node was lost (at most 1%% may): %v", len(res.failed), nConns, res.failed)
	}
}

// drainResult is what drainNode measured.
type drainResult struct {
	withdrawn   time.Duration // from SIGTERM to the node's path leaving the router's RIB
	exited      time.Duration // from SIGTERM to halb's exit
	exitedFirst bool          // halb had exited when the router withdrew it
	ok          int           // exchanges on the held connections that got their answer
	failed      []error
	// connsOK: connections that complete a request after halb exited
	connsOK int
}

// drainNode holds nConns connections open from ports first and up, each
// exchanging a line round after round, and sends node nd's halb SIGTERM;
// the exchanges go on through the drain and after halb's exit.
func (bn *bgpNet) drainNode(t testing.TB, nd *bgpNode, drainTime time.Duration, first int) drainResult {
	t.Helper()
	conns := bn.client.connectMany(t, first, nConns)
	busy := startBusy(conns)
	busy.rounds(t, 1)
	rest := bn.others(nd)
	var res drainResult
	stopped := time.Now()
	if err := nd.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res.withdrawn = bn.withdrawnSince(stopped, "the draining node withdrawn", nd)
	res.exitedFirst = nd.proc.Exited()
	nd.gone = true
	bn.waitRoute("the VIP through the other nodes", rest...)
	busy.rounds(t, 1)
	select {
	case <-nd.proc.Done():
	case <-time.After(drainTime + 20*time.Second):
		t.Fatalf("%s still runs %s after SIGTERM (drain_time %s)", nd.name, drainTime+20*time.Second, drainTime)
	}
	res.exited = time.Since(stopped)
	if err := nd.proc.Err(); err != nil {
		t.Errorf("%s exited with %v after SIGTERM", nd.name, err)
	}
	busy.rounds(t, 2)
	b := busy.stop()
	res.ok, res.failed = b.ok, b.failed
	res.connsOK, _ = requestAll(conns, "after the drain")
	return res
}

// bgpMaster: with announce: master, of a VRRP pair only the MASTER
// announces the VIP, so the router's RIB holds its route alone; when the
// MASTER dies (SIGKILL) the BACKUP takes over and the route moves to it.
func bgpMaster(t *testing.T, bin string) {
	bn := newBGPNet(t, bin, 2, false)
	lb1, lb2 := bn.nodes[0], bn.nodes[1]
	bn.start(lb1, nodeSpec{announce: "master", holdTime: bgpHold, drainTime: time.Second, vrrpPriority: 150})
	bn.start(lb2, nodeSpec{announce: "master", holdTime: bgpHold, drainTime: time.Second, vrrpPriority: 100})
	lb1.waitState("MASTER")
	lb2.waitState("BACKUP")
	bn.established(lb1, lb2)
	for _, nd := range bn.nodes {
		nd.waitLive("web", nd.name+": all three backends live", 3)
	}
	bn.waitRoute("the VIP through the MASTER alone", lb1)
	if counts := bn.client.spread(t, 40000, 30); total(counts) != 30 {
		t.Errorf("through the MASTER: %v", counts)
	}
	// The BACKUP has had its session all along, and still announces
	// nothing.
	if hops, err := bn.ribNextHops(); err != nil || !slices.Equal(hops, addrsOf(lb1)) {
		t.Errorf("with %s BACKUP the router's RIB has the VIP via %v (%v), want %s alone", lb2.name, hops, err, lb1.addr)
	}

	failed := time.Now()
	lb1.proc.Kill()
	lb2.waitState("MASTER")
	bn.waitRoute("the VIP through the new MASTER alone", lb2)
	t.Logf("the route moved to %s %s after %s was killed", lb2.name, time.Since(failed).Round(time.Millisecond), lb1.name)
	if counts := bn.client.spread(t, 40100, 30); total(counts) != 30 {
		t.Errorf("through the new MASTER: %v", counts)
	}
}
