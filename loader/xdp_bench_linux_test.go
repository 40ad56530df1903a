package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// BenchmarkXDP times halb_xdp_lb per packet, as the kernel measures it in
// BPF_PROG_TEST_RUN, next to a program that only returns XDP_PASS:
//
//	empty          the floor: the test-run loop and an XDP program that
//	               does nothing.
//	lru-lookup     a program that only looks up one key in an LRU hash of
//	               halb_ct's key size and entries: what any conntrack hit
//	               pays before it has parsed a byte.
//	ct-hit         one flow over and over: parse, conntrack hit, the
//	               service through the backend's id, DR.
//	ct-hit-v6      ct-hit for an IPv6 flow.
//	syn            one SYN over and over: a SYN always takes the Maglev
//	               choice, so every run hashes, reads the Maglev table and
//	               writes halb_ct, all on warm caches.
//	ct-hit-single  ct-hit, one test run per packet, as the next two must.
//	ct-hit-tun     one flow of a forward: tun service over and over:
//	               conntrack hit, FIB lookup, outer header, checksum.
//	ct-hit-nat     a flow of a forward: nat service over and over:
//	               conntrack hit, the next hop as TUN keeps it, the
//	               destination and port rewritten, checksums updated.
//	nat-reply      a NAT backend's reply over and over: the reply
//	               lookup, the next hop toward the client as
//	               halb_reply_hops keeps it, the source rewritten back.
//	ct-hit-fullnat ct-hit-nat for a forward: fullnat service: the flow's
//	               hash, its source port found in halb_fnat, and the
//	               source rewritten too.
//	fullnat-reply  nat-reply for a full NAT backend: the reply lookup,
//	               then halb_fnat's, both ends rewritten back.
//	lru-insert     a program that only inserts a new key into a full LRU
//	               hash of halb_ct's key size and entries: what any
//	               conntrack miss pays for remembering the flow.
//	ct-miss        a new flow every packet: conntrack miss, jhash, Maglev,
//	               conntrack insert, DR, with halb_ct full, so that every
//	               insert also evicts the oldest flow: a busy balancer's
//	               steady state.
//	ct-miss-bulk   ct-miss inside one test run: a small program makes
//	               each frame a new flow and tail-calls halb_xdp_lb; what
//	               that program costs by itself is taken off.
//
// The first four and the NAT lines run b.N times inside one
// BPF_PROG_TEST_RUN (NAT's in two services that are each other's backend,
// so that every run translates). A miss needs a different packet each
// time, and TUN changes its frame (a second run would see the outer
// header), so those make one test run per packet, and
// the kernel's timing of a single run costs more than the empty program;
// that cost, measured on the empty program the same way, is taken off.
// What it cannot take off is that a syscall between runs leaves the caches
// colder for a large program than for the empty one: ct-hit-single shows
// how much that adds to ct-hit. Single runs are noisier than the others.
//
// The machine is shared, and its load moves while the benchmark runs; so
// every line is measured in rounds, each round timing the empty program
// right before the measured one, and reports the median of the rounds:
// the ratio is to the empty program of the same moment. A single run is
// the median of its round's runs, which leaves out the runs an interrupt
// or a preemption landed in. The kernel reports whole nanoseconds, so the
// empty line (about 10 ns) is known to within a tenth of itself.
//
// Metrics: ns/pkt, and x-empty, the ratio to the empty program. ns/op is
// suppressed: it would count the syscalls too. The empty line also shows
// single-ns, the cost of its single run, which the single lines have
// taken off. The conntrack lines show what halb adds to the kernel's LRU
// hash, the part of their cost that is halb's own:
// ns-above-lru-lookup, ns/pkt less lru-lookup's (the hit lines), and
// ns-above-lru-insert, ns/pkt less lru-insert's (the miss lines), each
// floor as this run measured it (a line run without its floor's line
// shows neither). The NAT lines also show ns-above-dr, ns/pkt less
// ct-hit's, the DR hit measured the same way in the same run (issue 17's
// target: at most 15). The ratios to the empty program measure the machine as
// much as halb (the empty program costs 32 ns on one machine and 5 ns on
// another, the LRU helpers several times that); the cost above the
// floors is what the issues' targets are stated in.
func BenchmarkXDP(b *testing.B) {
	ns := netnstest.New(b)
	// One source port for full NAT, the client's own: see fnatAck.
	lb, err := loadLB(Options{SNATPortFirst: 40000, SNATPortLast: 40000})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lb.close() })
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "halb_bench_pass",
		Type:         ebpf.XDP,
		AttachType:   ebpf.AttachXDP,                                         // as halb_xdp_lb, for ct-miss-bulk's tail calls
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
		License:      "MIT",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { empty.Close() })

	// Without a context, a test run's ingress interface is the namespace's
	// loopback (ifindex 1): a backend behind it is sent back out, XDP_TX.
	mac := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x01, 0x00}
	// The frames are addressed to mac: the program balances them only
	// when it is a MAC of the ingress interface.
	if err := lb.setLocalMACs(1, []LocalMAC{{MAC: mac, Via: 1}}); err != nil {
		b.Fatal(err)
	}
	web := service.Key{VIP: vip4, Port: 80, Proto: service.TCP}
	backends := []uint32{1, 2, 3}
	for _, id := range backends {
		be := Backend{Addr: netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + id)}), MAC: mac, Ifindex: 1, SrcMAC: mac, Service: 1}
		if err := lb.putBackend(id, be); err != nil {
			b.Fatal(err)
		}
	}
	if err := lb.putService(web, Service{ID: 1, Forward: ForwardDR}); err != nil {
		b.Fatal(err)
	}
	table := make([]uint32, lb.maglevTableSize())
	for i := range table {
		table[i] = backends[i%len(backends)]
	}
	if err := lb.setMaglevTable(1, table); err != nil {
		b.Fatal(err)
	}
	ack := packet{src: ap(client4, 40000), dst: ap(vip4, 80), ack: true}.frame(b, routerMAC, mac)
	// The same service in IPv6, on the same backends' table.
	web6 := service.Key{VIP: vip6, Port: 80, Proto: service.TCP}
	for _, id := range []uint32{5, 6, 7} {
		be := Backend{Addr: netip.MustParseAddr(fmt.Sprintf("2001:db8:100::%d", id)), MAC: mac, Ifindex: 1, SrcMAC: mac, Service: 3}
		if err := lb.putBackend(id, be); err != nil {
			b.Fatal(err)
		}
	}
	if err := lb.putService(web6, Service{ID: 3, Forward: ForwardDR}); err != nil {
		b.Fatal(err)
	}
	table6 := make([]uint32, lb.maglevTableSize())
	for i := range table6 {
		table6[i] = 5 + uint32(i%3)
	}
	if err := lb.setMaglevTable(3, table6); err != nil {
		b.Fatal(err)
	}
	ack6 := packet{src: ap(client6, 40000), dst: ap(vip6, 80), ack: true}.frame(b, routerMAC, mac)
	syn := packet{src: ap(client4, 40001), dst: ap(vip4, 80)}.frame(b, routerMAC, mac)

	// forward: tun to 192.0.2.21 on halb0 (a tx port; the test run's
	// ingress is lo), whose neighbour entry is there; forwarding is on,
	// as the FIB lookup needs.
	tunnel := service.Key{VIP: vip4, Port: 8080, Proto: service.TCP}
	h := ns.Netlink(b)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halb0", HardwareAddr: halb0MAC}, PeerName: "halb0p"}); err != nil {
		b.Fatal(err)
	}
	halb0, err := h.LinkByName("halb0")
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"halb0", "halb0p"} {
		l, err := h.LinkByName(name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := h.AddrAdd(halb0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{192, 0, 2, 1}, Mask: net.CIDRMask(24, 32)}}); err != nil {
		b.Fatal(err)
	}
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: halb0.Attrs().Index, IP: net.IP{192, 0, 2, 21}, HardwareAddr: mac, State: netlink.NUD_PERMANENT}); err != nil {
		b.Fatal(err)
	}
	err = ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/forwarding", []byte("1"), 0o644); err != nil {
			return err
		}
		return lb.addTxPort(halb0.Attrs().Index)
	})
	if err != nil {
		b.Fatal(err)
	}
	tunBE := Backend{Addr: netip.MustParseAddr("192.0.2.21"), Src: netip.MustParseAddr("192.0.2.1"), Ifindex: halb0.Attrs().Index, SrcMAC: halb0MAC, Service: 2}
	if err := lb.putBackend(4, tunBE); err != nil {
		b.Fatal(err)
	}
	if err := lb.putService(tunnel, Service{ID: 2, Forward: ForwardTUN}); err != nil {
		b.Fatal(err)
	}
	for i := range table {
		table[i] = 4
	}
	if err := lb.setMaglevTable(2, table); err != nil {
		b.Fatal(err)
	}
	tunAck := packet{src: ap(client4, 40000), dst: ap(vip4, 8080), ack: true}.frame(b, routerMAC, mac)

	// forward: nat, in two services that are each other's backend:
	// vip4:8081 to 192.0.2.21:9090, and 192.0.2.21:9090 to vip4:8081,
	// both behind halb0, whose next hops have the bench's MAC. A packet
	// of either flow comes out as a packet of the other, to this node
	// again: each of the b.N runs in one test run translates it, as
	// ct-hit's each send one DR packet. So do the backends' replies,
	// each one's source the other's. The clients are behind
	// 192.0.2.254 on halb0, where the replies go.
	natBE := []Backend{
		{Addr: netip.MustParseAddr("192.0.2.21"), Port: 9090, Src: netip.MustParseAddr("192.0.2.1"), Ifindex: halb0.Attrs().Index, SrcMAC: halb0MAC, Service: 4},
		{Addr: vip4, Port: 8081, Src: netip.MustParseAddr("192.0.2.1"), Ifindex: halb0.Attrs().Index, SrcMAC: halb0MAC, Service: 5},
	}
	natKeys := []service.Key{{VIP: vip4, Port: 8081, Proto: service.TCP}, {VIP: natBE[0].Addr, Port: 9090, Proto: service.TCP}}
	for i, key := range natKeys {
		id, svc := uint32(8+i), uint32(4+i)
		if err := lb.putBackend(id, natBE[i]); err != nil {
			b.Fatal(err)
		}
		if err := lb.putService(key, Service{ID: svc, Forward: ForwardNAT}); err != nil {
			b.Fatal(err)
		}
		for j := range table {
			table[j] = id
		}
		if err := lb.setMaglevTable(svc, table); err != nil {
			b.Fatal(err)
		}
		r := natReply{Backend: ap(natBE[i].Addr, natBE[i].Port), Proto: service.TCP, VIP: ap(key.VIP, key.Port), Service: svc, BackendID: id}
		if _, err := lb.putNATReply(r); err != nil {
			b.Fatal(err)
		}
	}
	gw := net.IP{192, 0, 2, 254}
	for _, ip := range []net.IP{gw, vip4.AsSlice()} {
		if err := h.NeighAdd(&netlink.Neigh{LinkIndex: halb0.Attrs().Index, IP: ip, HardwareAddr: mac, State: netlink.NUD_PERMANENT}); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IP{203, 0, 113, 0}, Mask: net.CIDRMask(24, 32)}, Gw: gw}); err != nil {
		b.Fatal(err)
	}
	natAck := packet{src: ap(client4, 40000), dst: ap(vip4, 8081), ack: true}.frame(b, routerMAC, mac)

	// forward: fullnat, likewise: vip4:8082 to 192.0.2.22:9092 and back,
	// each from the client's address (snat_address) and, with a pool of
	// one port, its port: client4:40000 to vip4:8082 comes out as
	// client4:40000 to 192.0.2.22:9092, a packet of the other service,
	// whose translation is the first packet again. Every run finds its
	// flow's port in halb_fnat and rewrites both ends (the source to what
	// it was: the work is the same). The replies likewise.
	fnatBE := []Backend{
		{Addr: netip.MustParseAddr("192.0.2.22"), Port: 9092, Src: client4, Ifindex: halb0.Attrs().Index, SrcMAC: halb0MAC, Service: 6},
		{Addr: vip4, Port: 8082, Src: client4, Ifindex: halb0.Attrs().Index, SrcMAC: halb0MAC, Service: 7},
	}
	fnatKeys := []service.Key{{VIP: vip4, Port: 8082, Proto: service.TCP}, {VIP: fnatBE[0].Addr, Port: 9092, Proto: service.TCP}}
	for i, key := range fnatKeys {
		id, svc := uint32(10+i), uint32(6+i)
		if err := lb.putBackend(id, fnatBE[i]); err != nil {
			b.Fatal(err)
		}
		if err := lb.putService(key, Service{ID: svc, Forward: ForwardFullNAT}); err != nil {
			b.Fatal(err)
		}
		for j := range table {
			table[j] = id
		}
		if err := lb.setMaglevTable(svc, table); err != nil {
			b.Fatal(err)
		}
		r := natReply{Backend: ap(fnatBE[i].Addr, fnatBE[i].Port), Proto: service.TCP, VIP: ap(key.VIP, key.Port), Service: svc, BackendID: id, FullNAT: true}
		if _, err := lb.putNATReply(r); err != nil {
			b.Fatal(err)
		}
	}
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: halb0.Attrs().Index, IP: net.IP{192, 0, 2, 22}, HardwareAddr: mac, State: netlink.NUD_PERMANENT}); err != nil {
		b.Fatal(err)
	}
	fnatAck := packet{src: ap(client4, 40000), dst: ap(vip4, 8082), ack: true}.frame(b, routerMAC, mac)
	fnatReplyAck := packet{src: ap(fnatBE[0].Addr, 9092), dst: ap(client4, 40000), ack: true}.frame(b, routerMAC, mac)
	natReplyAck := packet{src: ap(natBE[0].Addr, 9090), dst: ap(client4, 40000), ack: true}.frame(b, routerMAC, mac)

	// inNS runs fn in the bench's namespace, where ifindex 1 is its own
	// loopback.
	inNS := func(b *testing.B, fn func() error) {
		b.Helper()
		if err := ns.Do(fn); err != nil {
			b.Fatal(err)
		}
	}
	// bulk times n runs of prog on frame in a single test run: ns per run.
	bulk := func(prog *ebpf.Program, frame []byte, n int, want xdpAction) (float64, error) {
		action, per, err := prog.Benchmark(frame, n, nil)
		if err != nil {
			return 0, err
		}
		if xdpAction(action) != want {
			return 0, fmt.Errorf("%s returned %v, want %v", prog, xdpAction(action), want)
		}
		return float64(per.Nanoseconds()), nil
	}
	// single times n test runs of one run each, on the frames next
	// returns: the median run.
	single := func(prog *ebpf.Program, n int, next func() []byte, want xdpAction) (float64, error) {
		runs := make([]time.Duration, 0, n)
		for range n {
			action, per, err := prog.Benchmark(next(), 1, nil)
			if err != nil {
				return 0, err
			}
			if xdpAction(action) != want {
				return 0, fmt.Errorf("%s returned %v, want %v", prog, xdpAction(action), want)
			}
			runs = append(runs, per)
		}
		slices.Sort(runs)
		return float64(runs[len(runs)/2].Nanoseconds()), nil
	}
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}

	// measure reports b.N packets of run (which times n packets and
	// returns ns per packet) in rounds, each after the empty program:
	// bulk, and when isSingle single too, whose extra cost it takes off
	// run's. run nil measures the empty program itself.
	const rounds = 9
	measure := func(b *testing.B, isSingle bool, run func(n int) (float64, error)) float64 {
		n := max(1, b.N/rounds)
		var pers, ratios, singles []float64
		inNS(b, func() error {
			for range rounds {
				floor, err := bulk(empty, ack, max(n, 100_000), xdpPass)
				if err != nil {
					return err
				}
				extra := 0.0
				if isSingle {
					emptySingle, err := single(empty, min(n, 20_000), func() []byte { return ack }, xdpPass)
					if err != nil {
						return err
					}
					singles = append(singles, emptySingle)
					extra = emptySingle - floor
				}
				per := floor
				if run != nil {
					if per, err = run(n); err != nil {
						return err
					}
				} else {
					extra = 0
				}
				pers = append(pers, per-extra)
				ratios = append(ratios, (per-extra)/floor)
			}
			return nil
		})
		per := median(pers)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(per, "ns/pkt")
		b.ReportMetric(median(ratios), "x-empty")
		if len(singles) > 0 {
			b.ReportMetric(median(singles), "single-ns")
		}
		return per
	}
	// The LRU floors of this run, once their lines have run, and what a
	// line costs above one of them.
	var lookupFloor, insertFloor float64
	above := func(b *testing.B, per, floor float64, unit string) {
		if floor > 0 {
			b.ReportMetric(per-floor, unit)
		}
	}

	b.Run("empty", func(b *testing.B) {
		measure(b, true, nil)
	})

	b.Run("lru-lookup", func(b *testing.B) {
		m, keySize := lruLikeCT(b)
		if err := m.Put(make([]byte, keySize), halbCtEntry{BackendId: 1}); err != nil {
			b.Fatal(err)
		}
		insns := asm.Instructions{asm.Mov.Imm(asm.R1, 0)}
		for off := -keySize; off < 0; off += 8 {
			insns = append(insns, asm.StoreMem(asm.RFP, int16(off), asm.R1, asm.DWord))
		}
		insns = append(insns,
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(-keySize)),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.Mov.Imm(asm.R1, 3), // XDP_TX on a hit
			asm.JNE.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1), // XDP_DROP
			asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("out"),
			asm.Return(),
		)
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "halb_bench_lru", Type: ebpf.XDP, Instructions: insns, License: "MIT"})
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		lookupFloor = measure(b, false, func(n int) (float64, error) { return bulk(prog, ack, n, xdpTX) })
	})

	var drHit float64 // ct-hit's ns/pkt, once it has run
	b.Run("ct-hit", func(b *testing.B) {
		// The first run puts the flow in halb_ct.
		inNS(b, func() error { _, err := bulk(lb.xdpProgram(), ack, 1, xdpTX); return err })
		per := measure(b, false, func(n int) (float64, error) { return bulk(lb.xdpProgram(), ack, n, xdpTX) })
		above(b, per, lookupFloor, "ns-above-lru-lookup")
		drHit = per
	})

	b.Run("ct-hit-v6", func(b *testing.B) {
		inNS(b, func() error { _, err := bulk(lb.xdpProgram(), ack6, 1, xdpTX); return err })
		per := measure(b, false, func(n int) (float64, error) { return bulk(lb.xdpProgram(), ack6, n, xdpTX) })
		above(b, per, lookupFloor, "ns-above-lru-lookup")
	})

	b.Run("syn", func(b *testing.B) {
		measure(b, false, func(n int) (float64, error) { return bulk(lb.xdpProgram(), syn, n, xdpTX) })
	})

	b.Run("ct-hit-single", func(b *testing.B) {
		per := measure(b, true, func(n int) (float64, error) {
			return single(lb.xdpProgram(), n, func() []byte { return ack }, xdpTX)
		})
		above(b, per, lookupFloor, "ns-above-lru-lookup")
	})

	b.Run("ct-hit-tun", func(b *testing.B) {
		inNS(b, func() error {
			_, err := single(lb.xdpProgram(), 1, func() []byte { return tunAck }, xdpRedirect)
			return err
		})
		per := measure(b, true, func(n int) (float64, error) {
			return single(lb.xdpProgram(), n, func() []byte { return tunAck }, xdpRedirect)
		})
		above(b, per, lookupFloor, "ns-above-lru-lookup")
	})

	// A NAT reply is translated only when it comes in on the interface
	// that reaches its backend, halb0 (the records' Ifindex), where the
	// frames' MAC is the node's too; the clients are behind halb0, so
	// the replies go back out of it (XDP_TX).
	if err := lb.setLocalMACs(halb0.Attrs().Index, []LocalMAC{{MAC: mac, Via: halb0.Attrs().Index}}); err != nil {
		b.Fatal(err)
	}
	replyBulk := func(frame []byte, n int) (float64, error) {
		return bulkOn(lb.xdpProgram(), frame, n, halb0.Attrs().Index, xdpTX)
	}
	for _, l := range []struct {
		name  string
		frame []byte
		reply bool
	}{{"ct-hit-nat", natAck, false}, {"nat-reply", natReplyAck, true}, {"ct-hit-fullnat", fnatAck, false}, {"fullnat-reply", fnatReplyAck, true}} {
		run := func(frame []byte, n int) (float64, error) { return bulk(lb.xdpProgram(), frame, n, xdpRedirect) }
		if l.reply {
			run = replyBulk
		}
		b.Run(l.name, func(b *testing.B) {
			// The first runs put both flows in halb_ct (and full
			// NAT's in halb_fnat, which its replies need), and the
			// clients' next hop in halb_reply_hops.
			inNS(b, func() error {
				for _, f := range [][]byte{natAck, fnatAck} {
					if _, err := bulk(lb.xdpProgram(), f, 2, xdpRedirect); err != nil {
						return err
					}
				}
				_, err := run(l.frame, 2)
				return err
			})
			per := measure(b, false, func(n int) (float64, error) { return run(l.frame, n) })
			above(b, per, lookupFloor, "ns-above-lru-lookup")
			above(b, per, drHit, "ns-above-dr")
		})
	}

	// Flow n comes from 203.0.113.(n>>16) port n&0xffff: 2^24 flows. The
	// count goes on across the rounds of ct-miss, so no flow repeats.
	flows := bytes.Clone(ack)
	flowSeq := 0
	next := func() []byte {
		flowSeq++
		flows[14+15] = byte(flowSeq >> 16)                         // last octet of the source address
		binary.BigEndian.PutUint16(flows[14+20:], uint16(flowSeq)) // source port
		return flows
	}
	b.Run("lru-insert", func(b *testing.B) {
		// The floor of ct-miss: a program that only inserts a new key
		// (the frame's first bytes, which next changes) into a full
		// LRU hash of halb_ct's key size and entries, evicting the
		// oldest, as halb_ct does for every new flow.
		m, keySize := lruLikeCT(b)
		insns := asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, int32(keySize)),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		}
		for off := 0; off < keySize; off += 8 {
			insns = append(insns,
				asm.LoadMem(asm.R4, asm.R2, int16(off), asm.DWord),
				asm.StoreMem(asm.RFP, int16(off-keySize), asm.R4, asm.DWord))
		}
		// The value, halb_ct's size (a whole number of words): backend
		// id 1, the rest 0.
		valueOff := -keySize - int(m.ValueSize())
		insns = append(insns, asm.Mov.Imm(asm.R4, 0))
		for off := valueOff; off < -keySize; off += 8 {
			insns = append(insns, asm.StoreMem(asm.RFP, int16(off), asm.R4, asm.DWord))
		}
		insns = append(insns,
			asm.StoreImm(asm.RFP, int16(valueOff), 1, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(-keySize)),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, int32(valueOff)),
			asm.Mov.Imm(asm.R4, 0), // BPF_ANY
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 3), // XDP_TX
			asm.Return(),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
			asm.Return(),
		)
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "halb_bench_ins", Type: ebpf.XDP, Instructions: insns, License: "MIT"})
		if err != nil {
			b.Fatal(err)
		}
		defer prog.Close()
		// Its own sequence of frames, so that ct-miss's flows stay new.
		frame := bytes.Clone(ack)
		seq := 0
		fresh := func() []byte {
			seq++
			binary.BigEndian.PutUint32(frame[0:], uint32(seq))
			return frame
		}
		inNS(b, func() error {
			_, err := single(prog, DefaultConntrackEntries, fresh, xdpTX)
			return err
		})
		insertFloor = measure(b, true, func(n int) (float64, error) { return single(prog, n, fresh, xdpTX) })
	})

	b.Run("ct-miss-bulk", func(b *testing.B) {
		// ct-miss without a syscall between packets: a small program
		// turns the frame into a new flow (it counts in the source
		// address, which halb does not checksum, above its first byte:
		// 100.0.0.0 stays in 100/8, and never becomes a source the
		// program drops, such as 127/8 or 224/4) and tail-calls
		// halb_xdp_lb, all inside one test run, as for ct-hit. The same
		// program tail-calling the empty one is measured beside it, and
		// what it costs over the empty program is taken off.
		fresh := func(target *ebpf.Program) (*ebpf.Program, func(), error) {
			progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
			if err != nil {
				return nil, nil, err
			}
			const src = 14 + 12 // the IPv4 source address
			insns := asm.Instructions{
				asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // ctx->data
				asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // ctx->data_end
				asm.Mov.Reg(asm.R4, asm.R2),
				asm.Add.Imm(asm.R4, src+4),
				asm.JGT.Reg(asm.R4, asm.R3, "pass"),
				asm.LoadMem(asm.R4, asm.R2, src, asm.Word),
				asm.Add.Imm(asm.R4, 1<<8), // little-endian: the second byte, never carrying into the first
				asm.StoreMem(asm.R2, src, asm.R4, asm.Word),
				asm.LoadMapPtr(asm.R2, progs.FD()),
				asm.Mov.Imm(asm.R3, 0),
				asm.FnTailCall.Call(),
				asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
				asm.Return(),
			}
			// A tail call needs the attach type of the program it calls:
			// halb_xdp_lb's, and so the empty program's.
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "halb_bench_new", Type: ebpf.XDP, AttachType: ebpf.AttachXDP, Instructions: insns, License: "MIT"})
			if err == nil {
				err = progs.Put(uint32(0), target)
			}
			if err != nil {
				if prog != nil {
					prog.Close()
				}
				progs.Close()
				return nil, nil, err
			}
			return prog, func() { prog.Close(); progs.Close() }, nil
		}
		toLB, closeLB, err := fresh(lb.xdpProgram())
		if err != nil {
			b.Fatalf("%+v", err)
		}
		defer closeLB()
		toEmpty, closeEmpty, err := fresh(empty)
		if err != nil {
			b.Fatal(err)
		}
		defer closeEmpty()
		frame := bytes.Clone(ack)
		frame[14+12] = 100     // 100.0.0.0 and up: no other line's flows
		inNS(b, func() error { // fill halb_ct
			_, err := bulk(toLB, frame, DefaultConntrackEntries, xdpTX)
			return err
		})
		per := measure(b, false, func(n int) (float64, error) {
			both, err := bulk(toLB, frame, n, xdpTX)
			if err != nil {
				return 0, err
			}
			wrapper, err := bulk(toEmpty, frame, n, xdpPass)
			if err != nil {
				return 0, err
			}
			floor, err := bulk(empty, ack, n, xdpPass)
			return both - wrapper + floor, err
		})
		above(b, per, insertFloor, "ns-above-lru-insert")
	})

	b.Run("ct-miss", func(b *testing.B) {
		if flowSeq == 0 { // fill halb_ct first
			inNS(b, func() error {
				_, err := single(lb.xdpProgram(), DefaultConntrackEntries, next, xdpTX)
				return err
			})
		}
		per := measure(b, true, func(n int) (float64, error) { return single(lb.xdpProgram(), n, next, xdpTX) })
		above(b, per, insertFloor, "ns-above-lru-insert")
	})
}

// lruLikeCT is an LRU hash of halb_ct's size whose keys are halb_ct's,
// struct flow, rounded up to whole words (keySize), and whose values are
// halb_ct's, struct ct_entry (16 bytes, two words), for the floors that
// time the kernel's LRU alone.
func lruLikeCT(b *testing.B) (m *ebpf.Map, keySize int) {
	keySize = (int(unsafe.Sizeof(halbFlow{})) + 7) &^ 7
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "halb_bench_lru", Type: ebpf.LRUHash, KeySize: uint32(keySize), ValueSize: uint32(unsafe.Sizeof(halbCtEntry{})),
		MaxEntries: DefaultConntrackEntries,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m, keySize
}

// bulkOn is the bench's bulk for a frame that arrives on ifindex: n runs
// of prog in one test run, ns per run as the kernel times it. cilium/ebpf
// times a run only without a context (Program.Benchmark), which leaves
// the frame on the namespace's loopback; the NAT replies must come in on
// their backend's interface. It must be called in the interface's
// namespace.
func bulkOn(prog *ebpf.Program, frame []byte, n, ifindex int, want xdpAction) (float64, error) {
	ctx := xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}
	out := make([]byte, len(frame)+256)
	// union bpf_attr's test member (include/uapi/linux/bpf.h).
	attr := struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration, ctxSizeIn, ctxSizeOut uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize                   uint32
		_                                       uint32
	}{
		progFD: uint32(prog.FD()), dataSizeIn: uint32(len(frame)), dataSizeOut: uint32(len(out)),
		dataIn: uint64(uintptr(unsafe.Pointer(&frame[0]))), dataOut: uint64(uintptr(unsafe.Pointer(&out[0]))),
		repeat: uint32(n), ctxSizeIn: uint32(unsafe.Sizeof(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, fmt.Errorf("test run %s on ifindex %d: %w", prog, ifindex, errno)
		}
		break
	}
	if xdpAction(attr.retval) != want {
		return 0, fmt.Errorf("%s returned %v on ifindex %d, want %v", prog, xdpAction(attr.retval), ifindex, want)
	}
	return float64(attr.duration), nil
}
