package vrrp

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// track_files and track_processes against keepalived: the halb binary at
// priority 150 tracks a file (weight 20) and a process (a copy of sleep
// under a name of its own, weight -60); a keepalived peer runs at 100.
// The file holding -3 (150 - 60) and the process killed each hand the VIP
// to keepalived; 0 in the file and the process started again let halb
// pre-empt it back.
func TestKeepalivedTrackFileAndProcess(t *testing.T) {
	c := interop{variant: variant{name: "v3-host-track", version: 3, interval: time.Second}}
	l := newLAN(t, false)
	dir := t.TempDir()
	file := filepath.Join(dir, "weight")
	name := uniqueName(t, 14)
	s := newSleeper(t, name)
	proc := s.start("600")
	halbCfg := c.halbConfig(l, 0, 150) +
		"      track_files: [{path: " + file + ", weight: 20}]\n" +
		"      track_processes: [{name: " + name + ", weight: -60}]\n"
	hn := newNode(t, "halb", l.ns[0], halbCfg)
	k := newKeepalived(t, "keepalived", l.ns[1], c.keepalivedConfig(l, 1, 100))
	limit := 5*c.masterDown(100) + 10*time.Second
	vip := c.vip()
	halb, ka := l.h[0], l.h[1]
	hn.start(t)
	waitAddr(t, halb, vip, true, limit)
	k.start(t)
	time.Sleep(c.masterDown(100) + c.interval)
	if !hasAddr(halb, vip) || hasAddr(ka, vip) {
		t.Fatal("halb (150) is not the only master")
	}
	handOver := func(what string, to, from *netlink.Handle) {
		t.Helper()
		took := waitAddr(t, to, vip, true, limit)
		waitAddr(t, from, vip, false, limit)
		t.Logf("%s: the VIP moved after %v", what, took.Round(time.Millisecond))
	}
	putFile(t, file, "-3\n")
	handOver("file -3 (150 - 60 = 90)", ka, halb)
	putFile(t, file, "0\n")
	handOver("file 0 (150)", halb, ka)
	stopProcess(proc)
	handOver("process killed (150 - 60 = 90)", ka, halb)
	s.start("600")
	handOver("process started again (150)", halb, ka)
	hn.stop(syscall.SIGTERM)
}
