package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/nsthread"
)

// A host of the demo's LAN: a named network namespace (`ip netns exec
// halbdemo-lb1 ...` reaches it too) with one interface, eth0, plugged
// into the bridge.
type host struct {
	name   string // lb1, be2, ...
	handle netns.NsHandle
	nl     *netlink.Handle
}

// newHost makes the namespace prefix+name with its loopback up.
func newHost(name string) (*host, error) {
	h := &host{name: name}
	var err error
	if h.handle, err = nsthread.NewNamed(prefix + name); err != nil {
		return nil, err
	}
	if h.nl, err = netlink.NewHandleAt(h.handle); err != nil {
		h.close()
		return nil, fmt.Errorf("netlink in %s%s: %w", prefix, name, err)
	}
	lo, err := h.nl.LinkByName("lo")
	if err == nil {
		err = h.nl.LinkSetUp(lo)
	}
	if err != nil {
		h.close()
		return nil, fmt.Errorf("bring up lo in %s%s: %w", prefix, name, err)
	}
	return h, nil
}

// close lets go of the namespace; sweep deletes it.
func (h *host) close() {
	if h.nl != nil {
		h.nl.Close()
	}
	h.handle.Close()
}

// do runs fn on a thread inside the namespace. Sockets fn opens stay
// there; a process fn starts runs there.
func (h *host) do(fn func() error) error {
	return nsthread.Do(h.handle, fn)
}

// spawn starts cmd inside the namespace.
func (h *host) spawn(cmd *exec.Cmd) error { return h.do(cmd.Start) }

// eth0 is the host's interface on the LAN.
func (h *host) eth0() (netlink.Link, error) {
	l, err := h.nl.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("eth0 of %s: %w", h.name, err)
	}
	return l, nil
}

// newBridge makes the LAN: br0 in the lan host.
func newBridge(lan *host) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := lan.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("add br0: %w", err)
	}
	return lan.nl.LinkSetUp(br)
}

// plug connects h to the bridge with a veth: eth0 in h, with addr, and a
// port on br0 named after h. It returns the port. Both ends are made in
// namespaces of the demo, never in the host's own.
func plug(lan, h *host, addr netip.Prefix) (netlink.Link, error) {
	br, err := lan.nl.LinkByName("br0")
	if err != nil {
		return nil, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: h.name, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(h.handle)),
	}
	if err := lan.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add a veth from br0 to %s: %w", h.name, err)
	}
	port, err := lan.nl.LinkByName(h.name)
	if err == nil {
		err = lan.nl.LinkSetUp(port)
	}
	if err != nil {
		return nil, fmt.Errorf("bring up port %s: %w", h.name, err)
	}
	eth0, err := h.eth0()
	if err != nil {
		return nil, err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
	if err := h.nl.AddrAdd(eth0, a); err != nil {
		return nil, fmt.Errorf("add %s to eth0 of %s: %w", addr, h.name, err)
	}
	if err := h.nl.LinkSetUp(eth0); err != nil {
		return nil, fmt.Errorf("bring up eth0 of %s: %w", h.name, err)
	}
	return port, nil
}

// holdVIP makes h a DR backend: the VIP on lo, so that it accepts the
// frames the balancer hands it, and no ARP answer for it (arp_ignore=1:
// only for addresses of the interface asked on; arp_announce=2: never the
// VIP as the source of its own requests), so that the LAN finds the VIP
// at the VRRP Master only.
func holdVIP(h *host, vip netip.Addr) error {
	lo, err := h.nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("add the VIP to lo of %s: %w", h.name, err)
	}
	return h.do(func() error {
		for _, dev := range []string{"all", "eth0"} {
			for knob, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2"} {
				// /proc/sys/net is the namespace of the thread that opens it.
				if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", dev, knob), []byte(v), 0o644); err != nil {
					return fmt.Errorf("%s on %s: %w", knob, h.name, err)
				}
			}
		}
		return nil
	})
}

// passXDP attaches to port, natively, an XDP program that passes every
// frame. A veth drops the frames native XDP sends back out of its peer
// (XDP_TX, what halb does in DR mode) unless this end has an XDP program
// of its own; a physical NIC needs nothing of the kind. The returned link
// holds the program for as long as the demo runs.
func passXDP(lan *host, port netlink.Link) (link.Link, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "halbdemo_pass",
		Type:         ebpf.XDP,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}, // XDP_PASS
	})
	if err != nil {
		return nil, fmt.Errorf("load an XDP_PASS program: %w", err)
	}
	defer prog.Close() // the link keeps it
	var l link.Link
	// The interface index means something in the lan namespace only.
	err = lan.do(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: port.Attrs().Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach XDP_PASS to port %s: %w", port.Attrs().Name, err)
	}
	return l, nil
}

// txChecksumOff turns off TX checksum offload on h's eth0, as `ethtool -K
// eth0 tx off` does. With it on, a veth passes TCP segments on with their
// checksum left for hardware to finish; native XDP forwards those bytes
// as they are and the backend drops them. Traffic from a real NIC has
// finished checksums.
func txChecksumOff(h *host) error {
	return h.do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		value := struct{ cmd, data uint32 }{cmd: unix.ETHTOOL_STXCSUM} // data 0: off
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [24]byte // the rest of struct ifreq
		}
		copy(ifr.name[:], "eth0")
		ifr.data = unsafe.Pointer(&value)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
			return fmt.Errorf("turn off tx checksum offload on eth0 of %s: %w", h.name, errno)
		}
		return nil
	})
}

// macOf is the MAC of h's eth0.
func macOf(h *host) (net.HardwareAddr, error) {
	eth0, err := h.eth0()
	if err != nil {
		return nil, err
	}
	return eth0.Attrs().HardwareAddr, nil
}

// neighbour is the MAC h's kernel has for addr on eth0, or nil.
func neighbour(h *host, addr netip.Addr) net.HardwareAddr {
	eth0, err := h.eth0()
	if err != nil {
		return nil
	}
	list, err := h.nl.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	for _, n := range list {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr &&
			n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0 {
			return n.HardwareAddr
		}
	}
	return nil
}
