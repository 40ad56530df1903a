package vrrp

import (
	"fmt"
	"net"
	"strconv"
)

// The VMAC's name and MAC are conventions, not system calls: the
// instance names its VMAC in its faults, and the fake link makes one, so
// they live on the pure side; vmac_linux.go makes the macvlan.

// The virtual router MAC of RFC 5798 §7.3: 00-00-5E-00-01-{VRID} for IPv4,
// 00-00-5E-00-02-{VRID} for IPv6.
func virtualMAC(vrid int, v6 bool) net.HardwareAddr {
	if v6 {
		return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x02, byte(vrid)}
	}
	return net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, byte(vrid)}
}

// vmacName names the macvlan of an instance: keepalived's vrrp.<vrid>
// (vrrp6.<vrid> for IPv6) followed by the base interface's index, since
// one VRID may run on several interfaces and each needs a macvlan of its
// own (with the bare vrrp.<vrid> the second instance took the first one's
// name). A name has at most 15 bytes (IFNAMSIZ); an index too long for
// that is written in base 36 after a shorter prefix (vr.<vrid>.<index> or
// vr6.<vrid>.<index>), which no readable name can equal.
func vmacName(vrid int, v6 bool, baseIndex int) string {
	prefix, short := "vrrp", "vr"
	if v6 {
		prefix, short = "vrrp6", "vr6"
	}
	if name := fmt.Sprintf("%s.%d.%d", prefix, vrid, baseIndex); len(name) <= maxIfName {
		return name
	}
	return fmt.Sprintf("%s.%d.%s", short, vrid, strconv.FormatInt(int64(baseIndex), 36))
}

// maxIfName is the longest interface name Linux takes (IFNAMSIZ less
// the terminating NUL).
const maxIfName = 15
