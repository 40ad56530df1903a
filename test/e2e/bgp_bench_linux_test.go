package e2e

import (
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/frrtest"
	"github.com/halb-lb/halb/internal/halbtest"
)

// BenchmarkBGPFailover measures what the routers see of a lost halb node
// in the network of the BGP tests (three nodes with announce: always,
// FRR as the router): the time from the loss to the router's withdrawal
// of the node's path, and the share of 200 connections held open across
// it that complete a request afterwards, for each kind of loss:
//
//   - hold-timer: the node goes off the network and its halb is killed;
//     the router learns it when the hold time (3 s) expires;
//   - bfd: the same, with BFD on the sessions (100 ms × 3, hold time 9 s);
//   - sigkill: halb alone is killed, the machine stays up: its kernel
//     closes the BGP session, and its data path forwards on;
//   - drain: SIGTERM, a graceful drain (drain_time 3 s): halb withdraws
//     the route itself and serves on until the router has moved the
//     flows; beside the share of connections that complete a request
//     after halb exited, the exchanges that failed while it drained.
//
// Each kind runs once a benchmark run (-benchtime 1x): it builds its own
// network.
func BenchmarkBGPFailover(b *testing.B) {
	frrtest.Require(b)
	bin := halbtest.Build(b)
	for _, v := range []struct {
		name      string
		bfd       bool
		hold      time.Duration
		machineUp bool
	}{{"hold-timer", false, bgpHold, false}, {"bfd", true, bgpHoldBFD, false}, {"sigkill", false, bgpHold, true}} {
		b.Run(v.name, func(b *testing.B) {
			for range b.N {
				bn := newBGPNet(b, bin, 3, v.bfd)
				bn.startAll(nodeSpec{announce: "always", holdTime: v.hold, drainTime: time.Second, bfd: v.bfd})
				if v.bfd {
					bn.bfdUp()
				}
				res := bn.loseNode(b, bn.nodes[1], 51000, v.machineUp)
				b.ReportMetric(float64(res.withdrawn.Milliseconds()), "withdraw-ms")
				b.ReportMetric(100*float64(res.ok)/nConns, "survived-%")
				b.Logf("%s: withdrawn after %s (hold time %s); %d of %d connections completed a request afterwards",
					v.name, res.withdrawn.Round(time.Millisecond), v.hold, res.ok, nConns)
			}
		})
	}
	b.Run("drain", func(b *testing.B) {
		const drainTime = 3 * time.Second
		for range b.N {
			bn := newBGPNet(b, bin, 3, false)
			bn.startAll(nodeSpec{announce: "always", holdTime: bgpHold, drainTime: drainTime})
			res := bn.drainNode(b, bn.nodes[1], drainTime, 52000)
			n := res.ok + len(res.failed)
			b.ReportMetric(float64(res.withdrawn.Milliseconds()), "withdraw-ms")
			b.ReportMetric(float64(res.exited.Milliseconds()), "exit-ms")
			b.ReportMetric(100*float64(res.connsOK)/nConns, "survived-%")
			b.ReportMetric(float64(len(res.failed)), "failed-exchanges")
			b.Logf("drain: SIGTERM, withdrawn after %s, exited after %s (drain_time %s); %d of %d exchanges on %d connections failed, %d connections completed a request after the exit",
				res.withdrawn.Round(time.Millisecond), res.exited.Round(time.Millisecond), drainTime, len(res.failed), n, nConns, res.connsOK)
		}
	})
}
