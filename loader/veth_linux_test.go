package loader

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// peerXDPPass attaches, natively, an XDP program that passes everything
// to halb0p, halb0's peer in the backends' namespace, until t ends: what
// native XDP on halb0 needs for the frames it sends back out to arrive.
func (b *dpBench) peerXDPPass(t *testing.T) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	err = b.peers.Do(func() error {
		ifi, err := net.InterfaceByName("halb0p")
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		t.Fatalf("XDP_PASS on halb0p: %v", err)
	}
	t.Cleanup(func() { l.Close() })
}

// bounce sends a SYN to the VIP from halb0p to halb0, and tells whether
// the data path's answer, the frame sent back out to the backend (whose
// address halb0p holds), arrives at halb0p.
func (b *dpBench) bounce(t *testing.T, sport uint16) bool {
	t.Helper()
	peer, err := b.peers.Netlink(t).LinkByName("halb0p")
	if err != nil {
		t.Fatal(err)
	}
	peerMAC := peer.Attrs().HardwareAddr
	frame := packet{src: netip.MustParseAddrPort("192.0.2.50:0"), dst: netip.AddrPortFrom(web.VIP, web.Port)}
	frame.src = netip.AddrPortFrom(frame.src.Addr(), sport)
	out := frame.frame(t, peerMAC, halb0MAC)
	arrived := false
	err = b.peers.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifindex := peer.Attrs().Index
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		if err := unix.Sendto(fd, out, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
			return err
		}
		buf := make([]byte, 2048)
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // the timeout: look at the clock again
			}
			sll, ok := from.(*unix.SockaddrLinklayer)
			if ok && sll.Pkttype == unix.PACKET_HOST && n == len(out) &&
				bytes.Equal(buf[0:6], peerMAC) && bytes.Equal(buf[6:12], halb0MAC) && bytes.Equal(buf[12:n], out[12:]) {
				arrived = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("bounce a SYN off halb0: %v", err)
	}
	return arrived
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// On a veth whose peer has no XDP program, xdp_mode auto takes generic
// XDP, and the frames the data path sends back out arrive; native is
// what it takes when the peer has one. xdp_mode native on such a veth is
// kept, with a warning that names the fix. The peer may sit in another
// namespace (halb0p) or in the same one (vp0p).
func TestDatapathVethPeer(t *testing.T) {
	b := newDPBench(t)
	cfg := b.cfg
	cfg.XDPMode = "auto"
	ctx := context.Background()
	services := []service.Service{svc(web, backend(be11, 1))}

	dp := b.start(t, cfg, config.ModeXDP)
	if got := dp.Attachments(); !slices.Equal(got, []Attachment{{"halb0", HookXDPGeneric}}) {
		t.Errorf("auto on a veth whose peer has no XDP program: %v, want generic XDP on halb0", got)
	}
	if !regexp.MustCompile(`level=INFO msg="veth peer has no xdp program.*using generic xdp" .*interface=halb0 peer=halb0p peer_netnsid=\d+`).MatchString(b.log.String()) {
		t.Errorf("no log line naming the veth peer without XDP:\n%s", b.log)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	if !b.bounce(t, 40001) {
		t.Errorf("generic XDP on halb0: the SYN sent back out to the backend did not arrive at halb0p")
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}

	// native as asked, with a warning.
	cfg.XDPMode = "native"
	dp = b.start(t, cfg, config.ModeXDP)
	if got := dp.Attachments(); !slices.Equal(got, []Attachment{{"halb0", HookXDPNative}}) {
		t.Errorf("native on a veth: %v, want native XDP on halb0", got)
	}
	if !regexp.MustCompile(`level=WARN msg="native xdp on a veth whose peer has no xdp program: .*attach an xdp program to the peer \(one that returns XDP_PASS is enough\) or set datapath.xdp_mode: auto" .*interface=halb0 peer=halb0p`).MatchString(b.log.String()) {
		t.Errorf("no warning naming the fix for native XDP on a veth:\n%s", b.log)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}

	// The peer gets an XDP program: auto takes native, and the frames
	// arrive.
	b.peerXDPPass(t)
	cfg.XDPMode = "auto"
	dp = b.start(t, cfg, config.ModeXDP)
	if got := dp.Attachments(); !slices.Equal(got, []Attachment{{"halb0", HookXDPNative}}) {
		t.Errorf("auto on a veth whose peer has an XDP program: %v, want native XDP on halb0", got)
	}
	if err := dp.Apply(ctx, services); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	if !b.bounce(t, 40002) {
		t.Errorf("native XDP on halb0, XDP_PASS on halb0p: the SYN sent back out to the backend did not arrive at halb0p")
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}

	// A veth pair within the balancer's namespace, beside halb0: vp0
	// gets generic XDP, and halb0's native program, which redirects
	// frames for backends on vp0's link into it, draws a warning.
	h := b.lb.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vp0"}, PeerName: "vp0p"}); err != nil {
		t.Fatal(err)
	}
	up(t, h, "vp0p")
	up(t, h, "vp0")
	cfg.Interfaces = []string{"halb0", "vp0"}
	dp = b.start(t, cfg, config.ModeXDP)
	if got := dp.Attachments(); !slices.Equal(got, []Attachment{{"halb0", HookXDPNative}, {"vp0", HookXDPGeneric}}) {
		t.Errorf("auto on halb0 and vp0, whose peer in the same namespace has no XDP program: %v, want native on halb0, generic on vp0", got)
	}
	if !regexp.MustCompile(`msg="veth peer has no xdp program.*" .*interface=vp0 peer=vp0p`).MatchString(b.log.String()) {
		t.Errorf("no log line naming vp0's peer:\n%s", b.log)
	}
	if !regexp.MustCompile(`level=WARN msg="frames native xdp redirects into a veth whose peer has no xdp program are dropped .*" .*from=halb0 into=vp0`).MatchString(b.log.String()) {
		t.Errorf("no warning about halb0 redirecting into vp0:\n%s", b.log)
	}
	if err := dp.Cleanup(); err != nil {
		t.Fatal(err)
	}
}
