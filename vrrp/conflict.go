package vrrp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"
)

// A Master defends the virtual addresses it holds. Another host that sends
// a gratuitous ARP, an ARP reply or request with a VIP as its sender, or a
// Neighbor Advertisement for a VIP, moves the LAN's neighbour entries (and
// so the clients) to itself, silently: by mistake (a host configured with
// the VIP), in a split brain, or as an attack. The Master logs such a
// claim, counts it, and answers with its own announcement, at most one per
// VIP per conflictAnswerInterval, so that two Masters (or a host flooding
// claims) cannot make an announcement storm between them.

// conflictAnswerInterval is the least time between two answers for one
// VIP; claims in between are counted, and the next log says how many.
const conflictAnswerInterval = time.Second

// claim is a frame in which the host at mac says it holds ip.
type claim struct {
	ip  netip.Addr
	mac net.HardwareAddr
}

// arpClaim reads an Ethernet frame holding an ARP packet: any request or
// reply whose sender protocol address is set claims that address for the
// sender hardware address. An ARP probe (sender 0.0.0.0, RFC 5227) asks
// and claims nothing.
func arpClaim(frame []byte) (claim, bool) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeARP {
		return claim{}, false
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		return claim{}, false
	}
	ip := p.SenderIP.Unmap()
	if !ip.Is4() || ip.IsUnspecified() || isZeroMAC(p.SenderHardwareAddr) {
		return claim{}, false
	}
	return claim{ip: ip, mac: p.SenderHardwareAddr}, true
}

// naClaim reads an Ethernet frame holding an IPv6 Neighbor Advertisement:
// it claims its target for the MAC in its Target Link-Layer Address
// option, or without one for the frame's source.
func naClaim(frame []byte) (claim, bool) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil || f.EtherType != ethernet.EtherTypeIPv6 {
		return claim{}, false
	}
	ip := f.Payload
	if len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != 58 {
		return claim{}, false
	}
	n := 40 + int(binary.BigEndian.Uint16(ip[4:6]))
	if n > len(ip) {
		return claim{}, false
	}
	m, err := ndp.ParseMessage(ip[40:n])
	if err != nil {
		return claim{}, false
	}
	na, ok := m.(*ndp.NeighborAdvertisement)
	if !ok {
		return claim{}, false
	}
	c := claim{ip: na.TargetAddress, mac: f.Source}
	for _, o := range na.Options {
		if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
			c.mac = l.Addr
		}
	}
	if !c.ip.IsValid() || isZeroMAC(c.mac) {
		return claim{}, false
	}
	return c, true
}

func isZeroMAC(m net.HardwareAddr) bool {
	return len(m) == 0 || bytes.Equal(m, make(net.HardwareAddr, len(m)))
}

// conflicts tells whether a claim takes a VIP from us, and whether to
// answer it now.
type conflicts struct {
	vips map[netip.Addr]bool
	ours []net.HardwareAddr // the interface's MAC and the VMAC
	last map[netip.Addr]time.Time
	held map[netip.Addr]uint64 // claims since the last answer, per VIP
}

func newConflicts(vips []netip.Prefix, ours ...net.HardwareAddr) *conflicts {
	c := &conflicts{vips: map[netip.Addr]bool{}, last: map[netip.Addr]time.Time{}, held: map[netip.Addr]uint64{}}
	for _, p := range vips {
		c.vips[p.Addr()] = true
	}
	for _, m := range ours {
		if len(m) > 0 {
			c.ours = append(c.ours, m)
		}
	}
	return c
}

// check reports whether cl claims one of the VIPs for another MAC
// (conflict) and, if so, whether this is the claim to answer (answer),
// with the number of claims for that VIP since the last answer, this one
// included.
func (c *conflicts) check(now time.Time, cl claim) (conflict, answer bool, claims uint64) {
	if !c.vips[cl.ip] {
		return false, false, 0
	}
	for _, m := range c.ours {
		if bytes.Equal(m, cl.mac) {
			return false, false, 0
		}
	}
	c.held[cl.ip]++
	if last, ok := c.last[cl.ip]; ok && now.Sub(last) < conflictAnswerInterval {
		return true, false, c.held[cl.ip]
	}
	c.last[cl.ip] = now
	claims = c.held[cl.ip]
	c.held[cl.ip] = 0
	return true, true, claims
}

// arpFilter admits to the ARP socket only packets whose sender protocol
// address is one of vips: the daemon never wakes for the LAN's other ARP.
func arpFilter(vips []netip.Addr) ([]bpf.RawInstruction, error) {
	var v4 []netip.Addr
	for _, a := range vips {
		if a.Is4() {
			v4 = append(v4, a)
		}
	}
	// Ethernet header (14) + ARP: sender protocol address at 14+14.
	prog := []bpf.Instruction{bpf.LoadAbsolute{Off: 28, Size: 4}}
	for i, a := range v4 {
		// Jump to accept (after the remaining compares and the drop).
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(a.AsSlice()), SkipTrue: uint8(len(v4) - i)})
	}
	prog = append(prog, bpf.RetConstant{Val: 0}, bpf.RetConstant{Val: 0xffff})
	return bpf.Assemble(prog)
}

// naFilter admits to the IPv6 socket only ICMPv6 Neighbor Advertisements
// without extension headers (as neighbour discovery sends them), so that
// adverts and the rest of the traffic stay in the kernel.
func naFilter() ([]bpf.RawInstruction, error) {
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 14 + 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 58, SkipFalse: 2},
		bpf.LoadAbsolute{Off: 14 + 40, Size: 1}, // ICMPv6 type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(ipv6NeighborAdvert), SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 0xffff},
	})
}

// ipv6NeighborAdvert is the ICMPv6 type of a Neighbor Advertisement (RFC
// 4861 §4.4).
const ipv6NeighborAdvert = 136

// conflictReport is what the watch tells the instance: a claim, at once,
// to count; later, for the claims to answer, that the answer is due; and
// once sent, the answer.
type conflictReport struct {
	vip      netip.Addr
	mac      net.HardwareAddr
	due      bool   // the claim's answer is due: the instance decides
	answered bool   // this reports the answer to a claim reported before
	claims   uint64 // since the last answer, this one included
	err      error  // the answer could not be sent

	watch conflictWatcher // the watch that read the claim, and answers it
}

// conflictAnswerDelay is how long a claim waits before the instance
// decides on its answer. A peer that takes over by the protocol sends its
// advert and then its gratuitous ARP at once: in that time the advert
// reaches the instance. The decision itself is the instance's, on its own
// loop, after the adverts already read (answerDue): so however late that
// loop runs on a loaded host, an advert that came before the claim is
// handled first, the instance is no longer Master, and the claim is not
// answered. Answering on a timer of the watch's own raced the loop, and
// could pull the clients back to a node giving the VIP up.
const conflictAnswerDelay = 200 * time.Millisecond

// claimWatch is what a conflict watch does with the claims its link
// reads (conflict_linux.go reads them off packet sockets): it counts
// each through report, and hands the claims to answer to the instance's
// loop (due) after conflictAnswerDelay, each on a timer of its own so
// that the reader goes on counting meanwhile. After stop nothing more
// is handed over, and no answer leaves (whileRunning).
type claimWatch struct {
	check  *conflicts
	report func(conflictReport)
	due    chan<- conflictReport
	watch  conflictWatcher // what the reports name as their watch

	checkMu sync.Mutex    // check is shared by the link's readers
	quit    chan struct{} // closed at stop
	wg      sync.WaitGroup

	// mu is held across an answer's send and by stop while it marks the
	// watch stopped. timers are the hand-overs still waiting, which stop
	// cancels rather than waits for.
	mu      sync.Mutex
	stopped bool
	timers  map[*time.Timer]bool
}

// newClaimWatch prepares the claims of the watch w on vips; ours are the
// MACs whose claims are this node's own.
func newClaimWatch(w conflictWatcher, vips []netip.Prefix, report func(conflictReport), due chan<- conflictReport,
	ours ...net.HardwareAddr) *claimWatch {
	return &claimWatch{check: newConflicts(vips, ours...), report: report, due: due, watch: w,
		quit: make(chan struct{}), timers: map[*time.Timer]bool{}}
}

// read handles one claim the link read: a conflict is reported at once,
// and the one to answer is handed to the instance once its delay is over.
func (c *claimWatch) read(now time.Time, cl claim) {
	c.checkMu.Lock()
	conflict, answer, claims := c.check.check(now, cl)
	c.checkMu.Unlock()
	if !conflict {
		return
	}
	r := conflictReport{vip: cl.ip, mac: cl.mac, claims: claims, watch: c.watch}
	c.report(r)
	if answer {
		c.handOverLater(r)
	}
}

// handOverLater sends r to the instance's loop as due after
// conflictAnswerDelay, unless the watch stops first. The hand-over waits
// for the instance's loop, or for stop (which that loop calls).
func (c *claimWatch) handOverLater(r conflictReport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return // no longer Master
	}
	c.wg.Add(1)
	var t *time.Timer
	t = time.AfterFunc(conflictAnswerDelay, func() {
		defer c.wg.Done()
		c.mu.Lock()
		delete(c.timers, t)
		stopped := c.stopped
		c.mu.Unlock()
		if stopped {
			return
		}
		r.due = true
		select {
		case c.due <- r:
		case <-c.quit:
		}
	})
	c.timers[t] = true
}

// whileRunning runs send (an answer) unless the watch has stopped, and
// holds stop off until it is done; it reports whether send ran.
func (c *claimWatch) whileRunning(send func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	send()
	return true
}

// done is closed when the watch stops.
func (c *claimWatch) done() <-chan struct{} { return c.quit }

// stop ends the hand-overs: those waiting are cancelled, one under way
// gives up; it returns once none runs. No answer leaves after it.
func (c *claimWatch) stop() {
	c.mu.Lock()
	if !c.stopped {
		c.stopped = true
		close(c.quit)
		for t := range c.timers {
			if t.Stop() {
				c.wg.Done() // its function will not run
			}
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// watchConflicts makes sure that, as Master, the instance answers claims
// on its VIPs on the link that holds them; a failure is logged and tried
// again at the next change the link reports about the interface.
func (in *Instance) watchConflicts() {
	ifc := in.vipIfc
	if ifc.Index == 0 || len(ifc.HardwareAddr) == 0 {
		return
	}
	if in.conflicts != nil && in.conflicts.ifindex() == ifc.Index {
		return
	}
	in.stopConflicts()
	var base net.HardwareAddr
	if in.ifc.Index != 0 {
		base = in.ifc.HardwareAddr
	}
	w, err := in.link.watchConflicts(ifc, base, in.lladdr, in.onConflict, in.conflictDue)
	if err != nil {
		in.log.Warn("cannot watch for address conflicts", "err", err)
		return
	}
	in.conflicts = w
}

func (in *Instance) stopConflicts() {
	if in.conflicts != nil {
		in.conflicts.stop()
		in.conflicts = nil
	}
}

// onConflict counts a claim on a VIP by another host, and logs an answer
// (at most one per VIP per conflictAnswerInterval, with how many claims
// came since the last); it runs on the watch's goroutines.
func (in *Instance) onConflict(r conflictReport) {
	if !r.answered {
		in.mu.Lock()
		in.status.Conflicts[r.vip.String()]++
		in.mu.Unlock()
		return
	}
	attrs := []any{"vip", r.vip.String(), "mac", r.mac.String(), "claims", r.claims}
	if r.err != nil {
		in.log.Error("address conflict: another host claims a virtual IP; answer not sent", append(attrs, "err", r.err)...)
		return
	}
	in.log.Warn("address conflict: another host claims a virtual IP; answered with our announcement", attrs...)
}

// answerDue decides on a claim whose answer is due. A peer taking over by
// the protocol sent its advert before its claim: whatever the adverts and
// sync-group orders already waiting say is handled first, so that an
// instance that is giving the VIPs up (no longer Master, its watch
// stopped) does not answer and pull the clients back. Only the watch now
// running answers, and only as Master.
func (in *Instance) answerDue(now time.Time, r conflictReport) {
	for range cap(in.adverts) + cap(in.groupCmds) {
		select {
		case p := <-in.adverts:
			in.receive(now, p)
			continue
		case cmd := <-in.groupCmds:
			in.groupCmd(now, cmd)
			continue
		default:
		}
		break
	}
	if in.conflicts == nil || in.conflicts != r.watch || in.m.State() != Master {
		return
	}
	if r, ok := r.watch.answer(r); ok {
		in.onConflict(r)
	}
}
