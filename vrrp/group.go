package vrrp

import (
	"fmt"
	"sync"
)

// Group is a sync group: its instances change state together, so that,
// say, the outside and inside addresses of a router are always on the same
// node (keepalived's vrrp_sync_group). One member going to Fault holds all
// the others out of Master; one becoming Master takes the others along;
// one stepping down to Backup takes the others down too.
type Group struct {
	name string

	mu      sync.Mutex
	members []*member
	held    bool
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

// NewGroup makes an empty sync group.
func NewGroup(name string) *Group { return &Group{name: name} }

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
}
