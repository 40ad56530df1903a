// Package e2e holds halb's end-to-end tests: real clients, balancers and
// backends, each in a network namespace of its own that the test makes and
// removes, joined by veths and a bridge, with traffic only between them.
//
// The tests need root; they skip without it, and fail when CI=true. They
// must never send a packet outside the namespaces they make, and use
// documentation addresses only (RFC 5737, RFC 3849).
package e2e

// decap.c is TestTUN's decapsulator on the backends; its compiled objects
// are committed, like the loader's, so that the tests need no clang.
//
//go:generate go tool bpf2go -tags linux decap decap.c -- -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu -idirafter /usr/include/arm-linux-gnueabihf -O2 -g -Wall -Werror -mcpu=v3
