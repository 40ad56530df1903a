package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/loader"
	"github.com/halb-lb/halb/service"
)

// TestFloodedFramesBalancedOnce is issue 14's item 16 as it was seen: two
// balancers on one LAN, both with the service, and a SYN to the VIP that
// the switch hands to both (a broadcast, or a unicast frame to a MAC it
// has not learnt). Each balancer used to send it to a backend, so the
// backends got it twice. Now a balancer sends on only the frames
// addressed to it, and a flooded frame reaches no backend through
// either; a frame to one balancer's MAC reaches a backend once.
func TestFloodedFramesBalancedOnce(t *testing.T) {
	b := newBed(t, loader.HookXDPGeneric)
	lb2 := netnstest.New(t)
	b.lan.plug(lb2, "sw-lb2", netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("2001:db8::3"))
	var lbMACs []net.HardwareAddr
	for _, ns := range []*netnstest.NS{b.lb, lb2} {
		dp := start(t, ns, datapathConfig(t, "xdp", "generic"))
		if err := dp.Apply(context.Background(), []service.Service{webService("web", webKey, service.DR)}); err != nil {
			t.Fatal(err)
		}
		waitLive(t, dp, len(backends))
		eth0, err := ns.Netlink(t).LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		lbMACs = append(lbMACs, eth0.Attrs().HardwareAddr)
	}
	clientEth0, err := b.client.ns.Netlink(t).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	clientMAC := clientEth0.Attrs().HardwareAddr

	// Every backend counts the SYNs a balancer sent it (source MAC a
	// balancer's): the client's own broadcast reaches them too, from
	// the client's MAC, and is not one.
	caps := make([]*capture, len(b.backends))
	for i, ns := range b.backends {
		caps[i] = newCapture(t, ns, "eth0")
	}
	type send struct {
		name string
		dst  net.HardwareAddr
		want int
	}
	sends := []send{
		{"a SYN to the first balancer's MAC", lbMACs[0], 1},
		{"a SYN to the second balancer's MAC", lbMACs[1], 1},
		{"a broadcast SYN", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0},
		{"a SYN to a MAC the switch has not learnt", net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}, 0},
	}
	// Each send has a client port of its own; got counts by port.
	got := map[uint16]int{}
	collect := func() {
		for _, cp := range caps {
			cp.collect(t, lbMACs, got)
		}
	}
	for i, c := range sends {
		port := uint16(43000 + i)
		halbtest.SendFrame(t, b.client.ns, "eth0", synFrame(clientMAC, c.dst, clientIP, vip, port, 80))
		// What must arrive, within a bound; what must not is looked
		// for once more at the end.
		for deadline := time.Now().Add(opTimeout); got[port] < c.want && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			collect()
		}
	}
	// Duplicates come as fast as the first copy; this leaves them long
	// enough that a slow machine still shows one.
	time.Sleep(time.Second)
	collect()
	for i, c := range sends {
		if n := got[uint16(43000+i)]; n != c.want {
			t.Errorf("%s: the backends got it %d times from the balancers, want %d", c.name, n, c.want)
		}
	}
}

// synFrame is a TCP SYN from src:sport to dst:dport in an Ethernet frame
// from srcMAC to dstMAC, checksums right.
func synFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16) []byte {
	f := make([]byte, 14+20+20)
	copy(f, dstMAC)
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], inetSum(ip, 0))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12], tcp[13] = 5<<4, 0x02 // 20 bytes, SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	var pseudo uint32
	for _, w := range [][]byte{s4[:], d4[:]} {
		pseudo += uint32(binary.BigEndian.Uint16(w)) + uint32(binary.BigEndian.Uint16(w[2:]))
	}
	pseudo += unix.IPPROTO_TCP + uint32(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], inetSum(tcp, pseudo))
	return f
}

// inetSum is the Internet checksum (RFC 1071) of b on top of sum.
func inetSum(b []byte, sum uint32) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// capture reads the IPv4 frames arriving on an interface.
type capture struct{ fd int }

func newCapture(t *testing.T, ns *netnstest.NS, ifname string) *capture {
	t.Helper()
	proto := int(htons(unix.ETH_P_IP))
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &capture{fd: fd}
}

// collect reads what has arrived and counts, by client port, the TCP SYNs
// to the VIP's port 80 whose source MAC is one of from.
func (c *capture) collect(t *testing.T, from []net.HardwareAddr, got map[uint16]int) {
	t.Helper()
	buf := make([]byte, 2048)
	for range 10000 { // bounded: the socket holds what the test sent
		m, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			t.Fatalf("read captured frames: %v", err)
		}
		f := buf[:m]
		if len(f) < 14+20+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP || f[14+9] != unix.IPPROTO_TCP {
			continue
		}
		tcp := f[14+int(f[14]&0xf)*4:]
		if !bytes.Equal(f[14+16:14+20], vip.AsSlice()) || len(tcp) < 14 ||
			binary.BigEndian.Uint16(tcp[2:]) != 80 || tcp[13]&0x02 == 0 {
			continue
		}
		for _, mac := range from {
			if bytes.Equal(f[6:12], mac) {
				got[binary.BigEndian.Uint16(tcp)]++
			}
		}
	}
	t.Fatal("more captured frames than the test sent")
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
