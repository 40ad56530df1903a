package vrrp

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// An uplink tracked with weight -60 goes down: the pair swaps Master; it
// comes back: with preempt the pair swaps back. The notify scripts record
// every call, in order, with keepalived's arguments.
func TestTrackInterfaceAndNotify(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	h := l.h[0]
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplink1"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"uplink0", "uplink1"} {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	script := func(node string) (path, log string) {
		path = filepath.Join(dir, "notify-"+node+".sh")
		log = filepath.Join(dir, "calls-"+node)
		body := fmt.Sprintf("#!/bin/sh\necho \"$1 $2 $3 $4 $HALB_STATE $HALB_VIRTUAL_IPS\" >> %s\n", log)
		if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return path, log
	}
	notifyA, callsA := script("a")
	notifyB, callsB := script("b")
	cfgA := v.config(l, 0, 150, true) + "      notify: " + notifyA + "\n      track_interfaces: [{name: uplink0, weight: -60}]\n"
	cfgB := v.config(l, 1, 100, true) + "      notify: " + notifyB + "\n"
	a := newNode(t, "a", l.ns[0], cfgA)
	b := newNode(t, "b", l.ns[1], cfgB)
	limit := 10 * time.Second

	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, limit)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	setLink := func(up bool) {
		link, err := h.LinkByName("uplink0")
		if err != nil {
			t.Fatal(err)
		}
		set := h.LinkSetDown
		if up {
			set = h.LinkSetUp
		}
		if err := set(link); err != nil {
			t.Fatal(err)
		}
	}
	setLink(false)
	took := waitAddr(t, l.h[1], v.vip(), true, limit)
	waitAddr(t, l.h[0], v.vip(), false, limit)
	t.Logf("uplink down: b took over after %v", took.Round(time.Millisecond))
	waitLog(t, a, "priority changed by tracking")

	setLink(true)
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	waitAddr(t, l.h[1], v.vip(), false, limit)
	t.Logf("uplink back: a pre-empted after %v", took.Round(time.Millisecond))

	a.stop(syscall.SIGTERM)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	b.stop(syscall.SIGTERM)

	want := map[string][]string{
		callsA: {
			"INSTANCE VI_T BACKUP 150 BACKUP 192.0.2.100/24",
			"INSTANCE VI_T MASTER 150 MASTER 192.0.2.100/24",
			"INSTANCE VI_T BACKUP 90 BACKUP 192.0.2.100/24",
			"INSTANCE VI_T MASTER 150 MASTER 192.0.2.100/24",
			"INSTANCE VI_T STOP 150 STOP 192.0.2.100/24",
		},
		callsB: {
			"INSTANCE VI_T BACKUP 100 BACKUP 192.0.2.100/24",
			"INSTANCE VI_T MASTER 100 MASTER 192.0.2.100/24",
			"INSTANCE VI_T BACKUP 100 BACKUP 192.0.2.100/24",
			"INSTANCE VI_T MASTER 100 MASTER 192.0.2.100/24",
			"INSTANCE VI_T STOP 100 STOP 192.0.2.100/24",
		},
	}
	for file, lines := range want {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(data)); got != strings.Join(lines, "\n") {
			t.Errorf("%s:\n%s\nwant\n%s", filepath.Base(file), got, strings.Join(lines, "\n"))
		}
	}
}
