package main

import (
	"errors"
	"fmt"

	"github.com/halb-lb/halb/config"
	"github.com/halb-lb/halb/internal/trust"
)

// trackFileWarnings warns of each track file that someone other than root
// (or halb's user) can write, or create where it is missing, on this host:
// that user moves the instance's priority, or with weight 0 holds it in
// FAULT. A file is data, not a program, so it is a warning (keepalived
// reads any), not a problem; the check is the one script arguments get
// (trust.CheckArg), and opens nothing.
func trackFileWarnings(c *config.Config) []config.Problem {
	var warnings []config.Problem
	for i, in := range c.VRRP.Instances {
		for j, tf := range in.TrackFiles {
			err := trust.CheckArg(tf.Path)
			var te *trust.Error
			if !errors.As(err, &te) {
				continue // trusted, or what the system refused to say: halb run logs that
			}
			warnings = append(warnings, config.Problem{
				Path: fmt.Sprintf("vrrp.instances[%d].track_files[%d].path", i, j),
				Msg: fmt.Sprintf("warning: %v: whoever can write it moves %s's priority (or, with weight 0, holds it in FAULT)",
					te, in.Name)})
		}
	}
	return warnings
}
