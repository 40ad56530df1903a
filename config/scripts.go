package config

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/halb-lb/halb/internal/script"
)

// CheckScripts looks at the programs the configuration runs as root
// (notify scripts, per-state ones included, track scripts and exec
// health checks) on this host,
// with the policy internal/script applies again at every run: each must
// exist, be a regular executable file, and neither it nor any directory or
// symlink on its path, as written or as the links resolve, may be owned or
// writable by anyone but root (or the user halb runs as), or that someone
// could make halb run their code. The paths a command's arguments name
// are held to the same policy (script.CheckArg): [/bin/sh, /home/u/x.sh]
// runs the user's x.sh as root as surely as [/home/u/x.sh] would. keepalived refuses such scripts at run
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
	command := func(path string, argv []string) {
		if len(argv) == 0 {
			return
		}
		check(path+"[0]", argv[0])
		for k := 1; k < len(argv); k++ {
			if msg := argProblem(argv[k]); msg != "" {
				problems = append(problems, Problem{Path: fmt.Sprintf("%s[%d]", path, k), Msg: msg})
			}
		}
	}
	for i, in := range c.VRRP.Instances {
		base := fmt.Sprintf("vrrp.instances[%d]", i)
		if in.Notify != "" {
			check(base+".notify", in.Notify)
		}
		for j, ts := range in.TrackScripts {
			command(fmt.Sprintf("%s.track_scripts[%d].command", base, j), ts.Command)
		}
	}
	checkStateScripts(c, command)
	for i, s := range c.Services {
		if s.HealthCheck.Type == "exec" {
			command(fmt.Sprintf("services[%d].health_check.command", i), s.HealthCheck.Command)
		}
	}
	return problems
}

// argProblem: an argument of a command that names a path someone other
// than root could change (script.CheckArg), such as the script in
// [/bin/sh, /home/u/check.sh]: the program is safe, and runs their code.
func argProblem(arg string) string {
	err := script.CheckArg(arg)
	var ae *script.ArgError
	if err == nil || !errors.As(err, &ae) {
		return ""
	}
	what := arg
	if ae.Path != arg {
		what = fmt.Sprintf("%q names %s, which", arg, ae.Path)
	}
	return fmt.Sprintf("%s is given to the program halb runs as root, and cannot be trusted: %v "+
		"(keep the files a command names, like a script for an interpreter, where only root can change them)",
		what, ae.Err)
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
