package nsthread

import (
	"errors"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// FailRestore makes every return of a thread to its namespace fail, as a
// kernel that refused setns would, until undo is called; seen runs first,
// on the thread concerned.
func FailRestore(seen func()) (undo func()) {
	restore = func(netns.NsHandle) error {
		seen()
		return errors.New("setns refused by the test")
	}
	return func() { restore = netns.Set }
}

// FailUnshare makes every new namespace DoThrowaway asks for fail, as
// a kernel would for a caller without CAP_SYS_ADMIN, until undo is called.
func FailUnshare() (undo func()) {
	saved := unshare
	unshare = func() error { return unix.EPERM }
	return func() { unshare = saved }
}
