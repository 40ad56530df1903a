// Package vrrp implements VRRP versions 2 and 3 (RFC 3768 and RFC 5798) as
// keepalived speaks them, so that halb and keepalived nodes can back each
// other up on one link.
//
// The protocol is pure: the advert codec (advert.go), the state machine
// (fsm.go), and the instance that drives it (instance.go, with what it
// watches in fault.go, its announcements in announce.go, its defence of the
// VIPs in conflict.go (what to do with each claim a watch reads, and when
// to answer it), what it holds beside the VIPs of its own interface in
// extras.go (VIPs on other interfaces, virtual routes and rules), its
// sync group in group.go, its VMAC's name and MAC in
// vmac.go) take bytes, addresses and times and give back decisions. An Instance touches the host only
// through its link (link.go): the interface and its addresses, the advert
// sockets, the VMAC, the VIPs, the announcement frames, the changes
// netlink reports. The *_linux.go files implement that link (raw sockets,
// multicast membership, netlink for addresses, routes and rules, packet
// sockets that watch for claims on the VIPs, nf_tables for the
// Accept_Mode filter), with track_linux.go
// for the trackers' files and /proc; nothing else in this package may make
// a syscall. So tracking, the announcement schedule,
// faults, preemption and sync groups are tested without root over a fake
// link (fakelink_test.go); the privileged tests run real nodes, and
// keepalived, in network namespaces. What track_files and track_processes
// read of the host (a file, /proc) comes the same way, through trackHost
// (track.go; track_linux.go reads it). The codec's golden vectors are
// keepalived's own adverts, captured by testdata/capture.sh.
//
// One advert, from the socket to the VIP added, reads in three files:
// link_linux.go (conn.receive reads it off the socket), instance.go
// (readLoop hands it to Run's loop; receive checks it and gives it to the
// machine; apply carries out the verdict, takeOver calling link.addVIPs)
// and fsm.go (the machine decides). Below them, called by name: the codec
// (Parse, advert.go) and how halb adds and marks an address (vipSet,
// vip_linux.go).
//
// Every goroutine an Instance starts (socket readers, track scripts, the
// trackers' poller, the notifier, the link's netlink watch) ends before
// its Run returns.
//
// What it must never do: remove an address, a route, a rule or a link it
// did not make (vip_linux.go, routes_linux.go, vmac_linux.go), let a notify script hold a transition or
// a stop (notify.go), or make a system call outside the link.
package vrrp
