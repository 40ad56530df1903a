package vrrp

import (
	"log/slog"

	"github.com/halb-lb/halb/config"
)

// NewInstance prepares an instance on this host's network (the namespace
// of the thread that calls Run); Run starts it.
func NewInstance(cfg config.Instance, log *slog.Logger) *Instance {
	log = log.With("instance", cfg.Name, "vrid", cfg.VRID)
	in := newInstance(cfg, log, newKernelLink(cfg, log), runProgram)
	in.host = procHost{proc: "/proc"}
	return in
}

// NewSyncGroup makes an empty sync group that runs cfg's notify scripts
// when the group as a whole changes state; instances join it with
// JoinGroup.
func NewSyncGroup(cfg config.SyncGroup, log *slog.Logger) *Group {
	return newSyncGroup(cfg, log, runProgram)
}
