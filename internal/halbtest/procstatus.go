package halbtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStatusKiB reads a "Name:  1234 kB" line (VmRSS, VmHWM) of
// /proc/PID/status, pid "self" for this process: the memory figures the
// benchmarks report.
func ProcStatusKiB(pid, name string) (int64, error) { return ProcKiB(pid, "status", name) }

// ProcKiB reads a "Name:  1234 kB" line of /proc/PID/file: status, or
// smaps_rollup for what the mappings are made of (FilePmdMapped).
func ProcKiB(pid, file, name string) (int64, error) {
	text, err := os.ReadFile("/proc/" + pid + "/" + file)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(text), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%s/%s: %q: %w", pid, file, line, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%s/%s", name, pid, file)
}
