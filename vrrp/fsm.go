package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// State is a virtual router's state: RFC 5798 §6.4's three, plus Fault as
// keepalived has it (the interface or an address it needs is missing, or a
// tracked object failed).
type State int

const (
	Initialize State = iota
	Backup
	Master
	Fault
)

func (s State) String() string {
	switch s {
	case Initialize:
		return "INIT"
	case Backup:
		return "BACKUP"
	case Master:
		return "MASTER"
	case Fault:
		return "FAULT"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// OwnerPriority is the priority of the router that owns the virtual
// addresses (RFC 5798 §5.2.4); PriorityStop announces that the master
// is leaving.
const (
	OwnerPriority = 255
	PriorityStop  = 0
)

// Params are what the state machine needs of an instance's configuration.
type Params struct {
	Version        int // 2 or 3
	Priority       uint8
	AdvertInterval time.Duration
	Preempt        bool
	// PreemptDelay holds back pre-emption of a lower-priority master for
	// this long after it is first seen (keepalived's preempt_delay).
	PreemptDelay time.Duration
	// Primary is this router's own address on the link, which breaks ties
	// between equal priorities (RFC 5798 §6.4.3).
	Primary netip.Addr
}

// Received is what the state machine needs of an advert that passed the
// receive checks (RFC 5798 §7.1).
type Received struct {
	Priority uint8
	Interval time.Duration // v3's Max Adver Int; ignored for v2
	Src      netip.Addr
}

// ActionKind says what the machine asks its driver to do.
type ActionKind int

const (
	// SendAdvert sends an advert with Priority now.
	SendAdvert ActionKind = iota
	// TakeOver adds the virtual addresses and announces them (gratuitous
	// ARP, unsolicited NA) on becoming Master.
	TakeOver
	// GiveUp removes the virtual addresses on leaving Master.
	GiveUp
	// Reannounce repeats the gratuitous ARPs / unsolicited NAs: another
	// master was heard, so neighbours may have learnt its MAC.
	Reannounce
	// Transition reports a state change, for the log and the status.
	Transition
)

// Action is one thing the driver must do, in order.
type Action struct {
	Kind     ActionKind
	Priority uint8 // SendAdvert
	From, To State // Transition
	Reason   string
}

func (a Action) String() string {
	switch a.Kind {
	case SendAdvert:
		return fmt.Sprintf("send advert priority %d", a.Priority)
	case TakeOver:
		return "take over"
	case GiveUp:
		return "give up"
	case Reannounce:
		return "reannounce"
	case Transition:
		return fmt.Sprintf("%s -> %s (%s)", a.From, a.To, a.Reason)
	}
	return fmt.Sprintf("Action(%d)", int(a.Kind))
}

// Machine is one virtual router's state machine (RFC 5798 §6.4, with
// RFC 3768 §6.4's timers for VRRPv2). It is pure: every input carries the
// time, and the machine only returns actions and its next deadline, so
// tests drive it with a fake clock.
type Machine struct {
	p     Params
	state State

	// masterAdverInterval is the interval the current master advertises
	// (v3 learns it from adverts, §6.4.2; v2 uses its own).
	masterAdverInterval time.Duration
	masterDown          time.Time // Master_Down_Timer deadline (Backup)
	adver               time.Time // Adver_Timer deadline (Master)
	preemptAt           time.Time // when a pending pre-emption may go ahead
	faults              map[string]bool
	// held keeps a backup from becoming master: another member of its
	// sync group is in Fault.
	held bool
	// release is `halb vrrp release` (release.go).
	release releaseState
}

// NewMachine returns a machine in Initialize.
func NewMachine(p Params) *Machine {
	return &Machine{p: p, state: Initialize, masterAdverInterval: p.AdvertInterval, faults: map[string]bool{}}
}

// State is the current state.
func (m *Machine) State() State { return m.state }

// Priority is the current priority.
func (m *Machine) Priority() uint8 { return m.p.Priority }

// MasterAdverInterval is the master's advert interval as last learned.
func (m *Machine) MasterAdverInterval() time.Duration { return m.masterAdverInterval }

// SkewTime is RFC 5798 §6.1's Skew_Time: lower priorities wait longer, so
// the best backup takes over first. VRRPv2 (RFC 3768 §6.1) counts it in
// seconds regardless of the interval.
func (m *Machine) SkewTime() time.Duration {
	if m.p.Version == 2 {
		return time.Duration(256-int(m.p.Priority)) * time.Second / 256
	}
	return time.Duration(256-int(m.p.Priority)) * m.masterAdverInterval / 256
}

// MasterDownInterval is 3 × Master_Adver_Interval + Skew_Time.
func (m *Machine) MasterDownInterval() time.Duration {
	return 3*m.masterAdverInterval + m.SkewTime()
}

// Deadline is when Tick must next be called; zero when no timer runs.
func (m *Machine) Deadline() time.Time {
	switch m.state {
	case Backup:
		return m.masterDown
	case Master: // a released Master's wait for a taker ends on time too
		return m.release.earlier(m.adver)
	}
	return time.Time{}
}

// Start is the Startup event (§6.4.1). A machine held in Fault stays there
// until its faults clear.
func (m *Machine) Start(now time.Time) []Action {
	if m.state != Initialize {
		return nil
	}
	if len(m.faults) > 0 {
		return m.enterFault(now, m.faultReason())
	}
	return m.startup(now, "startup")
}

func (m *Machine) startup(now time.Time, why string) []Action {
	if m.p.Priority == OwnerPriority && !m.release.on { // released, even the owner holds Backup
		return m.becomeMaster(now, why+", address owner")
	}
	return m.becomeBackup(now, why)
}

// Shutdown is the Shutdown event: a master says goodbye with priority 0 so
// the backup takes over after its skew time instead of the full master down
// interval (§6.4.3).
func (m *Machine) Shutdown(now time.Time) []Action {
	var acts []Action
	if m.state == Master {
		acts = append(acts, Action{Kind: SendAdvert, Priority: PriorityStop}, Action{Kind: GiveUp})
	}
	return append(acts, m.to(Initialize, "shutdown"))
}

// Tick fires the timers that have expired by now.
func (m *Machine) Tick(now time.Time) []Action {
	if acts, ok := m.releaseTick(now); ok {
		return acts
	}
	switch m.state {
	case Backup:
		if !m.masterDown.IsZero() && !now.Before(m.masterDown) {
			if m.held || m.release.on {
				m.masterDown = now.Add(m.MasterDownInterval())
				return nil
			}
			return m.becomeMaster(now, "master down timer")
		}
	case Master:
		if !m.adver.IsZero() && !now.Before(m.adver) {
			m.adver = now.Add(m.p.AdvertInterval)
			return []Action{{Kind: SendAdvert, Priority: m.p.Priority}}
		}
	}
	return nil
}

// Receive handles an advert that passed the receive checks.
func (m *Machine) Receive(now time.Time, r Received) []Action {
	m.heard(now, r)
	switch m.state {
	case Backup:
		return m.backupReceive(now, r)
	case Master:
		return m.masterReceive(now, r)
	}
	return nil // Initialize and Fault ignore adverts
}

// §6.4.2, Backup.
func (m *Machine) backupReceive(now time.Time, r Received) []Action {
	if r.Priority == PriorityStop {
		// The master is leaving: take over after skew time only.
		m.masterDown = now.Add(m.SkewTime())
		return nil
	}
	if m.p.Preempt && r.Priority < m.p.Priority && !m.release.on {
		if m.p.PreemptDelay <= 0 {
			return nil // discard: the master down timer will make us Master
		}
		if m.preemptAt.IsZero() {
			m.preemptAt = now.Add(m.p.PreemptDelay)
		}
		if !now.Before(m.preemptAt) {
			return nil
		}
		// Still inside preempt_delay: follow the weaker master for now.
	} else {
		m.preemptAt = time.Time{}
	}
	m.learnInterval(r)
	m.masterDown = now.Add(m.MasterDownInterval())
	return nil
}

// §6.4.3, Master.
func (m *Machine) masterReceive(now time.Time, r Received) []Action {
	if m.releasing() {
		return m.releasedReceive(now, r)
	}
	if r.Priority == PriorityStop {
		// Another master is leaving: remind everyone who is master now.
		m.adver = now.Add(m.p.AdvertInterval)
		return []Action{{Kind: SendAdvert, Priority: m.p.Priority}}
	}
	if r.Priority > m.p.Priority || (r.Priority == m.p.Priority && addrGreater(r.Src, m.p.Primary)) {
		m.learnInterval(r)
		why := fmt.Sprintf("higher priority %d from %s", r.Priority, r.Src)
		if r.Priority == m.p.Priority {
			why = fmt.Sprintf("equal priority %d from higher address %s", r.Priority, r.Src)
		}
		return m.becomeBackup(now, why)
	}
	// Two masters: a partition has healed, or a node came up without
	// hearing us. The RFC discards the advert and lets our next one settle
	// it; like keepalived, answer at once so the loser steps down within
	// one advert, and announce the VIPs again so that neighbours which
	// learnt the loser's MAC come back to ours.
	m.adver = now.Add(m.p.AdvertInterval)
	return []Action{{Kind: SendAdvert, Priority: m.p.Priority}, {Kind: Reannounce}}
}

func (m *Machine) learnInterval(r Received) {
	if m.p.Version == 3 && r.Interval > 0 {
		m.masterAdverInterval = r.Interval
	}
}

// addrGreater compares primary addresses as unsigned integers in network
// byte order (§6.4.3).
func addrGreater(a, b netip.Addr) bool { return a.Compare(b) > 0 }

// SetPriority changes the priority (tracked interfaces and scripts). A
// master that drops below its peers learns of it from their adverts; a
// backup that rises pre-empts through the usual rules. An owner (255) is
// special only at startup.
func (m *Machine) SetPriority(now time.Time, p uint8) []Action {
	if p == m.p.Priority {
		return nil
	}
	m.p.Priority = p
	if m.state == Master && !m.releasing() { // a released Master says 0 until its trial ends
		// Advertise the new priority at once so backups can react.
		m.adver = now.Add(m.p.AdvertInterval)
		return []Action{{Kind: SendAdvert, Priority: p}}
	}
	return nil
}

// SetPrimary sets this router's own address, once it is known: it may
// appear on the interface after the instance started.
func (m *Machine) SetPrimary(a netip.Addr) { m.p.Primary = a }

// Hold keeps the machine from being Master while another member of its
// sync group is in Fault: a Master steps down, a Backup stays Backup when
// its master down timer fires. Release lets it go on as usual.
func (m *Machine) Hold(now time.Time, why string) []Action {
	m.held = true
	if m.state == Master {
		return m.becomeBackup(now, why)
	}
	return nil
}

// Release ends a Hold.
func (m *Machine) Release() { m.held = false }

// Follow moves the machine to the state another member of its sync group
// went to (keepalived's vrrp_sync_group): Master only from Backup and when
// nothing holds it back, Backup only from Master.
func (m *Machine) Follow(now time.Time, to State, why string) []Action {
	switch {
	case to == Master && m.state == Backup && !m.held && !m.release.on && len(m.faults) == 0:
		return m.becomeMaster(now, why)
	case to == Backup && m.state == Master:
		return m.becomeBackup(now, why)
	}
	return nil
}

// SetFault records that reason holds the instance in Fault (a missing
// interface or address, a failed tracked object). Faults add up: the
// instance leaves Fault only when all have cleared.
func (m *Machine) SetFault(now time.Time, reason string) []Action {
	m.faults[reason] = true
	if m.state == Fault || m.state == Initialize {
		return nil // Start will find the fault
	}
	return m.enterFault(now, reason)
}

// ClearFault removes reason; when no fault is left the instance starts
// again as at Startup, without waiting for a restart.
func (m *Machine) ClearFault(now time.Time, reason string) []Action {
	if !m.faults[reason] {
		return nil
	}
	delete(m.faults, reason)
	if m.state != Fault || len(m.faults) > 0 {
		return nil
	}
	return m.startup(now, "fault cleared: "+reason)
}

// Faults lists what holds the instance in Fault.
func (m *Machine) Faults() []string {
	out := make([]string, 0, len(m.faults))
	for r := range m.faults {
		out = append(out, r)
	}
	return out
}

func (m *Machine) faultReason() string {
	for r := range m.faults {
		return r
	}
	return ""
}

func (m *Machine) enterFault(now time.Time, reason string) []Action {
	var acts []Action
	if m.state == Master {
		acts = append(acts, Action{Kind: SendAdvert, Priority: PriorityStop}, Action{Kind: GiveUp})
	}
	m.masterDown, m.adver, m.preemptAt = time.Time{}, time.Time{}, time.Time{}
	return append(acts, m.to(Fault, reason))
}

func (m *Machine) becomeMaster(now time.Time, why string) []Action {
	m.masterDown, m.preemptAt = time.Time{}, time.Time{}
	m.adver = now.Add(m.p.AdvertInterval)
	return []Action{
		{Kind: SendAdvert, Priority: m.p.Priority},
		{Kind: TakeOver},
		m.to(Master, why),
	}
}

func (m *Machine) becomeBackup(now time.Time, why string) []Action {
	var acts []Action
	if m.state == Master {
		acts = append(acts, Action{Kind: GiveUp})
	}
	if m.state != Master {
		// §6.4.1: a backup starts from its own interval until it hears
		// the master.
		m.masterAdverInterval = m.p.AdvertInterval
	}
	m.adver, m.preemptAt = time.Time{}, time.Time{}
	m.masterDown = now.Add(m.MasterDownInterval())
	return append(acts, m.to(Backup, why))
}

func (m *Machine) to(s State, why string) Action {
	a := Action{Kind: Transition, From: m.state, To: s, Reason: why}
	m.state = s
	return a
}
