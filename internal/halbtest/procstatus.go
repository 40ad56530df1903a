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
func ProcStatusKiB(pid, name string) (int64, error) {
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%s/status: %q: %w", pid, line, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%s/status", name, pid)
}
