package config

import (
	"fmt"
	"strings"
	"time"
)

// Bounds of the issue-19 trackers (track_files, track_processes).
const (
	// maxProcessCount bounds min_count: the kernel's PID space
	// (PID_MAX_LIMIT, 2^22) holds no more processes than this.
	maxProcessCount = 1 << 22
	// The processes are counted once a second (vrrp/track.go): a
	// shorter delay could not be told from 0.
	minProcessDelay = time.Second
	maxProcessDelay = time.Hour
)

// StateScript is one per-state notify script and the key it is written
// under.
type StateScript struct {
	Key  string // notify_master, notify_backup, notify_fault, notify_stop
	Argv []string
}

// StateScripts lists the instance's per-state notify scripts that are
// set, in the order of the keys.
func (in *Instance) StateScripts() []StateScript {
	return stateScripts(in.NotifyMaster, in.NotifyBackup, in.NotifyFault, in.NotifyStop)
}

// StateScripts lists the sync group's per-state notify scripts that are
// set, in the order of the keys.
func (g *SyncGroup) StateScripts() []StateScript {
	return stateScripts(g.NotifyMaster, g.NotifyBackup, g.NotifyFault, g.NotifyStop)
}

func stateScripts(master, backup, fault, stop []string) []StateScript {
	var out []StateScript
	for _, s := range []StateScript{
		{"notify_master", master}, {"notify_backup", backup}, {"notify_fault", fault}, {"notify_stop", stop},
	} {
		if len(s.Argv) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// stateNotify checks the per-state notify scripts of the instance or
// sync group at path: commands as track scripts are, run without a shell.
func (v *validator) stateNotify(path string, scripts []StateScript) {
	for _, s := range scripts {
		v.command(path+"."+s.Key, s.Argv)
	}
}

// trackFiles checks track_files: an absolute path each, tracked once.
func (v *validator) trackFiles(path string, files []TrackFile) {
	seen := map[string]bool{}
	for j, tf := range files {
		tpath := fmt.Sprintf("%s.track_files[%d]", path, j)
		switch {
		case tf.Path == "":
			v.errf(tpath+".path", "a file to read is required, like /run/halb/weight-web")
		case strings.ContainsRune(tf.Path, 0):
			v.errf(tpath+".path", "%q contains a NUL byte", tf.Path)
		default:
			v.absPath(tpath+".path", tf.Path, "the file")
		}
		v.intRange(tpath+".weight", tf.Weight, -maxTrackWeight, maxTrackWeight)
		if seen[tf.Path] && tf.Path != "" {
			v.errf(tpath+".path", "%q is tracked twice", tf.Path)
		}
		seen[tf.Path] = true
	}
}

// trackProcesses checks track_processes: a process name as the kernel
// keeps it (no directory), a count that can be met, a delay within an
// hour, each process (name and arguments) tracked once.
func (v *validator) trackProcesses(path string, procs []TrackProcess) {
	type key struct{ name, args string }
	seen := map[key]bool{}
	for j, tp := range procs {
		tpath := fmt.Sprintf("%s.track_processes[%d]", path, j)
		switch {
		case tp.Name == "":
			v.errf(tpath+".name", "a process name is required, like haproxy")
		case strings.ContainsRune(tp.Name, '/'):
			v.errf(tpath+".name", "%q is a path: the name is matched against the process name and the base name of its argv[0], so write %q",
				tp.Name, tp.Name[strings.LastIndexByte(tp.Name, '/')+1:])
		case strings.ContainsRune(tp.Name, 0):
			v.errf(tpath+".name", "%q contains a NUL byte", tp.Name)
		}
		for k, a := range tp.Args {
			if strings.ContainsRune(a, 0) {
				v.errf(fmt.Sprintf("%s.args[%d]", tpath, k), "%q contains a NUL byte, which ends an argument", a)
			}
		}
		v.intRange(tpath+".min_count", tp.MinCount, 1, maxProcessCount)
		v.intRange(tpath+".weight", tp.Weight, -maxTrackWeight, maxTrackWeight)
		v.duration(tpath+".delay", tp.Delay, minProcessDelay, maxProcessDelay, "act at once")
		k := key{tp.Name, strings.Join(tp.Args, "\x00")}
		if seen[k] && tp.Name != "" {
			v.errf(tpath, "process %q with these args is tracked twice", tp.Name)
		}
		seen[k] = true
	}
}

// checkStateScripts adds the per-state notify scripts of c's instances
// and sync groups to what CheckScripts holds to halb's script policy.
func checkStateScripts(c *Config, command func(path string, argv []string)) {
	for i := range c.VRRP.Instances {
		for _, s := range c.VRRP.Instances[i].StateScripts() {
			command(fmt.Sprintf("vrrp.instances[%d].%s", i, s.Key), s.Argv)
		}
	}
	for i := range c.VRRP.SyncGroups {
		for _, s := range c.VRRP.SyncGroups[i].StateScripts() {
			command(fmt.Sprintf("vrrp.sync_groups[%d].%s", i, s.Key), s.Argv)
		}
	}
}
