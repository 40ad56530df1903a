package vrrp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"

	"github.com/halb-lb/halb/internal/netnstest"
)

// failoverTrials is how many failovers make one line of BenchmarkFailover;
// HALB_BENCH_TRIALS may lower it for a quick run.
const failoverTrials = 10

// failoverProbe is how often the observer asks who has the VIP while it
// waits for the backup to answer: the resolution of the figures.
const failoverProbe = 2 * time.Millisecond

// failoverGARPGrace is how long the observer still waits for the backup's
// gratuitous ARP once the backup has answered for the VIP.
const failoverGARPGrace = 500 * time.Millisecond

// BenchmarkFailover times how long the VIP goes unanswered when the Master
// of a pair is killed (SIGKILL) or stopped (SIGTERM), for a halb pair and a
// keepalived pair running the same virtual router: VRRPv3 over IPv4
// multicast, VRID 51, priorities 150 and 100, pre-emption on, one
// gratuitous ARP at takeover and one more a second later, the VIP
// 192.0.2.100, adverts every second or every 100 ms.
//
// The two nodes and an observer share a bridge. Each trial starts both
// nodes, waits until the 150 holds the VIP and the 100 says it is Backup,
// and signals the Master as soon as the observer sees its next advert: the
// backup's master down timer has just restarted, so every trial of either
// implementation starts from the same phase, and a SIGKILL is followed by
// the full 3 × interval + skew. From the signal on, the observer sends an
// ARP request for the VIP every failoverProbe; a trial's figure is the
// arrival of the first ARP reply from the backup's MAC. The first
// gratuitous ARP from the backup is timed as well (garp-median-ms). The
// killed Master's namespace keeps its VIP and its kernel keeps answering
// for it, as a hung host would: only the backup's answers count.
//
// b.N is ignored: one pass runs the trials of every line and takes minutes.
//
//	go test -run '^$' -bench BenchmarkFailover -benchtime 1x -timeout 20m ./vrrp
func BenchmarkFailover(b *testing.B) {
	netnstest.Require(b)
	if _, err := exec.LookPath("keepalived"); err != nil {
		netnstest.SkipOrFail(b, "keepalived not installed (apt-get install -y keepalived): %v", err)
	}
	if out, err := exec.Command("keepalived", "--version").CombinedOutput(); err == nil {
		b.Logf("keepalived: %s", strings.SplitN(string(out), "\n", 2)[0])
	}
	trials := failoverTrialCount(b)
	began := time.Now()
	type line struct {
		interval time.Duration
		sig      string
	}
	var lines []line
	medians := map[line]map[string]time.Duration{}
	for _, interval := range []time.Duration{time.Second, 100 * time.Millisecond} {
		for _, sig := range []string{"kill", "term"} {
			ln := line{interval, sig}
			lines = append(lines, ln)
			medians[ln] = map[string]time.Duration{}
			// The two implementations run one after the other for each
			// line, so that a change in the machine's load between lines
			// touches both alike.
			for _, impl := range []string{"halb", "keepalived"} {
				name := fmt.Sprintf("impl=%s/advert=%v/signal=%s", impl, interval, sig)
				b.Run(name, func(b *testing.B) {
					f := newFailoverLAN(b, impl, interval, failoverSignals[sig])
					var answers, garps []time.Duration
					for n := range trials {
						answer, garp := f.trial(b, n)
						answers = append(answers, answer)
						if garp > 0 {
							garps = append(garps, garp)
						}
					}
					slices.Sort(answers)
					medians[ln][impl] = median(answers)
					b.ReportMetric(0, "ns/op")
					b.ReportMetric(millis(median(answers)), "median-ms")
					b.ReportMetric(millis(answers[0]), "min-ms")
					b.ReportMetric(millis(answers[len(answers)-1]), "max-ms")
					if len(garps) > 0 {
						slices.Sort(garps)
						b.ReportMetric(millis(median(garps)), "garp-median-ms")
					}
					if len(garps) < len(answers) {
						b.Logf("%d of %d trials saw no gratuitous ARP from the backup", len(answers)-len(garps), len(answers))
					}
					b.Logf("answered after (ms, sorted): %s", msList(answers))
				})
			}
		}
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "failover, median of %d trials (ms from the signal to the backup's first ARP reply for the VIP)\n", trials)
	fmt.Fprintf(tw, "advert\tsignal\thalb\tkeepalived\thalb/keepalived\tRFC 5798 wait\t\n")
	for _, ln := range lines {
		h, hok := medians[ln]["halb"]
		k, kok := medians[ln]["keepalived"]
		cell := func(d time.Duration, ok bool) string {
			if !ok {
				return "-"
			}
			return strconv.FormatFloat(millis(d), 'f', 1, 64)
		}
		ratio := "-"
		if hok && kok && k > 0 {
			ratio = strconv.FormatFloat(float64(h)/float64(k), 'f', 3, 64)
		}
		// What the backup must wait before it takes over (RFC 5798 §6.4.2):
		// Master_Down_Interval after a silent Master, Skew_Time after a
		// priority-0 advert.
		v := variant{version: 3, interval: ln.interval}
		wait := v.masterDown(100)
		if ln.sig == "term" {
			wait -= 3 * ln.interval
		}
		fmt.Fprintf(tw, "%v\t%s\t%s\t%s\t%s\t%s\t\n", ln.interval, ln.sig, cell(h, hok), cell(k, kok), ratio, cell(wait, true))
	}
	fmt.Fprintf(tw, "whole run: %v\n", time.Since(began).Round(time.Second))
	tw.Flush()
}

var failoverSignals = map[string]syscall.Signal{"kill": syscall.SIGKILL, "term": syscall.SIGTERM}

// failoverTrialCount is failoverTrials, or HALB_BENCH_TRIALS when that is
// lower.
func failoverTrialCount(b *testing.B) int {
	s := os.Getenv("HALB_BENCH_TRIALS")
	if s == "" {
		return failoverTrials
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > failoverTrials {
		b.Fatalf("HALB_BENCH_TRIALS=%q: want a whole number from 1 to %d", s, failoverTrials)
	}
	return n
}

// failoverLAN is one line of the benchmark: nodes a (priority 150) and b
// (100) of one implementation, and the observer c, on a bridge.
type failoverLAN struct {
	impl string
	sig  syscall.Signal
	c    interop // the virtual router, in either implementation's words
	s    *switched
	mac  [2]net.HardwareAddr // of a and b
	obs  *observer
}

func newFailoverLAN(b *testing.B, impl string, interval time.Duration, sig syscall.Signal) *failoverLAN {
	b.Helper()
	s := newSwitched(b)
	f := &failoverLAN{
		impl: impl,
		sig:  sig,
		c:    interop{variant: variant{name: "v3-ipv4-multicast", version: 3, interval: interval}},
		s:    s,
	}
	for i := range f.mac {
		lk, err := s.handles[i].LinkByName("lan0")
		if err != nil {
			b.Fatalf("find lan0 of node %d: %v", i, err)
		}
		f.mac[i] = lk.Attrs().HardwareAddr
	}
	f.obs = newObserver(b, s.hosts[2], netip.MustParseAddr("192.0.2.3"))
	return f
}

// pair makes the nodes of trial n: the Master to be, the backup, and a
// check that the backup has said it is Backup.
func (f *failoverLAN) pair(b *testing.B, n int) (master, backup peer, backupReady func() bool) {
	b.Helper()
	hosts, l := f.s.hosts, f.s.l
	if f.impl == "halb" {
		a := newNode(b, fmt.Sprintf("a%d", n), hosts[0], f.c.halbConfig(l, 0, 150))
		bn := newNode(b, fmt.Sprintf("b%d", n), hosts[1], f.c.halbConfig(l, 1, 100))
		return halbPeer{a}, halbPeer{bn}, func() bool { return strings.Contains(bn.log.String(), "to=BACKUP") }
	}
	a := newKeepalived(b, fmt.Sprintf("a%d", n), hosts[0], f.c.keepalivedConfig(l, 0, 150))
	bk := newKeepalived(b, fmt.Sprintf("b%d", n), hosts[1], f.c.keepalivedConfig(l, 1, 100))
	return a, bk, func() bool { return bk.count("Entering BACKUP STATE") > 0 }
}

// trial runs failover n and returns how long after the signal the backup
// answered for the VIP, and announced it (0 if the observer saw no
// announcement).
func (f *failoverLAN) trial(b *testing.B, n int) (answer, garp time.Duration) {
	b.Helper()
	vip := f.c.vip()
	h := f.s.handles
	// A killed Master leaves its VIP behind; neither implementation must
	// start a trial finding one.
	for i := range 2 {
		delVIP(b, h[i], vip)
	}
	master, backup, backupReady := f.pair(b, n)
	limit := 5*f.c.masterDown(100) + 5*time.Second
	master.start(b)
	backup.start(b)
	defer func() {
		for _, p := range []peer{master, backup} {
			p.signal(syscall.SIGKILL)
			p.wait()
		}
	}()

	deadline := time.Now().Add(limit)
	for !backupReady() || !hasAddr(h[0], vip) || hasAddr(h[1], vip) {
		if time.Now().After(deadline) {
			b.Fatalf("trial %d: no stable Master after %v: a holds the VIP = %v, b = %v, b is Backup = %v",
				n, limit, hasAddr(h[0], vip), hasAddr(h[1], vip), backupReady())
		}
		time.Sleep(5 * time.Millisecond)
	}

	f.obs.drain()
	var start time.Time
	for start.IsZero() {
		select {
		case s := <-f.obs.frames:
			if s.advert == nil || s.advert.VRID != 51 {
				continue
			}
			if bytes.Equal(s.src, f.mac[1]) {
				b.Fatalf("trial %d: the backup sent an advert (priority %d) after it said it was Backup", n, s.advert.Priority)
			}
			if bytes.Equal(s.src, f.mac[0]) && s.advert.Priority == 150 {
				start = time.Now()
				master.signal(f.sig)
			}
		case <-time.After(time.Until(deadline)):
			b.Fatalf("trial %d: the observer saw no advert from the Master within %v%s", n, limit, f.obs.failure())
		}
	}

	// The first request goes out at once; the ticker sends the rest.
	f.obs.ask(b, vip)
	tick := time.NewTicker(failoverProbe)
	defer tick.Stop()
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	var answeredAt time.Time
	for answer == 0 || garp == 0 {
		select {
		case s := <-f.obs.frames:
			if s.arp == nil || !bytes.Equal(s.src, f.mac[1]) || s.arp.SenderIP != vip {
				continue
			}
			switch {
			case s.arp.TargetIP == vip && garp == 0:
				garp = s.at.Sub(start)
			case s.arp.Operation == arp.OperationReply && s.arp.TargetIP == f.obs.ip && answer == 0:
				answer, answeredAt = s.at.Sub(start), s.at
			}
		case <-tick.C:
			if answer == 0 {
				f.obs.ask(b, vip)
			} else if time.Since(answeredAt) > failoverGARPGrace {
				return answer, 0
			}
		case <-timeout.C:
			b.Fatalf("trial %d: the backup did not answer for %s within %v of the signal%s", n, vip, limit, f.obs.failure())
		}
	}
	return answer, garp
}

// delVIP removes vip from lan0 in the namespace behind h, if it is there.
func delVIP(b *testing.B, h *netlink.Handle, vip netip.Addr) {
	b.Helper()
	if !hasAddr(h, vip) {
		return
	}
	link, err := h.LinkByName("lan0")
	if err == nil {
		err = h.AddrDel(link, toAddr(netip.PrefixFrom(vip, 24)))
	}
	if err != nil {
		b.Fatalf("remove the VIP %s left by the last trial: %v", vip, err)
	}
}

// observer is a host on the LAN that sees every frame on its link and asks
// who has an address.
type observer struct {
	conn   *packet.Conn
	mac    net.HardwareAddr
	ip     netip.Addr
	frames chan seen
	err    atomic.Pointer[error] // why read stopped
}

// seen is a frame the observer received: an ARP packet or a VRRP advert,
// with its Ethernet source and when it came.
type seen struct {
	at     time.Time
	src    net.HardwareAddr
	arp    *arp.Packet
	advert *Advert
}

// newObserver listens on lan0 of ns, whose address is ip, until b ends.
func newObserver(b *testing.B, ns *netnstest.NS, ip netip.Addr) *observer {
	b.Helper()
	o := &observer{ip: ip, frames: make(chan seen, 4096)}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("lan0")
		if err != nil {
			return fmt.Errorf("find lan0: %w", err)
		}
		o.mac = ifi.HardwareAddr
		o.conn, err = packet.Listen(ifi, packet.Raw, 0x0003 /* ETH_P_ALL */, nil)
		if err != nil {
			return fmt.Errorf("listen on lan0: %w", err)
		}
		return nil
	})
	if err != nil {
		b.Fatalf("observer in %s: %v", ns.Name, err)
	}
	done := make(chan struct{})
	go o.read(done)
	b.Cleanup(func() {
		o.conn.Close()
		<-done
	})
	return o
}

// read passes every ARP packet and VRRP advert that another host sent to
// o.frames until the socket is closed. It stamps each on arrival, so that
// a consumer busy elsewhere does not delay the figures.
func (o *observer) read(done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, 2048)
	for {
		n, _, err := o.conn.ReadFrom(buf)
		if err != nil {
			// Closed by the cleanup, or broken: either way nothing more
			// will come, and a trial waiting for a frame says so when its
			// bound runs out.
			o.err.Store(&err)
			return
		}
		at := time.Now()
		s, ok := decodeSeen(buf[:n])
		if !ok || bytes.Equal(s.src, o.mac) { // ETH_P_ALL shows our own requests too
			continue
		}
		s.at = at
		select {
		case o.frames <- s:
		default: // the consumer drains before it measures; nothing lost then matters
		}
	}
}

// decodeSeen decodes an Ethernet frame holding ARP or a VRRP advert.
func decodeSeen(frame []byte) (seen, bool) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil {
		return seen{}, false
	}
	s := seen{src: f.Source}
	switch f.EtherType {
	case ethernet.EtherTypeARP:
		s.arp = new(arp.Packet)
		return s, s.arp.UnmarshalBinary(f.Payload) == nil
	case ethernet.EtherTypeIPv4:
		h, err := ipv4.ParseHeader(f.Payload)
		if err != nil || h.Protocol != IPProtocol || h.TotalLen > len(f.Payload) || h.Len > h.TotalLen {
			return seen{}, false
		}
		src, _ := netip.AddrFromSlice(h.Src.To4())
		dst, _ := netip.AddrFromSlice(h.Dst.To4())
		s.advert, err = Parse(f.Payload[h.Len:h.TotalLen], src, dst)
		return s, err == nil
	}
	return seen{}, false
}

// failure says why the observer stopped reading, if it did.
func (o *observer) failure() string {
	if err := o.err.Load(); err != nil {
		return fmt.Sprintf(" (the observer stopped reading: %v)", *err)
	}
	return ""
}

// drain throws away what the observer saw so far.
func (o *observer) drain() {
	for {
		select {
		case <-o.frames:
		default:
			return
		}
	}
}

// ask broadcasts an ARP request for a.
func (o *observer) ask(b *testing.B, a netip.Addr) {
	b.Helper()
	p, err := arp.NewPacket(arp.OperationRequest, o.mac, o.ip, make(net.HardwareAddr, 6), a)
	if err != nil {
		b.Fatalf("ARP request for %s: %v", a, err)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		b.Fatalf("ARP request for %s: %v", a, err)
	}
	frame, err := (&ethernet.Frame{Destination: ethernet.Broadcast, Source: o.mac, EtherType: ethernet.EtherTypeARP, Payload: payload}).MarshalBinary()
	if err != nil {
		b.Fatalf("ARP request for %s: %v", a, err)
	}
	if _, err := o.conn.WriteTo(frame, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
		b.Fatalf("send ARP request for %s: %v", a, err)
	}
}

// median of sorted d: the mean of the middle two when there is an even
// number.
func median(d []time.Duration) time.Duration {
	m := len(d) / 2
	if len(d)%2 == 0 {
		return (d[m-1] + d[m]) / 2
	}
	return d[m]
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msList(d []time.Duration) string {
	s := make([]string, len(d))
	for i, x := range d {
		s[i] = strconv.FormatFloat(millis(x), 'f', 1, 64)
	}
	return strings.Join(s, " ")
}
