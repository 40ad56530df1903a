package service

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

type fakeDatapath struct {
	name    string
	applied [][]string
	closed  bool
}

func (f *fakeDatapath) Name() string { return f.name }
func (f *fakeDatapath) Close() error { f.closed = true; return nil }
func (f *fakeDatapath) Apply(_ context.Context, s []Service) error {
	var names []string
	for _, x := range s {
		names = append(names, x.Name)
	}
	f.applied = append(f.applied, names)
	return nil
}

// Report reports the services of the last Apply, each with one packet.
func (f *fakeDatapath) Report() ([]Report, error) {
	var out []Report
	for _, name := range f.applied[len(f.applied)-1] {
		out = append(out, Report{Name: name, Datapath: f.name, Stats: Stats{Packets: 1}})
	}
	return out, nil
}

func TestSplit(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.1")
	dr := Service{Name: "dr", Key: Key{VIP: vip, Port: 80, Proto: TCP}, Scheduler: "mh", Forward: DR}
	tun := Service{Name: "tun", Key: Key{VIP: vip, Port: 81, Proto: TCP}, Scheduler: "wrr", Forward: TUN}
	nat := Service{Name: "nat", Key: Key{VIP: vip, Port: 82, Proto: TCP}, Scheduler: "rr", Forward: NAT}
	lc := Service{Name: "lc", Key: Key{VIP: vip, Port: 83, Proto: TCP}, Scheduler: "lc", Forward: DR}

	bpf := &fakeDatapath{name: "xdp"}
	ipvs := &fakeDatapath{name: "ipvs"}
	opened := 0
	s := &Split{First: bpf, OpenSecond: func(context.Context) (Datapath, error) { opened++; return ipvs, nil }}
	ctx := context.Background()

	if err := s.Apply(ctx, []Service{dr, tun}); err != nil {
		t.Fatal(err)
	}
	if opened != 0 || s.Name() != "xdp" {
		t.Fatalf("IPVS opened with no service that needs it (opened %d, name %s)", opened, s.Name())
	}
	if err := s.Apply(ctx, []Service{dr, nat, tun, lc}); err != nil {
		t.Fatal(err)
	}
	if opened != 1 || s.Name() != "xdp+ipvs" {
		t.Fatalf("opened %d, name %s", opened, s.Name())
	}
	if got := bpf.applied[1]; !slices.Equal(got, []string{"dr", "tun"}) {
		t.Errorf("eBPF got %v", got)
	}
	if got := ipvs.applied[0]; !slices.Equal(got, []string{"nat", "lc"}) {
		t.Errorf("IPVS got %v, want the NAT service and the IPVS-only scheduler", got)
	}
	// NAT leaves the config: IPVS is told, so it removes the service.
	if err := s.Apply(ctx, []Service{dr}); err != nil {
		t.Fatal(err)
	}
	if got := ipvs.applied[1]; len(got) != 0 || opened != 1 {
		t.Errorf("IPVS got %v after the NAT services left (opened %d)", got, opened)
	}
	if err := s.Apply(ctx, []Service{dr, nat}); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Report()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rep {
		got = append(got, r.Datapath+":"+r.Name)
	}
	if want := []string{"xdp:dr", "ipvs:nat"}; !slices.Equal(got, want) {
		t.Errorf("Report: %v, want %v", got, want)
	}
	if err := s.Close(); err != nil || !bpf.closed || !ipvs.closed {
		t.Errorf("close: %v %v %v", err, bpf.closed, ipvs.closed)
	}
}
