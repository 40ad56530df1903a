package vrrp

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/halb-lb/halb/config"
)

// Group is a sync group: its instances change state together, so that,
// say, the outside and inside addresses of a router are always on the same
// node (keepalived's vrrp_sync_group). One member going to Fault holds all
// the others out of Master; one becoming Master takes the others along;
// one stepping down to Backup takes the others down too.
type Group struct {
	name string
	// scripts are the group's notify scripts (notify_master, ...), run
	// when the group as a whole changes state (groupState); log and run
	// are what runs them.
	scripts config.SyncGroup
	log     *slog.Logger
	run     runProgramFunc

	mu      sync.Mutex
	members []*member
	held    bool
	state   State     // the group's state as last notified; Initialize before the first
	notify  *notifier // while a member runs (enter, exit) and the group has scripts
	running int       // members whose Run is under way
}

type member struct {
	name  string
	state State
	cmds  chan<- groupCmd
}

// groupCmd is what the group asks of one member's machine.
type groupCmd struct {
	hold, release bool
	follow        State
	why           string
}

// NewGroup makes an empty sync group with no notify scripts.
func NewGroup(name string) *Group { return &Group{name: name} }

// newSyncGroup makes an empty sync group that runs cfg's notify scripts
// with run.
func newSyncGroup(cfg config.SyncGroup, log *slog.Logger, run runProgramFunc) *Group {
	return &Group{name: cfg.Name, scripts: cfg, log: log.With("sync_group", cfg.Name), run: run}
}

// join adds a member; cmds is drained by the member's Run loop.
func (g *Group) join(name string, cmds chan<- groupCmd) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.members = append(g.members, &member{name: name, state: Initialize, cmds: cmds})
}

// report tells the group that member name went from one state to
// another. It never blocks: commands to the other members are queued.
func (g *Group) report(name string, from, to State) {
	g.mu.Lock()
	defer g.mu.Unlock()
	anyFault := false
	for _, m := range g.members {
		if m.name == name {
			m.state = to
		}
		if m.state == Fault {
			anyFault = true
		}
	}
	for _, m := range g.members {
		var cmd groupCmd
		switch {
		case m.name == name:
			if !g.held || anyFault {
				continue
			}
			// The reporter was held too, while another member was in
			// Fault.
			cmd = groupCmd{release: true}
		case anyFault:
			cmd = groupCmd{hold: true, why: fmt.Sprintf("sync group %s: a member is in FAULT", g.name)}
		case g.held:
			cmd = groupCmd{release: true}
			if to == Master {
				cmd.follow, cmd.why = Master, fmt.Sprintf("sync group %s: %s became MASTER", g.name, name)
			}
		case to == Master && m.state == Backup:
			cmd = groupCmd{follow: Master, why: fmt.Sprintf("sync group %s: %s became MASTER", g.name, name)}
		case to == Backup && from == Master && m.state == Master:
			cmd = groupCmd{follow: Backup, why: fmt.Sprintf("sync group %s: %s became BACKUP", g.name, name)}
		default:
			continue
		}
		select {
		case m.cmds <- cmd:
		default:
			// A member that cannot keep up gets the next report's command.
		}
	}
	g.held = anyFault
	g.notifyState()
}

// groupState is the state of the group as a whole, keepalived's: FAULT
// when a member is, MASTER or BACKUP when all members are, INIT (STOP)
// when all have stopped; ok is false while the members are between two
// states (some MASTER, some BACKUP).
func (g *Group) groupState() (s State, ok bool) {
	count := map[State]int{}
	for _, m := range g.members {
		count[m.state]++
	}
	if count[Fault] > 0 {
		return Fault, true
	}
	for _, s := range []State{Master, Backup, Initialize} {
		if count[s] == len(g.members) {
			return s, true
		}
	}
	return g.state, false
}

// notifyState calls the group's script for a new group state; the
// members' first INIT, before any state, is none. g.mu is held.
func (g *Group) notifyState() {
	s, ok := g.groupState()
	if !ok || s == g.state {
		return
	}
	g.state = s
	if g.notify != nil {
		g.notify.notify(s, 0)
	}
}

// enter tells the group a member's Run has begun: the first starts the
// group's notifier, on a goroutine that the last member's exit waits for.
func (g *Group) enter() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running++
	if g.running > 1 || len(g.scripts.StateScripts()) == 0 {
		return
	}
	n := newNotifier(config.Instance{Name: g.name, NotifyMaster: g.scripts.NotifyMaster, NotifyBackup: g.scripts.NotifyBackup,
		NotifyFault: g.scripts.NotifyFault, NotifyStop: g.scripts.NotifyStop}, g.log, g.run)
	n.group = true
	g.notify = n
	go n.loop()
}

// exit tells the group a member's Run is ending, after its last
// transition: the last one runs the group's pending call (STOP, when all
// have stopped) and waits for the notifier's end, within the notifier's
// stop bounds.
func (g *Group) exit() {
	g.mu.Lock()
	g.running--
	n := g.notify
	if g.running > 0 || n == nil {
		g.mu.Unlock()
		return
	}
	g.notify = nil
	g.mu.Unlock()
	n.close()
}
