package nsthread

import (
	"errors"

	"github.com/vishvananda/netns"
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
