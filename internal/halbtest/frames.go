package halbtest

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
)

// SendFrame sends frame out of ifname in ns as it is, Ethernet header
// included: an AF_PACKET socket that only sends, for the tests that put
// on a link what no well-behaved stack would (floods, claims, broken
// headers).
func SendFrame(t testing.TB, ns *netnstest.NS, ifname string, frame []byte) {
	t.Helper()
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6})
	})
	if err != nil {
		t.Fatalf("send a frame out of %s: %v", ifname, err)
	}
}
