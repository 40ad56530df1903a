package service

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"
)

type fakeDatapath struct {
	name     string
	resync   time.Duration
	hooks    []string
	counters []Counter
	applied  [][]string
	closed   bool
	cleaned  bool
}

func (f *fakeDatapath) Name() string                 { return f.name }
func (f *fakeDatapath) Close() error                 { f.closed = true; return nil }
func (f *fakeDatapath) Cleanup() error               { f.cleaned = true; return f.Close() }
func (f *fakeDatapath) Resync() time.Duration        { return f.resync }
func (f *fakeDatapath) Hooks() []string              { return f.hooks }
func (f *fakeDatapath) Counters() ([]Counter, error) { return f.counters, nil }
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
	if got := bpf.applied[1]; !slices.Equal(got, []string{"dr", "nat", "tun"}) {
		t.Errorf("eBPF got %v, want every forward kind", got)
	}
	if got := ipvs.applied[0]; !slices.Equal(got, []string{"lc"}) {
		t.Errorf("IPVS got %v, want the IPVS-only scheduler", got)
	}
	// lc leaves the config: IPVS is told, so it removes the service.
	if err := s.Apply(ctx, []Service{dr}); err != nil {
		t.Fatal(err)
	}
	if got := ipvs.applied[1]; len(got) != 0 || opened != 1 {
		t.Errorf("IPVS got %v after the IPVS-only services left (opened %d)", got, opened)
	}
	if err := s.Apply(ctx, []Service{dr, lc}); err != nil {
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
	if want := []string{"xdp:dr", "ipvs:lc"}; !slices.Equal(got, want) {
		t.Errorf("Report: %v, want %v", got, want)
	}
	if err := s.Close(); err != nil || !bpf.closed || !ipvs.closed {
		t.Errorf("close: %v %v %v", err, bpf.closed, ipvs.closed)
	}
}

// The split data path merges what its halves report, so that the daemon
// shows one data path: hooks and counters of both, a counter family both
// keep summed, the shorter resync, and Cleanup of both.
func TestSplitMerges(t *testing.T) {
	drops := func(values map[string]uint64) []Counter {
		return []Counter{{Name: "drops", Help: "dropped", Label: "reason", Values: values}}
	}
	bpf := &fakeDatapath{name: "xdp", resync: 30 * time.Second, hooks: []string{"eth0: xdp native"},
		counters: drops(map[string]uint64{"no-backend": 2, "encap": 1})}
	ipvs := &fakeDatapath{name: "ipvs", resync: 10 * time.Second,
		counters: append(drops(map[string]uint64{"no-backend": 3}), Counter{Name: "other", Label: "x", Values: map[string]uint64{"y": 1}})}
	s := &Split{First: bpf, OpenSecond: func(context.Context) (Datapath, error) { return ipvs, nil }}

	if got := s.Resync(); got != 30*time.Second {
		t.Errorf("Resync before the second half opened: %s, want the first's", got)
	}
	if err := s.Apply(context.Background(), []Service{{Name: "wlc", Forward: NAT, Scheduler: "wlc"}}); err != nil {
		t.Fatal(err)
	}
	if got := s.Resync(); got != 10*time.Second {
		t.Errorf("Resync: %s, want the shorter one", got)
	}
	if got := s.Hooks(); !slices.Equal(got, []string{"eth0: xdp native"}) {
		t.Errorf("Hooks: %v", got)
	}
	got, err := s.Counters()
	if err != nil || len(got) != 2 || got[0].Name != "drops" || got[1].Name != "other" {
		t.Fatalf("Counters: %+v, %v", got, err)
	}
	if want := map[string]uint64{"no-backend": 5, "encap": 1}; !maps.Equal(got[0].Values, want) {
		t.Errorf("drops: %v, want %v", got[0].Values, want)
	}
	if bpf.counters[0].Values["no-backend"] != 2 {
		t.Error("merging changed a half's counters")
	}
	if err := s.Cleanup(); err != nil || !bpf.cleaned || !ipvs.cleaned {
		t.Errorf("Cleanup: %v, halves cleaned %v %v", err, bpf.cleaned, ipvs.cleaned)
	}
}

// An opener that fails may hand back a non-nil Datapath holding a nil
// pointer (ipvs.Open's *Datapath through the interface). Split keeps no
// such half: Apply returns the error, every other method works on the
// first half alone, and the next Apply tries the open again.
func TestSplitSecondFailsToOpen(t *testing.T) {
	bpf := &fakeDatapath{name: "xdp"}
	noIPVS := errors.New("ip_vs could not be loaded")
	opened := 0
	s := &Split{First: bpf, OpenSecond: func(context.Context) (Datapath, error) {
		opened++
		var none *fakeDatapath
		return none, noIPVS
	}}
	lc := Service{Name: "lc", Forward: NAT, Scheduler: "lc"}
	dr := Service{Name: "dr", Forward: DR, Scheduler: "mh"}
	ctx := context.Background()

	for i := range 2 {
		err := s.Apply(ctx, []Service{dr, lc})
		if !errors.Is(err, noIPVS) {
			t.Fatalf("Apply %d: %v, want the open's error", i, err)
		}
	}
	if opened != 2 {
		t.Errorf("opened %d times in 2 applies, want a retry on each", opened)
	}
	if got := bpf.applied; len(got) != 2 || !slices.Equal(got[1], []string{"dr"}) {
		t.Errorf("eBPF got %v, want its service on each apply", got)
	}
	if s.Name() != "xdp" {
		t.Errorf("Name: %s", s.Name())
	}
	if rep, err := s.Report(); err != nil || len(rep) != 1 {
		t.Errorf("Report: %v, %v", rep, err)
	}
	if _, err := s.Counters(); err != nil {
		t.Errorf("Counters: %v", err)
	}
	if h, r := s.Hooks(), s.Resync(); len(h) != 0 || r != 0 {
		t.Errorf("Hooks %v, Resync %s: want the first half's", h, r)
	}
	if err := s.Cleanup(); err != nil || !bpf.cleaned {
		t.Errorf("Cleanup: %v, first cleaned %v", err, bpf.cleaned)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// A Split with no first half (a caller's mistake) reports it instead of
// panicking.
func TestSplitNilFirst(t *testing.T) {
	s := &Split{OpenSecond: func(context.Context) (Datapath, error) { return &fakeDatapath{name: "ipvs"}, nil }}
	err := s.Apply(context.Background(), []Service{{Name: "dr", Forward: DR, Scheduler: "mh"}})
	if err == nil {
		t.Error("Apply with no first half: no error")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// After Close (or Cleanup) Apply fails with ErrClosed and opens no new
// second half, which nobody would close.
func TestSplitApplyAfterClose(t *testing.T) {
	for _, end := range []string{"Close", "Cleanup"} {
		t.Run(end, func(t *testing.T) {
			bpf := &fakeDatapath{name: "xdp"}
			opened := 0
			s := &Split{First: bpf, OpenSecond: func(context.Context) (Datapath, error) {
				opened++
				return &fakeDatapath{name: "ipvs"}, nil
			}}
			stop := map[string]func() error{"Close": s.Close, "Cleanup": s.Cleanup}[end]
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			err := s.Apply(context.Background(), []Service{{Name: "lc", Forward: NAT, Scheduler: "lc"}})
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Apply after %s: %v, want ErrClosed", end, err)
			}
			if opened != 0 || len(bpf.applied) != 0 {
				t.Errorf("Apply after %s opened %d second halves, applied the first %d times", end, opened, len(bpf.applied))
			}
		})
	}
}
