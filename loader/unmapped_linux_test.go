package loader

import (
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/service"
)

// TestMaglevTablesUnmapped takes the way of a kernel without mappable
// arrays (before Linux 5.5; forced here through mmapable): the Maglev
// tables are plain arrays, written by a batch update, read back as
// written, and the program schedules new flows by them as it does by
// mapped ones.
func TestMaglevTablesUnmapped(t *testing.T) {
	netnstest.Require(t)
	was := mmapable
	mmapable = func() error { return ebpf.ErrNotSupported }
	t.Cleanup(func() { mmapable = was })

	tb := newTestbed(t, Options{MaglevTableSize: 251}).on(halbProgHalbXdpLb)
	if tb.lb.maglev.Flags&unix.BPF_F_MMAPABLE != 0 {
		t.Fatal("the Maglev table template is mappable on the forced old kernel's way")
	}
	web4 := service.Key{VIP: vip4, Port: 80, Proto: service.TCP}
	tb.backend(t, 1, "198.51.100.11", tb.halb0)
	tb.backend(t, 5, "198.51.100.15", tb.halb0)
	tb.backend(t, 6, "198.51.100.16", tb.halb0)
	tb.service(t, web4, Service{ID: 1, Forward: ForwardDR})
	table := tb.table(t, 1, 1, 5, 6)

	got, err := tb.lb.maglevTable(1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, table) {
		t.Fatalf("table read back differs from the one written:\n got %v\nwant %v", got, table)
	}
	var id uint32
	if err := tb.lb.objs.HalbMaglev.Lookup(uint32(1), &id); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Flags()&unix.BPF_F_MMAPABLE != 0 {
		t.Errorf("the installed table is mappable (flags %#x)", m.Flags())
	}

	for i := range uint16(12) {
		p := packet{src: ap(client4, 50000+i), dst: ap(vip4, 80), ack: true}
		want := table[flowHash(p.src, p.dst, uint8(layers.IPProtocolTCP), false)%uint32(len(table))]
		tb.expectForward(t, p, xdpTX, want)
	}
}
