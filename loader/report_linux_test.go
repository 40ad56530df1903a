package loader

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/service"
)

// What the daemon reads of the eBPF data path is Status less the ids,
// MACs and next hops, and the drops by reason under their names.
func TestDatapathReportAndCounters(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	if err := dp.Apply(context.Background(), []service.Service{svc(web, backend(be11, 1), backend(be12, 0))}); err != nil {
		t.Fatal(err)
	}
	waitLive(t, dp, web, 1)
	status, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	reports, err := dp.Report()
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) != 1 || len(status) != 1 {
		t.Fatalf("Report %+v, Status %+v: want the one service", reports, status)
	}
	want := status[0].Report
	for _, b := range status[0].Backends {
		want.Backends = append(want.Backends, b.BackendReport)
	}
	if got := reports[0]; !reflect.DeepEqual(got, want) || got.Datapath != "xdp" || got.Name != "web" || len(got.Backends) != 2 {
		t.Errorf("Report: %+v\nwant %+v", got, want)
	}
	for _, b := range reports[0].Backends {
		if b.Conns != nil {
			t.Errorf("backend %s has open connections %+v: the eBPF data path counts none", b.Addr, b.Conns)
		}
		if b.Replies != nil {
			t.Errorf("forward: dr backend %s reports replies %+v: only NAT's are translated back", b.Addr, b.Replies)
		}
	}

	drops, err := dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	counters, err := dp.Counters()
	if err != nil || len(counters) != 1 {
		t.Fatalf("Counters: %+v, %v; want the drops", counters, err)
	}
	c := counters[0]
	named := map[string]uint64{}
	for r, n := range drops {
		named[r.String()] = n
	}
	if want := DropsCounter(nil); c.Name != want.Name || c.Label != want.Label || c.Help != want.Help || c.Help == "" ||
		!maps.Equal(c.Values, named) || len(c.Values) != int(halbDropReasonDROP_REASONS) {
		t.Errorf("Counters: %+v, want every drop reason by name: %v", c, named)
	}
	if dp.Resync() != 0 {
		t.Errorf("Resync %s: the data path follows the kernel's events and makes its own safety pass, the daemon's periodic apply is for IPVS", dp.Resync())
	}
}

// The eBPF data path speaks the errors every data path does: a service it
// cannot serve is service.ErrUnsupported with what it lacks, and every
// call after Close is service.ErrClosed.
func TestDatapathErrors(t *testing.T) {
	b := newDPBench(t)
	dp := b.start(t, b.cfg, config.ModeXDP)
	lc := svc(web6, backend(be6, 1))
	lc.Scheduler = "lc"
	err := dp.Apply(context.Background(), []service.Service{lc})
	var unsupported *service.UnsupportedError
	if !errors.Is(err, service.ErrUnsupported) || !errors.As(err, &unsupported) {
		t.Fatalf("Apply with scheduler lc: %v, want ErrUnsupported", err)
	}
	if unsupported.Feature != "scheduler lc" || unsupported.Datapath != "the eBPF data path" {
		t.Errorf("detail %+v, want scheduler lc on the eBPF data path", unsupported)
	}
	if !strings.Contains(err.Error(), "scheduler lc: not supported by the eBPF data path; use mh, rr, wrr or sh (all Maglev here), or datapath.mode: ipvs") {
		t.Errorf("Apply: %v, want the scheduler named too, and the ones to use", err)
	}

	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	_, reportErr := dp.Report()
	_, statusErr := dp.Status()
	_, countersErr := dp.Counters()
	_, dropsErr := dp.Drops()
	for what, err := range map[string]error{
		"Apply": dp.Apply(context.Background(), nil), "Report": reportErr, "Status": statusErr,
		"Counters": countersErr, "Drops": dropsErr,
	} {
		if !errors.Is(err, service.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", what, err)
		}
	}
}

// The schedulers to use instead read as a sentence, from the one list.
func TestOrList(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
	}{
		{nil, ""}, {[]string{"mh"}, "mh"}, {[]string{"mh", "rr"}, "mh or rr"},
		{[]string{"mh", "rr", "wrr", "sh"}, "mh, rr, wrr or sh"},
	} {
		if got := orList(c.in); got != c.want {
			t.Errorf("orList(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Every enum the loader names reads as a value it does not know instead
// of panicking: a newer halb's program may count a drop reason this one
// lacks.
func TestLoaderEnumStringOutOfRange(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{DropVIPSource.String(), "vip-source"},
		{DropReason(halbDropReasonDROP_REASONS).String(), fmt.Sprintf("drop(%d)", halbDropReasonDROP_REASONS)},
		{EventOtherHost.String(), "other-host"},
		{Event(halbEventEVENTS).String(), fmt.Sprintf("event(%d)", halbEventEVENTS)},
		{ForwardTUN.String(), "tun"}, {Forward(200).String(), "forward(200)"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}
