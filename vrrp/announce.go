package vrrp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Announcements tell the link that the virtual addresses moved, so that
// switches and neighbours stop sending to the old master at once instead
// of when their caches expire (RFC 5798 §6.4.2: gratuitous ARP for IPv4,
// unsolicited Neighbor Advertisement for IPv6).

var (
	broadcastMAC  = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	allNodesMAC   = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01} // ff02::1
	allNodesGroup = netip.MustParseAddr("ff02::1")
)

// GratuitousARP builds an Ethernet frame holding an ARP request in which
// the sender and target address are both vip: every host that has vip in
// its cache updates it to mac.
func GratuitousARP(mac net.HardwareAddr, vip netip.Addr) ([]byte, error) {
	p, err := arp.NewPacket(arp.OperationRequest, mac, vip, broadcastMAC, vip)
	if err != nil {
		return nil, fmt.Errorf("gratuitous ARP for %s: %w", vip, err)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("gratuitous ARP for %s: %w", vip, err)
	}
	f := ethernet.Frame{Destination: broadcastMAC, Source: mac, EtherType: ethernet.EtherTypeARP, Payload: payload}
	return f.MarshalBinary()
}

// UnsolicitedNA builds an Ethernet frame holding an unsolicited Neighbor
// Advertisement for vip to all nodes, with the Override flag so that caches
// replace the old master's address, and the Target Link-Layer Address
// option (RFC 4861 §4.4, §7.2.6). src is the IPv6 source: a link-local
// address of the interface, as RFC 4861 asks of router-like senders.
func UnsolicitedNA(mac net.HardwareAddr, src, vip netip.Addr) ([]byte, error) {
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
	icmp, err := ndp.MarshalMessageChecksum(na, src, allNodesGroup)
	if err != nil {
		return nil, fmt.Errorf("neighbor advertisement for %s: %w", vip, err)
	}
	f := ethernet.Frame{Destination: allNodesMAC, Source: mac, EtherType: ethernet.EtherTypeIPv6,
		Payload: append(ipv6Header(src, allNodesGroup, 58, len(icmp)), icmp...)}
	return f.MarshalBinary()
}

// ipv6Header is a fixed IPv6 header with hop limit 255, which neighbour
// discovery requires of every message it accepts (RFC 4861 §7.1.2).
func ipv6Header(src, dst netip.Addr, next byte, payloadLen int) []byte {
	h := make([]byte, 40)
	h[0] = 6 << 4
	binary.BigEndian.PutUint16(h[4:6], uint16(payloadLen))
	h[6] = next
	h[7] = 255
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return h
}

// garpSchedule is keepalived's schedule of announcements for a Master:
// garp_master_repeat of each at takeover, again after garp_master_delay,
// then one round every garp_master_refresh.
type garpSchedule struct {
	next time.Time // zero: none due
	left int       // bursts still due before refreshes take over
}

// start schedules the takeover's two bursts: one now, one after
// garp_master_delay.
func (g *garpSchedule) start(now time.Time) { g.left, g.next = 2, now }

// again makes a burst due now (a VIP was put back), keeping the rest.
func (g *garpSchedule) again(now time.Time) { g.left, g.next = max(g.left, 1), now }

func (g *garpSchedule) stop() { g.next, g.left = time.Time{}, 0 }

// due reports whether a burst is due at now and, if so, schedules the
// next one.
func (g *garpSchedule) due(now time.Time, delay, refresh time.Duration) bool {
	if g.next.IsZero() || now.Before(g.next) {
		return false
	}
	if g.left > 0 {
		g.left--
	}
	switch {
	case g.left > 0 && delay > 0:
		g.next = now.Add(delay)
	case refresh > 0:
		g.next = now.Add(refresh)
	default:
		g.next = time.Time{}
	}
	return true
}

// announceDue sends the gratuitous ARPs / unsolicited NAs that are due
// while Master.
func (in *Instance) announceDue(now time.Time) {
	if in.m.State() != Master {
		return
	}
	if in.garp.due(now, in.cfg.GARPMasterDelay, in.cfg.GARPMasterRefresh) {
		in.announce(in.cfg.GARPMasterRepeat)
	}
}

// announce sends repeat announcements of each VIP on the link that holds
// them, from its MAC.
func (in *Instance) announce(repeat int) {
	if ifc := in.vipIfc; ifc.Index != 0 && len(ifc.HardwareAddr) != 0 {
		in.announceOn(ifc, in.lladdr, in.vips, repeat)
	}
	in.announceOthers(repeat)
}

// announceOn sends repeat announcements of vips on ifc, from its MAC and,
// for IPv6, its link-local address lladdr.
func (in *Instance) announceOn(ifc iface, lladdr netip.Addr, vips []netip.Prefix, repeat int) {
	for _, p := range vips {
		frame, dst, err := announcement(ifc.HardwareAddr, lladdr, p.Addr())
		if err != nil {
			in.log.Warn("cannot build announcement", "vip", p.String(), "err", err)
			continue
		}
		for range repeat {
			if err := in.link.sendFrame(ifc, frame, dst); err != nil {
				in.log.Warn("announcement not sent", "vip", p.String(), "err", err)
				break
			}
		}
	}
}

// announcement is the frame that tells the link that mac holds vip, and
// its destination: a gratuitous ARP to all, or an unsolicited NA to all
// nodes from lladdr (from vip when the interface has no link-local
// address).
func announcement(mac net.HardwareAddr, lladdr, vip netip.Addr) ([]byte, net.HardwareAddr, error) {
	if vip.Is4() {
		f, err := GratuitousARP(mac, vip)
		return f, broadcastMAC, err
	}
	src := lladdr
	if !src.IsValid() {
		src = vip
	}
	f, err := UnsolicitedNA(mac, src, vip)
	return f, allNodesMAC, err
}
