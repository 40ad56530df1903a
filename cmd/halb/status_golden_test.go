package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/internal/golden"
)

// The table `halb status` prints for each golden status of the daemon
// (daemon/testdata/golden/*.status.json, the bytes of `halb status
// --json`), read at a fixed moment, compared byte for byte: a change to
// the status model must not change what an operator reads.
func TestStatusGolden(t *testing.T) {
	files, err := filepath.Glob("../../daemon/testdata/golden/*.status.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden status files (%v)", err)
	}
	now := time.Date(2026, 12, 6, 17, 30, 0, 0, time.UTC)
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json") + ".txt"
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var st daemon.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := writeStatus(&out, st, now); err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, filepath.Join("testdata", "golden", name), out.Bytes())
		})
	}
}
