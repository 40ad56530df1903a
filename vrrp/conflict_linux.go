package vrrp

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
)

// conflictWatch reads, while the instance is Master, the ARP packets and
// Neighbor Advertisements that claim one of its VIPs, on sockets of their
// own with kernel filters (conflict.go): the advert path never sees them,
// and the daemon wakes only for a claim on a VIP. What to do with a claim
// (count it, hand its answer to the instance later) is claimWatch's, in
// conflict.go; here are only the sockets.
type conflictWatch struct {
	index  int
	mac    net.HardwareAddr // the answers' source: the link's MAC
	lladdr netip.Addr
	claims *claimWatch
	// arp and na are the sockets that read the claims on IPv4 and IPv6
	// VIPs, and send the answers; nil without VIPs of that family.
	arp, na *packet.Conn
	wg      sync.WaitGroup // the readers
}

// startConflictWatch opens the sockets on ifi (the link that holds the
// VIPs, whose MAC the answers carry) and reads them until stop. base is
// the base interface's MAC with use_vmac, else nil; lladdr the IPv6
// source of answers. report runs on the watch's goroutines, and must not
// block: a claim whose answer is due goes to due, which the instance's
// loop reads and answers through answer, if it is still Master.
func startConflictWatch(ifi *net.Interface, base net.HardwareAddr, lladdr netip.Addr, vips []netip.Prefix,
	report func(conflictReport), due chan<- conflictReport) (*conflictWatch, error) {
	w := &conflictWatch{index: ifi.Index, mac: ifi.HardwareAddr, lladdr: lladdr}
	w.claims = newClaimWatch(w, vips, report, due, ifi.HardwareAddr, base)
	var v4, v6 []netip.Addr
	for _, p := range vips {
		if p.Addr().Is4() {
			v4 = append(v4, p.Addr())
		} else {
			v6 = append(v6, p.Addr())
		}
	}
	type kind struct {
		proto  int
		filter func() ([]bpf.RawInstruction, error)
		parse  func([]byte) (claim, bool)
		conn   **packet.Conn
	}
	var kinds []kind
	if len(v4) > 0 {
		kinds = append(kinds, kind{0x0806 /* ETH_P_ARP */, func() ([]bpf.RawInstruction, error) { return arpFilter(v4) }, arpClaim, &w.arp})
	}
	if len(v6) > 0 {
		kinds = append(kinds, kind{0x86dd /* ETH_P_IPV6 */, naFilter, naClaim, &w.na})
	}
	for _, k := range kinds {
		filter, err := k.filter()
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("address conflict filter: %w", err)
		}
		c, err := packet.Listen(ifi, packet.Raw, k.proto, &packet.Config{Filter: filter})
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("listen for address conflicts on %s: %w", ifi.Name, err)
		}
		*k.conn = c
		w.wg.Go(func() { w.readClaims(c, k.parse) })
	}
	return w, nil
}

// readClaims reads c until stop and gives each claim to the watch's
// claims.
func (w *conflictWatch) readClaims(c *packet.Conn, parse func([]byte) (claim, bool)) {
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			// Closed by stop (which stops the claims first), or a
			// passing error such as the link going down: the instance
			// leaves Master then and stops the watch.
			select {
			case <-w.claims.done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if cl, ok := parse(buf[:n]); ok {
			w.claims.read(time.Now(), cl)
		}
	}
}

// answer sends the announcement for a due claim r, unless the watch has
// stopped (the instance left Master), and returns r as answered, with
// the error of the send, if any; ok is false when nothing was sent. The
// answer leaves on the socket that read the claim.
func (w *conflictWatch) answer(r conflictReport) (_ conflictReport, ok bool) {
	c := w.arp
	if !r.vip.Is4() {
		c = w.na
	}
	ok = w.claims.whileRunning(func() {
		r.due, r.answered = false, true
		r.err = answerClaim(c, w.mac, w.lladdr, r.vip)
	})
	return r, ok
}

// answerClaim sends one gratuitous ARP or unsolicited NA for vip from
// mac, as at takeover.
func answerClaim(c *packet.Conn, mac net.HardwareAddr, lladdr, vip netip.Addr) error {
	if c == nil {
		return fmt.Errorf("no socket for the answer on %s", vip)
	}
	frame, dst, err := announcement(mac, lladdr, vip)
	if err != nil {
		return err
	}
	_, err = c.WriteTo(frame, &packet.Addr{HardwareAddr: dst})
	return err
}

func (w *conflictWatch) ifindex() int { return w.index }

// stop ends the claims' hand-overs, closes the sockets and waits for the
// readers: no answer leaves after stop returns.
func (w *conflictWatch) stop() {
	if w == nil {
		return
	}
	w.claims.stop()
	for _, c := range []*packet.Conn{w.arp, w.na} {
		if c != nil {
			c.Close()
		}
	}
	w.wg.Wait()
}
