// Package halbtest is what halb's tests share to run halb and watch it:
// the binary built once (Build), `halb run` started in a test's network
// namespace with its output in a Log the test reads while halb writes it
// (Start), stopped within a bound or killed when the test ends (Proc), a
// bpf filesystem of the test's own for the pins (BPFFS), a free loopback
// port (FreeAddr), a kernel that answers the probe "no" to everything
// (NoKernel), and snapshots of the goroutines, to prove that a
// component's Close or Run returns only once everything it started has
// returned (Running, Left).
//
// It is for tests only (only _test.go files import it) and must never
// touch the host beyond what the test made: processes run in the test's
// namespaces, mounts are on the test's directories and go when it ends.
package halbtest
