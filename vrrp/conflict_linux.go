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
// and the daemon wakes only for a claim on a VIP.
type conflictWatch struct {
	index  int
	mac    net.HardwareAddr // the answers' source: the link's MAC
	lladdr netip.Addr
	conns  []*packet.Conn
	quit   chan struct{} // closed at stop
	wg     sync.WaitGroup

	// mu is held across an answer's send and by stop while it marks the
	// watch stopped: no answer leaves after stop. timers are the answers
	// still waiting, which stop cancels rather than waits for.
	mu      sync.Mutex
	stopped bool
	timers  map[*time.Timer]bool
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

// startConflictWatch opens the sockets on ifi (the link that holds the
// VIPs, whose MAC the answers carry) and reads them until stop. base is
// the base interface's MAC with use_vmac, else nil; lladdr the IPv6
// source of answers. report runs on the watch's goroutines, and must not
// block: a claim whose answer is due goes to due, which the instance's
// loop reads and answers through answer, if it is still Master.
func startConflictWatch(ifi *net.Interface, base net.HardwareAddr, lladdr netip.Addr, vips []netip.Prefix,
	report func(conflictReport), due chan<- conflictReport) (*conflictWatch, error) {
	w := &conflictWatch{index: ifi.Index, mac: ifi.HardwareAddr, lladdr: lladdr, quit: make(chan struct{}), timers: map[*time.Timer]bool{}}
	check := newConflicts(vips, ifi.HardwareAddr, base)
	var mu sync.Mutex // check is shared by both sockets
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
	}
	var kinds []kind
	if len(v4) > 0 {
		kinds = append(kinds, kind{0x0806 /* ETH_P_ARP */, func() ([]bpf.RawInstruction, error) { return arpFilter(v4) }, arpClaim})
	}
	if len(v6) > 0 {
		kinds = append(kinds, kind{0x86dd /* ETH_P_IPV6 */, naFilter, naClaim})
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
		w.conns = append(w.conns, c)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			buf := make([]byte, 1500)
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					// Closed by stop (which closes quit first), or a
					// passing error such as the link going down: the
					// instance leaves Master then and stops the watch.
					select {
					case <-w.quit:
						return
					case <-time.After(50 * time.Millisecond):
					}
					continue
				}
				cl, ok := k.parse(buf[:n])
				if !ok {
					continue
				}
				mu.Lock()
				conflict, answer, claims := check.check(time.Now(), cl)
				mu.Unlock()
				if !conflict {
					continue
				}
				r := conflictReport{vip: cl.ip, mac: cl.mac, claims: claims, watch: w, conn: c}
				report(r)
				if !answer {
					continue
				}
				// The answer waits on a timer of its own, so that the
				// reader goes on counting claims meanwhile; then the
				// instance decides. The hand-over waits for the
				// instance's loop, or for stop (which that loop calls).
				w.mu.Lock()
				w.wg.Add(1)
				var t *time.Timer
				t = time.AfterFunc(conflictAnswerDelay, func() {
					defer w.wg.Done()
					w.mu.Lock()
					delete(w.timers, t)
					stopped := w.stopped
					w.mu.Unlock()
					if stopped {
						return // no longer Master
					}
					r.due = true
					select {
					case due <- r:
					case <-w.quit:
					}
				})
				w.timers[t] = true
				w.mu.Unlock()
			}
		}()
	}
	return w, nil
}

// answer sends the announcement for a due claim r, unless the watch has
// stopped (the instance left Master), and returns r as answered, with
// the error of the send, if any; ok is false when nothing was sent.
func (w *conflictWatch) answer(r conflictReport) (_ conflictReport, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return r, false
	}
	r.due, r.answered = false, true
	r.err = answerClaim(r.conn, w.mac, w.lladdr, r.vip)
	return r, true
}

// answerClaim sends one gratuitous ARP or unsolicited NA for vip from
// mac, as at takeover.
func answerClaim(c net.PacketConn, mac net.HardwareAddr, lladdr, vip netip.Addr) error {
	frame, dst, err := announcement(mac, lladdr, vip)
	if err != nil {
		return err
	}
	_, err = c.WriteTo(frame, &packet.Addr{HardwareAddr: dst})
	return err
}

func (w *conflictWatch) ifindex() int { return w.index }

// stop closes the sockets and waits for the readers: no answer leaves
// after stop returns.
func (w *conflictWatch) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.stopped = true
	close(w.quit)
	for t := range w.timers {
		if t.Stop() {
			w.wg.Done() // its function will not run
		}
	}
	w.mu.Unlock()
	for _, c := range w.conns {
		c.Close()
	}
	w.wg.Wait()
}
