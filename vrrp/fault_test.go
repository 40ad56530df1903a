package vrrp

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// The sockets an instance opens over the fake link (fault.go: openConn,
// setupVMAC), without root: which ones read, which one sends, and when
// they are replaced.

// connOn is the open socket on the interface with index ifindex, or nil.
func connOn(f *fakeLink, ifindex int) *fakeConn {
	for _, c := range f.openConns() {
		if c.index == ifindex {
			return c
		}
	}
	return nil
}

// Which sockets read and which one sends the adverts: the base
// interface's reads unless the VMAC does (use_vmac in multicast mode, so
// that no advert is read twice); unicast adverts arrive at the base
// interface, so there it reads even with use_vmac. The adverts leave from
// the VMAC unless vmac_xmit_base; a VMAC socket that would neither read
// nor send is not opened.
func TestAdvertSockets(t *testing.T) {
	for _, c := range []struct {
		name              string
		vmac, unicast     bool
		xmitBase          bool
		baseReads         bool
		vmacSocket        bool // a socket on the VMAC
		vmacReads, onVMAC bool // it reads; the adverts leave from it
	}{
		{"multicast", false, false, false, true, false, false, false},
		{"unicast", false, true, false, true, false, false, false},
		{"multicast, use_vmac", true, false, false, false, true, true, true},
		{"multicast, use_vmac, vmac_xmit_base", true, false, true, false, true, true, false},
		{"unicast, use_vmac", true, true, false, true, true, false, true},
		{"unicast, use_vmac, vmac_xmit_base", true, true, true, true, false, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.UseVMAC, cfg.VMACXmitBase = c.vmac, c.xmitBase
			if c.unicast {
				cfg.UnicastSrc, cfg.UnicastPeers = ownA, []netip.Addr{peerA}
			}
			f := upLAN(cfg)
			d := newDriven(t, cfg, f)
			now := d.toMaster(t)
			lan0, _ := f.lookup("lan0")
			base := connOn(f, lan0.Index)
			if base == nil || base.receiving != c.baseReads {
				t.Fatalf("socket on lan0 (%v) reads: %v; want one that reads: %v", base != nil, base != nil && base.receiving, c.baseReads)
			}
			if c.unicast && base.bind != ownA {
				t.Errorf("socket on lan0 bound to %s, want unicast_src %s", base.bind, ownA)
			}
			var vm *fakeConn
			vmIndex := 0
			if c.vmac {
				ifc, err := f.lookup(vmacName(cfg.VRID, false, lan0.Index))
				if err != nil {
					t.Fatal(err)
				}
				vmIndex = ifc.Index
				vm = connOn(f, vmIndex)
			}
			if (vm != nil) != c.vmacSocket || vm != nil && vm.receiving != c.vmacReads {
				t.Fatalf("socket on the VMAC: %v, reading: %v; want %v, reading: %v", vm != nil, vm != nil && vm.receiving, c.vmacSocket, c.vmacReads)
			}
			want := lan0.Index
			if c.onVMAC {
				want = vmIndex
			}
			d.tick(now.Add(cfg.AdvertInterval))
			sent := f.sentAdverts()
			if len(sent) < 2 || slices.ContainsFunc(sent, func(a sentAdvert) bool { return a.ifindex != want }) {
				t.Errorf("adverts %+v, want them all sent on ifindex %d", sent, want)
			}

			// The reading socket hands its adverts to the instance.
			reader := base
			if c.vmacReads {
				reader = vm
			}
			reader.in <- fakeRead{p: advertFrom(t, cfg, peerA, 200)}
			waitFor(t, "advert handed on by the reading socket", func() *int {
				if n := len(d.adverts); n > 0 {
					return &n
				}
				return nil
			})
		})
	}
}

// The instance's own adverts, looped back (by a unicast peer list that
// names this node, or a bridge), are dropped before any check: not
// counted, not given to the machine (which would take them for a second
// Master and announce the VIPs again).
func TestOwnAdvertsDropped(t *testing.T) {
	cfg := baseConfig()
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	frames, adverts := len(f.sentFrames()), len(f.sentAdverts())
	d.receive(now, advertFrom(t, cfg, ownA, 100))
	s := d.Status()
	if s.Received != 0 || len(s.Drops) != 0 {
		t.Errorf("our own advert counted: received %d, drops %v", s.Received, s.Drops)
	}
	if len(f.sentFrames()) != frames || len(f.sentAdverts()) != adverts || d.m.State() != Master {
		t.Errorf("our own advert acted on: %d frames and %d adverts more, state %s",
			len(f.sentFrames())-frames, len(f.sentAdverts())-adverts, d.m.State())
	}
	// A peer's advert is taken: the drop is for our own source only.
	d.receive(now, advertFrom(t, cfg, peerA, 50))
	if d.Status().Received != 1 {
		t.Errorf("a peer's advert not counted: received %d", d.Status().Received)
	}
}

// The interface deleted and made again between two looks (the event in
// between missed or merged): its new index gets a new socket at once,
// with no FAULT for a missing interface in between; the old one closes.
func TestNewIndexNewSocket(t *testing.T) {
	cfg := baseConfig()
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	old := f.openConns()
	f.delIface("lan0")
	lan0 := f.addIface("lan0", true, "192.0.2.1/24")
	d.evaluate(now)
	if len(old) != 1 || !old[0].isClosed() {
		t.Errorf("the old index's socket is still open (%d sockets before)", len(old))
	}
	var open []int
	for _, c := range f.openConns() {
		open = append(open, c.index)
	}
	if !slices.Equal(open, []int{lan0.Index}) {
		t.Errorf("open sockets on ifindex %v, want one on the new index %d", open, lan0.Index)
	}
	if d.Status().Transitions != 2 || d.m.State() != Master {
		t.Errorf("state %s after %d transitions, want MASTER after two (INIT, BACKUP, MASTER)", d.m.State(), d.Status().Transitions)
	}
	d.tick(now.Add(cfg.AdvertInterval))
	if a := f.sentAdverts(); a[len(a)-1].ifindex != lan0.Index {
		t.Errorf("advert sent on ifindex %d, want the new index %d", a[len(a)-1].ifindex, lan0.Index)
	}
}

// The VMAC deleted by someone and made again (a new index): its socket is
// replaced, and the adverts leave from the new one.
func TestVMACSocketReplaced(t *testing.T) {
	cfg := baseConfig()
	cfg.UseVMAC = true
	f := upLAN(cfg)
	d := newDriven(t, cfg, f)
	now := d.toMaster(t)
	lan0, _ := f.lookup("lan0")
	name := vmacName(cfg.VRID, false, lan0.Index)
	first, _ := f.lookup(name)
	oldConn := connOn(f, first.Index)
	if oldConn == nil {
		t.Fatal("no socket on the VMAC")
	}
	f.delIface(name)
	d.evaluate(now)
	vm, err := f.lookup(name)
	if err != nil || vm.Index == first.Index {
		t.Fatalf("VMAC %+v (%v) after its deletion, want one with a new index", vm, err)
	}
	if !oldConn.isClosed() {
		t.Error("the old VMAC's socket is still open")
	}
	c := connOn(f, vm.Index)
	if c == nil || !c.receiving {
		t.Fatalf("socket on the new VMAC: %v, reading: %v; want one that reads", c != nil, c != nil && c.receiving)
	}
	d.tick(now.Add(time.Hour))
	if a := f.sentAdverts(); a[len(a)-1].ifindex != vm.Index {
		t.Errorf("advert sent on ifindex %d, want the new VMAC's %d", a[len(a)-1].ifindex, vm.Index)
	}
}
