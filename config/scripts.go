package config

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/halb-lb/halb/internal/script"
)

// CheckScripts looks at the programs the configuration runs as root
// (notify scripts, track scripts and exec health checks) on this host,
// with the policy internal/script applies again at every run: each must
// exist, be a regular executable file, and neither it nor any directory or
// symlink on its path, as written or as the links resolve, may be owned or
// writable by anyone but root (or the user halb runs as), or that someone
// could make halb run their code. keepalived refuses such scripts at run
// time, quietly; halb refuses them when the configuration is read, and
// refuses to run them if they become unsafe later.
//
// It only reads file metadata. Parse does not call it, so a config can be
// checked for another host without its scripts. Relative paths are left
// to Validate, which refuses them.
func CheckScripts(c *Config) []Problem {
	var problems []Problem
	check := func(path, program string) {
		if !filepath.IsAbs(program) {
			return
		}
		if msg := scriptProblem(program); msg != "" {
			problems = append(problems, Problem{Path: path, Msg: msg})
		}
	}
	for i, in := range c.VRRP.Instances {
		base := fmt.Sprintf("vrrp.instances[%d]", i)
		if in.Notify != "" {
			check(base+".notify", in.Notify)
		}
		for j, ts := range in.TrackScripts {
			if len(ts.Command) > 0 {
				check(fmt.Sprintf("%s.track_scripts[%d].command[0]", base, j), ts.Command[0])
			}
		}
	}
	for i, s := range c.Services {
		if s.HealthCheck.Type == "exec" && len(s.HealthCheck.Command) > 0 {
			check(fmt.Sprintf("services[%d].health_check.command[0]", i), s.HealthCheck.Command[0])
		}
	}
	return problems
}

func scriptProblem(program string) string {
	err := script.Check(program)
	var pe *fs.PathError
	var re *script.RefusedError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &re):
		return fmt.Sprintf("%s cannot be run safely: %v", program, re.Err)
	case errors.As(err, &pe):
		if pe.Path == program {
			return fmt.Sprintf("%s cannot be run: %v", program, pe.Err)
		}
		return fmt.Sprintf("%s cannot be run: %v (at %s)", program, pe.Err, pe.Path)
	}
	return fmt.Sprintf("%s cannot be run: %v", program, err)
}
