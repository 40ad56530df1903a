// Package golden compares what a test renders with a file kept in the
// repository, for output whose bytes are a contract: `halb status`, its
// JSON, a /metrics scrape. `go test ... -update` rewrites the files from
// what the code renders now, and the diff is the review.
//
// It is for tests only and must never be imported by code that ships.
package golden

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files from what the code renders now")

// Compare fails t unless got is byte for byte the file at path, or with
// -update writes got there.
func Compare(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what the code renders now.\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
