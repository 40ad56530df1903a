// Package ipvs is halb's data path on Linux IPVS, for kernels without BTF (a
// Raspberry Pi's, for one): it says which kernel modules IPVS needs (ip_vs
// and one ip_vs_<scheduler> per scheduler in use), has internal/kmod load
// each of them explicitly, and keeps IPVS's virtual services equal to
// halb's over generic netlink, with github.com/cloudflare/ipvs.
//
// A Datapath reconciles: every Apply reads what the kernel holds and changes
// only what differs, so it restores whatever someone removed (ipvsadm -C)
// and is a no-op when nothing changed. IPVS announces no changes, so the
// Datapath asks the daemon (Resync) to call Apply again every 10 s as well
// as on every change. Such a resync, when the last pass succeeded and the
// services are the same, reads the whole table once (/proc/net/ip_vs) and
// stops there if it shows what that pass wrote; it lists the services and
// their destinations over netlink only when it does not. What
// /proc/net/ip_vs does not show (a destination's thresholds or tunnel
// type) is put back by the next Apply that changes something, not by a
// resync. What it shows in the kernel's own units (a persistence timeout,
// in jiffies) is compared with what it showed when read right after the
// last pass, which also checks that the reading agrees with what that pass
// wrote. The VM test's scenario halb-ipvs-table checks all of this against
// a real kernel.
//
// Flows (`halb flows`) reads the connection table, /proc/net/ip_vs_conn,
// for the connections to halb's services: each one's client, backend,
// state and expiry, which is all IPVS keeps of a connection (no age, no
// packet count).
//
// It must never change or remove an IPVS service it does not own, never
// unload a module, and never leave a service half-programmed because a
// scheduler is missing: modules are loaded, or their absence reported, before
// the first change.
//
// # Ownership
//
// IPVS has no owner or comment field, so the table itself cannot say which
// services halb made. halb owns a service when its (VIP, port, protocol) is
// in the configuration, or was in the configuration of a previous Apply, by
// this process or an earlier one. The second set lives in a state file
// (DefaultStateFile, on the /run tmpfs) that lists the keys of the services
// halb has programmed. halb writes it before it changes the kernel, so that
// a crash halfway leaves no service unaccounted for, and rewrites it after,
// without the services it removed.
//
// Why a file and not "every service whose key is in the configuration":
// that rule would leave behind, after a restart, every service removed from
// the configuration while halb was down. Why /run: IPVS's table and /run both
// start empty at boot, so the file never claims services from before the
// last boot, which someone else may have set up since.
//
// The consequences, each on purpose:
//   - A service someone added with ipvsadm and whose key halb's configuration
//     does not name is never touched, across restarts too.
//   - A service whose key the configuration names is halb's, whoever made
//     it: halb takes it over (and logs that) and, when the key leaves the
//     configuration, removes it.
//   - In a service halb owns, halb owns every destination: one added by hand
//     is removed at the next Apply.
//   - If the state file is lost while halb is down, the services removed
//     from the configuration meanwhile stay in the kernel (halb no longer
//     knows they were its own); ipvsadm -D removes them.
package ipvs
