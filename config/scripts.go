package config

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// CheckScripts looks at the programs the configuration runs as root
// (notify scripts and track scripts) on this host: each must exist, be a
// regular executable file, and neither it nor a directory above it may be
// writable by anyone but root (or the user halb runs as), or that someone
// could make halb run their code. keepalived refuses such scripts at run
// time, quietly; halb refuses them when the configuration is read.
//
// It only reads file metadata. Parse does not call it, so a config can be
// checked for another host without its scripts.
func CheckScripts(c *Config) []Problem {
	var problems []Problem
	check := func(path, program string) {
		if msg := scriptProblem(program); msg != "" {
			problems = append(problems, Problem{Path: path, Msg: msg})
		}
	}
	for i, in := range c.VRRP.Instances {
		base := fmt.Sprintf("vrrp.instances[%d]", i)
		if in.Notify != "" && filepath.IsAbs(in.Notify) {
			check(base+".notify", in.Notify)
		}
		for j, ts := range in.TrackScripts {
			if len(ts.Command) > 0 && filepath.IsAbs(ts.Command[0]) {
				check(fmt.Sprintf("%s.track_scripts[%d].command[0]", base, j), ts.Command[0])
			}
		}
	}
	return problems
}

func scriptProblem(program string) string {
	st, err := os.Stat(program)
	switch {
	case err != nil:
		return fmt.Sprintf("%s cannot be run: %v", program, unwrapPathError(err))
	case !st.Mode().IsRegular():
		return fmt.Sprintf("%s is not a regular file", program)
	case st.Mode().Perm()&0o111 == 0:
		return fmt.Sprintf("%s is not executable: chmod +x it", program)
	}
	// The file itself, then every directory above it.
	child := st
	for p := program; ; {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Sprintf("%s cannot be checked: %v", p, unwrapPathError(err))
		}
		if writableByOthers(fi) && !(fi.IsDir() && fi.Mode()&fs.ModeSticky != 0 && trustedOwner(child)) {
			return fmt.Sprintf("%s is writable by a user other than root, so anyone who can write it could make halb run their code: chown root and chmod go-w %s", p, p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return ""
		}
		child, p = fi, parent
	}
}

// writableByOthers: writable by its group or by everyone, or owned and
// writable by an untrusted user.
func writableByOthers(fi fs.FileInfo) bool {
	perm := fi.Mode().Perm()
	return perm&0o022 != 0 || (perm&0o200 != 0 && !trustedOwner(fi))
}

func trustedOwner(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && (st.Uid == 0 || int(st.Uid) == os.Geteuid())
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}
