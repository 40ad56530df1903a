package health

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// udpControl asks for ICMP errors on the check's socket (IP_RECVERR,
// IPV6_RECVERR), as keepalived's UDP_CHECK does. Without it Linux reports
// only hard errors to a connected UDP socket: port unreachable, but not
// host or network unreachable (net/ipv4/udp.c __udp4_lib_err).
func udpControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "udp6" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_RECVERR: %w", serr)
	}
	return nil
}
