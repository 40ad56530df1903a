// Package e2e holds halb's end-to-end tests: real clients, balancers and
// backends, each in a network namespace of its own that the test makes and
// removes, joined by veths and a bridge, with traffic only between them.
//
// The tests need root; they skip without it, and fail when CI=true. They
// must never send a packet outside the namespaces they make, and use
// documentation addresses only (RFC 5737, RFC 3849).
package e2e
