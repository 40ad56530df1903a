package vrrp

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// track_interface with a weight against keepalived, both ways round: the
// master's tracked uplink going down lowers it by 60 below the other
// node, which takes over; the uplink coming back lets it pre-empt again.
// v2 with PASS authentication, so auth interop is covered here too.
func TestKeepalivedTrackInterface(t *testing.T) {
	c := interop{variant: variant{name: "v2-auth-track", version: 2, interval: time.Second}, auth: interopAuthPass}
	for _, halbTracks := range []bool{true, false} {
		name := map[bool]string{true: "halb-tracks", false: "keepalived-tracks"}[halbTracks]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := newLAN(t, false)
			// The tracking node, index 0 (halb) or 1 (keepalived), gets an
			// uplink of its own: a veth pair with both ends in its namespace.
			ti := 1
			if halbTracks {
				ti = 0
			}
			setLink := addUplink(t, l.h[ti])
			halbCfg := c.halbConfig(l, 0, 100)
			kaCfg := c.keepalivedConfig(l, 1, 100)
			if halbTracks {
				halbCfg = c.halbConfig(l, 0, 150) + "      track_interfaces: [{name: uplink0, weight: -60}]\n"
			} else {
				kaCfg = strings.Replace(c.keepalivedConfig(l, 1, 150), "\tvirtual_ipaddress {",
					"\ttrack_interface {\n\t\tuplink0 weight -60\n\t}\n\tvirtual_ipaddress {", 1)
			}
			hn := newNode(t, "halb", l.ns[0], halbCfg)
			k := newKeepalived(t, "keepalived", l.ns[1], kaCfg)
			limit := 5*c.masterDown(100) + 10*time.Second
			vip := c.vip()
			defer func() {
				if d := linesWith(hn.log.String(), "advert dropped"); d != "" {
					t.Errorf("halb dropped keepalived's adverts:\n%s", d)
				}
				if d := linesWith(k.log.String(), keepalivedRejects...); d != "" {
					t.Errorf("keepalived rejected halb's adverts:\n%s", d)
				}
			}()

			tracker, other := l.h[ti], l.h[1-ti]
			if halbTracks {
				hn.start(t)
				waitAddr(t, tracker, vip, true, limit)
				k.start(t)
			} else {
				k.start(t)
				waitAddr(t, tracker, vip, true, limit)
				hn.start(t)
			}
			time.Sleep(c.masterDown(100) + c.interval)
			if !hasAddr(tracker, vip) || hasAddr(other, vip) {
				t.Fatal("the tracking node (150) is not the only master")
			}

			setLink(false)
			took := waitAddr(t, other, vip, true, limit)
			waitAddr(t, tracker, vip, false, limit)
			t.Logf("uplink down (150 -> 90): the other node took over after %v", took.Round(time.Millisecond))
			setLink(true)
			took = waitAddr(t, tracker, vip, true, limit)
			waitAddr(t, other, vip, false, limit)
			t.Logf("uplink up: the tracking node pre-empted after %v", took.Round(time.Millisecond))
			hn.stop(syscall.SIGTERM)
		})
	}
}
