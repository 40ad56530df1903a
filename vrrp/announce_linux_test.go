package vrrp

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/mdlayher/packet"
)

// On becoming Master a node announces each VIP garp_master_repeat times at
// once and again after garp_master_delay: gratuitous ARP for IPv4,
// unsolicited NA with Override for IPv6. The peer's side of the link sees
// them.
func TestTakeoverIsAnnounced(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "ipv4-garp", true: "ipv6-na"}[v6]
		t.Run(name, func(t *testing.T) {
			v := variant{name, 3, v6, false, 100 * time.Millisecond}
			l := newLAN(t, v6)
			cfg := strings.Replace(v.config(l, 0, 150, true), "garp_master_repeat: 1", "garp_master_repeat: 2", 1)
			a := newNode(t, "a", l.ns[0], cfg)

			frames := make(chan []byte, 64)
			listenOnPeer(t, l, frames)
			a.start(t)
			waitAddr(t, l.h[0], v.vip(), true, 10*time.Second)

			mac := l.link(t, 0).Attrs().HardwareAddr
			var got []time.Time
			deadline := time.After(4 * time.Second) // delay is 1s: both bursts fit
			for len(got) < 4 {
				select {
				case f := <-frames:
					if announces(f, mac, v.vip()) {
						got = append(got, time.Now())
					}
				case <-deadline:
					t.Fatalf("saw %d announcements of %s, want 4 (2 now, 2 after garp_master_delay)", len(got), v.vip())
				}
			}
			t.Logf("announcements at +0, %v, %v, %v", got[1].Sub(got[0]).Round(time.Millisecond),
				got[2].Sub(got[0]).Round(time.Millisecond), got[3].Sub(got[0]).Round(time.Millisecond))
			if gap := got[2].Sub(got[1]); gap < 500*time.Millisecond {
				t.Errorf("second burst came %v after the first; garp_master_delay is 1s", gap)
			}
		})
	}
}

// listenOnPeer passes every frame arriving on the peer's lan0 to out.
func listenOnPeer(t *testing.T, l *lan, out chan<- []byte) {
	t.Helper()
	var c *packet.Conn
	err := l.ns[1].Do(func() error {
		ifi, err := net.InterfaceByName("lan0")
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, 0x0003 /* ETH_P_ALL */, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case out <- append([]byte(nil), buf[:n]...):
			default:
			}
		}
	}()
}

// announces reports whether frame announces vip at mac.
func announces(frame []byte, mac net.HardwareAddr, vip netip.Addr) bool {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		return bytes.Equal(a.SourceHwAddress, mac) && bytes.Equal(a.SourceProtAddress, vip.AsSlice()) &&
			bytes.Equal(a.DstProtAddress, vip.AsSlice())
	}
	if na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement); ok {
		return na.Override() && na.TargetAddress.Equal(net.IP(vip.AsSlice())) &&
			len(na.Options) > 0 && bytes.Equal(na.Options[0].Data, mac)
	}
	return false
}

// A VIP that someone deletes while halb is Master is put back (and
// announced again): the backups believe this node holds it.
func TestDeletedVIPIsPutBack(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	a := newNode(t, "a", l.ns[0], v.config(l, 0, 150, true))
	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, 10*time.Second)
	if err := l.h[0].AddrDel(l.link(t, 0), toAddr(netip.MustParsePrefix("192.0.2.100/24"))); err != nil {
		t.Fatal(err)
	}
	took := waitAddr(t, l.h[0], v.vip(), true, 10*time.Second)
	waitLog(t, a, "virtual IP was removed while MASTER; restoring it")
	t.Logf("deleted VIP restored after %v", took.Round(time.Millisecond))
}
