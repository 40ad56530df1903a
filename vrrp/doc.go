// Package vrrp implements VRRP versions 2 and 3 (RFC 3768 and RFC 5798) as
// keepalived speaks them, so that halb and keepalived nodes can back each
// other up on one link.
//
// The advert codec (advert.go) and the state machine are pure: they take
// bytes, addresses and times and give back decisions, and run in tests without
// root. Only the *_linux.go files touch the system (raw sockets, multicast
// membership, netlink for virtual addresses, nf_tables for the Accept_Mode
// filter, packet sockets that watch for claims on the VIPs); nothing else
// in this package may make a syscall. The codec's golden vectors are
// keepalived's own adverts, captured by testdata/capture.sh.
//
// What it must never do: remove an address or a link it did not make
// (vip_linux.go, vmac_linux.go), or let a notify script hold a transition
// or a stop (notify_linux.go).
package vrrp
