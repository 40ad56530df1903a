package halbtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unmountWait bounds how long BPFFS waits for its mount to be let go.
const unmountWait = 10 * time.Second

// BPFFS mounts a bpf filesystem on a new directory of t's own and returns
// the directory; it is unmounted when t ends. halb mounts one only on
// /sys/fs/bpf: a test gives it a path of its own, mounted here as an
// operator would.
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount a bpf filesystem on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC {
			if err := unmount(dir); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		}
	})
	return dir
}

// unmount unmounts dir, waiting while it is busy. Another process may
// be reading it for an instant: a halb that finds another halb's program
// on its interface looks for that one's link pin through every bpf
// filesystem mounted on the host (loader's findLinkPin), and the tests of
// other packages run such halbs at the same time as this one. A mount
// still busy after unmountWait is held for good, and that is an error.
func unmount(dir string) error {
	deadline := time.Now().Add(unmountWait)
	for {
		err := unix.Unmount(dir, 0)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
