package vrrp

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNoPeer refuses `halb vrrp release` on a Backup that has heard no
// master within three advert intervals: with nobody to take the VIP, it
// would go nowhere.
var ErrNoPeer = errors.New("no peer heard within three advert intervals: the VIP would go nowhere (--force releases anyway)")

// ReleaseUndone starts the refusal of a Master's release that no peer
// took over (the Master kept its VIPs).
const ReleaseUndone = "release undone"

// releaseState is an operator's `halb vrrp release`: the machine holds
// Backup, whatever its priority and preempt, until Resume (a Master
// without --force first keeps its VIPs until a taker is heard).
type releaseState struct {
	on bool
	// lastPeer is when another router's advert (priority above 0) was
	// last heard.
	lastPeer time.Time
	// trial, when set, is when a released Master that has heard no taker
	// since ends its release and stays Master (without --force).
	trial time.Time
}

// earlier is the sooner of t and the trial's end.
func (r releaseState) earlier(t time.Time) time.Time {
	if r.trial.IsZero() || (!t.IsZero() && t.Before(r.trial)) {
		return t
	}
	return r.trial
}

// Released reports whether `halb vrrp release` holds the machine in
// Backup.
func (m *Machine) Released() bool { return m.release.on }

// ReleaseMastership hands mastership away: a Master says priority 0 (the
// best backup takes over after its skew time) and holds Backup until
// Resume; a Backup just holds. Backups are silent in VRRP, so a Master
// cannot know beforehand that one listens. With force it gives its VIPs
// up at once. Without, it makes before it breaks: it keeps its VIPs and
// says priority 0 each advert interval until a new master's advert is
// heard (masterReceive: then it gives them up, so two nodes hold them for
// no longer than that advert takes to arrive), and when none comes within
// three advert intervals it ends the release and stays Master
// (releaseTick): the VIPs never left. A Backup that has heard no master
// within three intervals is refused without force (ErrNoPeer).
func (m *Machine) ReleaseMastership(now time.Time, force bool) ([]Action, error) {
	if m.release.on {
		return nil, nil
	}
	if m.state == Backup && !force && now.Sub(m.release.lastPeer) > 3*m.masterAdverInterval {
		return nil, ErrNoPeer
	}
	m.release.on = true
	if m.state != Master {
		return nil, nil
	}
	acts := []Action{{Kind: SendAdvert, Priority: PriorityStop}}
	if !force {
		m.release.trial = now.Add(3 * m.p.AdvertInterval)
		m.adver = now.Add(m.p.AdvertInterval)
		return acts, nil
	}
	return append(acts, m.becomeBackup(now, "released by the operator")...), nil
}

// releasing reports whether a released Master still holds its VIPs,
// waiting for a new master's advert.
func (m *Machine) releasing() bool { return m.release.on && m.state == Master }

// Resume ends a release: the machine takes part again, and with preempt
// a higher priority takes the VIPs back by the usual rules (the master
// down timer, as the weaker master's adverts are discarded). A Master
// still waiting for a taker advertises its own priority again at once.
func (m *Machine) Resume(now time.Time) []Action {
	if m.releasing() {
		m.adver = now
	}
	m.release.on, m.release.trial = false, time.Time{}
	return nil
}

// heard notes another router's advert: a peer that would take the VIPs.
func (m *Machine) heard(now time.Time, r Received) {
	if r.Priority == PriorityStop {
		return
	}
	m.release.lastPeer = now
	m.release.trial = time.Time{} // someone took over
}

// releasedReceive is a released Master's answer to an advert: any router
// that advertises a priority has taken the mastership offered, so the
// VIPs go to it now (RFC 5798 §6.4.3 would keep them from a lower
// priority). A priority 0 from another leaving master changes nothing.
func (m *Machine) releasedReceive(now time.Time, r Received) []Action {
	if r.Priority == PriorityStop {
		return nil
	}
	m.learnInterval(r)
	return m.becomeBackup(now, fmt.Sprintf("released by the operator: %s took over at priority %d", r.Src, r.Priority))
}

// releaseTick is a released Master's advert timer: priority 0 again
// while the trial lasts, and when it ends with no new master heard, the
// release ends and the machine advertises as Master again (its VIPs never
// left). ok says whether it acted.
func (m *Machine) releaseTick(now time.Time) ([]Action, bool) {
	if !m.releasing() {
		return nil, false
	}
	if !m.release.trial.IsZero() && !now.Before(m.release.trial) {
		m.release.on, m.release.trial = false, time.Time{}
		m.adver = now.Add(m.p.AdvertInterval)
		return []Action{{Kind: SendAdvert, Priority: m.p.Priority}}, true
	}
	if !m.adver.IsZero() && !now.Before(m.adver) {
		m.adver = now.Add(m.p.AdvertInterval)
		return []Action{{Kind: SendAdvert, Priority: PriorityStop}}, true
	}
	return nil, true
}

// operatorCmd is `halb vrrp release|resume` for the Run loop.
type operatorCmd struct {
	release, force bool
	reply          chan error
}

// Release is `halb vrrp release` on this instance (Machine.ReleaseMastership),
// carried out on its Run loop; ErrNoPeer when refused.
func (in *Instance) Release(ctx context.Context, force bool) error {
	return in.ask(ctx, operatorCmd{release: true, force: force})
}

// Resume is `halb vrrp resume` (Machine.Resume).
func (in *Instance) Resume(ctx context.Context) error {
	return in.ask(ctx, operatorCmd{})
}

func (in *Instance) ask(ctx context.Context, cmd operatorCmd) error {
	cmd.reply = make(chan error, 1)
	select {
	case in.operator <- cmd:
	case <-ctx.Done():
		return ctx.Err()
	case <-in.stopped:
		return errors.New("the instance is stopping")
	}
	select {
	case err := <-cmd.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// operatorCmd carries out cmd on the Run loop.
func (in *Instance) operatorCmd(now time.Time, cmd operatorCmd) error {
	if !cmd.release {
		in.log.Info("resumed by the operator", "state", in.m.State().String())
		in.apply(now, in.m.Resume(now))
		return nil
	}
	acts, err := in.m.ReleaseMastership(now, cmd.force)
	if err != nil {
		return err
	}
	in.log.Info("released by the operator", "state", in.m.State().String(), "force", cmd.force)
	in.apply(now, acts)
	return nil
}
