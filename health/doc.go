// Package health decides which backends of a service take new flows: it
// probes every backend with the service's health_check (tcp, http, https,
// udp, exec or none), turns the results into a healthy/unhealthy state with
// rise and fall thresholds, reports every change of state as one Event, and
// turns configuration plus states into the backend weights a data path
// programs (Backends: the one place the drain, quorum and sorry_backend rule
// lives).
//
// A check goes to the backend's address, on the backend's port or on
// health_check.port, from health_check.source when it is set; its
// result is the backend's, keyed by the backend's own address and port
// (Key) in the states, the events, the status and the metrics. A
// service group's backends are checked once, whatever the number of its
// VIP:port pairs.
//
// The rise/fall state machine (state.go) and the weight rule (weights.go)
// are pure and tested by tables. The checkers (check.go, and *_linux.go for
// what needs Linux) are the only code that opens sockets or starts
// processes; Monitor schedules them.
//
// It must never touch the data path, never log (the daemon logs each Event
// as one line), and never let a check outlive its timeout: every check runs
// under a context with that timeout, and an exec check's whole process
// group is killed when it expires.
//
// # State at startup
//
// A backend starts healthy, as keepalived's real servers do unless alpha is
// set, but that presumption is not evidence: the first check result decides
// on its own, whatever rise and fall say. So traffic flows from the first
// moment (a VRRP takeover does not wait rise × interval for backends that
// are fine), and a dead backend takes new flows for at most one interval
// plus one timeout, not fall × interval. After the first result, fall
// consecutive failures take a backend out and rise consecutive successes
// bring it back. When a reload changes a backend's check, its state carries
// over, again unconfirmed until the new check's first result.
package health
