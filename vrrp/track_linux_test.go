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
	setLink := addUplink(t, l.h[0])
	dir := t.TempDir()
	notifyA, callsA := notifyRecorder(t, dir, "a")
	notifyB, callsB := notifyRecorder(t, dir, "b")
	cfgA := v.config(l, 0, 150, true) + "      notify: " + notifyA + "\n      track_interfaces: [{name: uplink0, weight: -60}]\n"
	cfgB := v.config(l, 1, 100, true) + "      notify: " + notifyB + "\n"
	a := newNode(t, "a", l.ns[0], cfgA)
	b := newNode(t, "b", l.ns[1], cfgB)
	limit := 10 * time.Second

	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, limit)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	waitCalls(t, callsA, 2, limit)
	waitCalls(t, callsB, 1, limit)
	setLink(false)
	took := waitAddr(t, l.h[1], v.vip(), true, limit)
	waitAddr(t, l.h[0], v.vip(), false, limit)
	t.Logf("uplink down: b took over after %v", took.Round(time.Millisecond))
	waitLog(t, a, "priority changed by tracking")

	waitCalls(t, callsA, 3, limit)
	waitCalls(t, callsB, 2, limit)
	setLink(true)
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	waitAddr(t, l.h[1], v.vip(), false, limit)
	t.Logf("uplink back: a pre-empted after %v", took.Round(time.Millisecond))

	waitCalls(t, callsA, 4, limit)
	waitCalls(t, callsB, 3, limit)
	a.stop(syscall.SIGTERM)
	waitAddr(t, l.h[1], v.vip(), true, limit)
	waitCalls(t, callsB, 4, limit)
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
		checkCalls(t, file, lines)
	}
}

// addUplink gives the namespace behind h a veth pair uplink0/uplink1, both
// up, for an instance to track; the returned function sets uplink0 up or
// down.
func addUplink(t *testing.T, h *netlink.Handle) (set func(up bool)) {
	t.Helper()
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
	return func(up bool) {
		t.Helper()
		setLinkUp(t, h, "uplink0", up)
	}
}

// notifyRecorder writes a notify script for node that appends each call
// (its arguments, then HALB_STATE and HALB_VIRTUAL_IPS) to the file log.
func notifyRecorder(t *testing.T, dir, node string) (path, log string) {
	t.Helper()
	path = filepath.Join(dir, "notify-"+node+".sh")
	log = filepath.Join(dir, "calls-"+node)
	body := fmt.Sprintf("#!/bin/sh\necho \"$1 $2 $3 $4 $HALB_STATE $HALB_VIRTUAL_IPS\" >> %s\n", log)
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, log
}

// waitCalls waits until the notifyRecorder's file holds n calls. A call
// not yet started when the next transition comes is dropped for it (a
// notify script hears the latest state, not every one): a test that wants
// every call waits for each before it makes the next transition, as a
// run of the script can take longer than a takeover on a loaded machine.
func waitCalls(t *testing.T, file string, n int, limit time.Duration) {
	t.Helper()
	var data []byte
	if err := eventually(limit, func() error {
		if data, _ = os.ReadFile(file); strings.Count(string(data), "\n") < n {
			return fmt.Errorf("%s holds fewer than %d calls after %v:\n%s", filepath.Base(file), n, limit, data)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// checkCalls compares the calls a notifyRecorder logged with want.
func checkCalls(t *testing.T, file string, want []string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(data)); got != strings.Join(want, "\n") {
		t.Errorf("%s:\n%s\nwant\n%s", filepath.Base(file), got, strings.Join(want, "\n"))
	}
}

// A tracked interface without a weight puts the instance in FAULT while it
// is down: the Master gives its VIP up and the peer takes over; the
// interface coming back takes the instance out of FAULT, and with preempt
// it is Master again.
func TestTrackInterfaceFault(t *testing.T) {
	v := variant{"v3-ipv4", 3, false, false, 100 * time.Millisecond}
	l := newLAN(t, false)
	setLink := addUplink(t, l.h[0])
	notifyA, callsA := notifyRecorder(t, t.TempDir(), "a")
	// A plain name is weight 0: FAULT, as keepalived's track_interface.
	cfgA := v.config(l, 0, 150, true) + "      notify: " + notifyA + "\n      track_interfaces: [uplink0]\n"
	a := newNode(t, "a", l.ns[0], cfgA)
	b := newNode(t, "b", l.ns[1], v.config(l, 1, 100, true))
	limit := 10 * time.Second

	a.start(t)
	waitAddr(t, l.h[0], v.vip(), true, limit)
	b.start(t)
	waitLog(t, b, "to=BACKUP")

	waitCalls(t, callsA, 2, limit)
	setLink(false)
	took := waitAddr(t, l.h[1], v.vip(), true, limit)
	waitAddr(t, l.h[0], v.vip(), false, limit)
	waitLog(t, a, "tracked interface uplink0 down")
	waitLog(t, a, "to=FAULT")
	t.Logf("tracked uplink down: a in FAULT, b took over after %v (b's master down interval %v, skew time %v after a priority-0 advert)",
		took.Round(time.Millisecond), v.masterDown(100), v.masterDown(100)-3*v.interval)
	// In FAULT a neither holds the VIP nor contends for it.
	time.Sleep(3 * v.masterDown(150))
	if hasAddr(l.h[0], v.vip()) || !hasAddr(l.h[1], v.vip()) {
		t.Fatalf("with uplink0 down a holds the VIP = %v, b = %v; want b alone",
			hasAddr(l.h[0], v.vip()), hasAddr(l.h[1], v.vip()))
	}

	setLink(true)
	took = waitAddr(t, l.h[0], v.vip(), true, limit)
	waitAddr(t, l.h[1], v.vip(), false, limit)
	waitLog(t, a, "fault cleared")
	t.Logf("tracked uplink back: a left FAULT and pre-empted after %v", took.Round(time.Millisecond))

	waitCalls(t, callsA, 5, limit)
	a.stop(syscall.SIGTERM)
	checkCalls(t, callsA, []string{
		"INSTANCE VI_T BACKUP 150 BACKUP 192.0.2.100/24",
		"INSTANCE VI_T MASTER 150 MASTER 192.0.2.100/24",
		"INSTANCE VI_T FAULT 150 FAULT 192.0.2.100/24",
		"INSTANCE VI_T BACKUP 150 BACKUP 192.0.2.100/24",
		"INSTANCE VI_T MASTER 150 MASTER 192.0.2.100/24",
		"INSTANCE VI_T STOP 150 STOP 192.0.2.100/24",
	})
}
