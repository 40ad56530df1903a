// Package halbtest is what halb's tests share to watch halb run: a log
// the test reads while halb writes it, and snapshots of the goroutines,
// to prove that a component's Close or Run returns only once everything
// it started has returned.
//
// It is for tests only (only _test.go files import it) and must never
// touch the host: it reads the test process's own state.
package halbtest
