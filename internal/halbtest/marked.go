package halbtest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// MarkedPIDs is the live processes whose command line holds marker, a
// random word only the calling test's scripts use: those are provably the
// test's own, and the only ones a test may look for or kill.
func MarkedPIDs(t testing.TB, marker string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(marker)) {
			pids = append(pids, pid)
		}
	}
	return pids
}
