package vrrp

import "testing"

// The group's rules, member by member: what each report makes the others
// do.
func TestGroupReports(t *testing.T) {
	g := NewGroup("G")
	chans := map[string]chan groupCmd{}
	for _, n := range []string{"a", "b", "c"} {
		chans[n] = make(chan groupCmd, 16)
		g.join(n, chans[n])
	}
	drain := func() map[string][]groupCmd {
		out := map[string][]groupCmd{}
		for n, c := range chans {
			for len(c) > 0 {
				out[n] = append(out[n], <-c)
			}
		}
		return out
	}
	for _, n := range []string{"a", "b", "c"} {
		g.report(n, Initialize, Backup)
	}
	if got := drain(); len(got) != 0 {
		t.Fatalf("startup to BACKUP made commands: %+v", got)
	}

	g.report("a", Backup, Master)
	got := drain()
	if len(got["b"]) != 1 || got["b"][0].follow != Master || len(got["c"]) != 1 || len(got["a"]) != 0 {
		t.Fatalf("a became MASTER: %+v", got)
	}
	g.report("b", Backup, Master)
	g.report("c", Backup, Master)
	drain()

	g.report("b", Master, Fault)
	got = drain()
	if len(got["a"]) != 1 || !got["a"][0].hold || len(got["c"]) != 1 || !got["c"][0].hold || len(got["b"]) != 0 {
		t.Fatalf("b went to FAULT: %+v", got)
	}
	g.report("a", Master, Backup)
	g.report("c", Master, Backup)
	drain()

	g.report("b", Fault, Backup)
	got = drain()
	for _, n := range []string{"a", "b", "c"} {
		if len(got[n]) != 1 || !got[n][0].release {
			t.Fatalf("b left FAULT: every member, b too, must be released: %+v", got)
		}
	}

	g.report("c", Backup, Master)
	got = drain()
	if len(got["a"]) != 1 || got["a"][0].follow != Master || len(got["b"]) != 1 || got["b"][0].follow != Master {
		t.Fatalf("c became MASTER: %+v", got)
	}
}

// Hold and Follow on the machine.
func TestMachineHoldAndFollow(t *testing.T) {
	m := NewMachine(Params{Version: 3, Priority: 100, AdvertInterval: sec, Preempt: true, Primary: self})
	m.Start(t0)
	m.Hold(t0, "sync group")
	if acts := m.Tick(at(down100)); len(acts) != 0 || m.State() != Backup {
		t.Fatalf("a held backup became master: %v", joinActions(acts))
	}
	if acts := m.Follow(at(4*sec), Master, "sync"); len(acts) != 0 {
		t.Fatalf("a held backup followed to MASTER: %v", joinActions(acts))
	}
	m.Release()
	if got := joinActions(m.Follow(at(5*sec), Master, "sync group G: b became MASTER")); got != "send advert priority 100; take over; BACKUP -> MASTER (sync group G: b became MASTER)" {
		t.Fatalf("follow: %s", got)
	}
	if got := joinActions(m.Hold(at(6*sec), "sync group G: a member is in FAULT")); got != "give up; MASTER -> BACKUP (sync group G: a member is in FAULT)" {
		t.Fatalf("hold of a master: %s", got)
	}
}
