#!/usr/bin/env bash
# systemd.sh [HALB_DEB] — halb's Debian package under systemd: a minimal
# Debian root made by mmdebstrap, booted with `systemd-nspawn --boot`
# (systemd as its PID 1, in a network namespace of its own), where
# systemd/guest.sh installs the package and checks the unit.
#
# The machines that run the tests do not run systemd as PID 1, but nspawn
# needs only the host's kernel: with --register=no and --keep-unit it asks
# no systemd or machined on the host for anything. It is much faster than
# booting that root in TCG QEMU, and the kernel is the host's (BTF, XDP, no
# IPVS), so the service runs on the eBPF data path.
#
# Prints guest.sh's lines, among them one line a check,
#
#   HALB-SYSTEMD: PASS NAME
#   HALB-SYSTEMD: FAIL NAME reason
#   HALB-SYSTEMD: INFO NAME text
#
# which the Go test (systemd_test.go) reads; exits 0 when guest.sh ran to
# its end. Exit status 3: a prerequisite could not be had (as build.sh).
#
# Cache ($HALB_VM_CACHE, else test/vm/.cache): systemd/rootfs, the root
# mmdebstrap made (remade only when the package list changes, so a second
# run downloads nothing), and systemd/bin/halb_*_amd64.deb, `make deb`'s
# package unless HALB_DEB names one. Each run copies the root afresh into
# systemd/root and removes it at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${HALB_VM_CACHE:-$here/.cache}
out=$cache/systemd
suite=bookworm
# The least a systemd boot with halb's package needs: dbus for systemctl,
# iproute2 for the test's namespaces, busybox's httpd for a backend, and
# procps for the unit's ExecReload=/bin/kill (minbase has no /bin/kill,
# and the package does not depend on procps).
packages=(systemd systemd-sysv dbus iproute2 procps busybox)
limit=${HALB_SYSTEMD_TIMEOUT:-300}

# log, die, unavailable, now, since, need_tools.
. "$here/host.sh"

# make_rootfs: the root directory, made once for this package list; each
# run copies it.
make_rootfs() {
	local stamp="$suite ${packages[*]}" t
	if [[ -d $out/rootfs && -f $out/rootfs.stamp && $(cat "$out/rootfs.stamp") == "$stamp" ]]; then
		return
	fi
	t=$(now)
	log "mmdebstrap $suite: ${packages[*]}"
	rm -rf "$out/rootfs" "$out/rootfs.tmp" "$out/rootfs.stamp"
	mmdebstrap --variant=minbase --format=directory --include="$(
		IFS=,
		echo "${packages[*]}"
	)" "$suite" "$out/rootfs.tmp" >&2 || unavailable "mmdebstrap $suite failed: is Debian's archive reachable?"
	mv "$out/rootfs.tmp" "$out/rootfs"
	echo "$stamp" >"$out/rootfs.stamp"
	log "root $(du -sh "$out/rootfs" | cut -f1) in $(since "$t")"
}

# package: the amd64 .deb to install, made by `make deb` unless given.
package() {
	if [[ $# -ge 1 ]]; then
		readlink -f "$1"
		return
	fi
	local t
	t=$(now)
	rm -f "$out"/bin/halb_*.deb # an older checkout's
	make -s -C "$repo" BINDIR="$out/bin" DEB_ARCHES=amd64 deb >&2 || die "make deb failed"
	log "make deb in $(since "$t")"
	find "$out/bin" -maxdepth 1 -name 'halb_*_amd64.deb' | sort -V | tail -n1
}

main() {
	local deb root pid t status
	mkdir -p "$out"
	exec 9>"$out/.lock"
	flock 9
	need_tools mmdebstrap=mmdebstrap systemd-nspawn=systemd-container nsenter=util-linux
	make_rootfs
	deb=$(package "$@")
	[[ -s $deb ]] || die "no package: $deb"

	t=$(now)
	root=$out/root
	rm -rf "$root"
	mkdir -p "$root"
	cp -a "$out/rootfs/." "$root/"
	echo halb-guest >"$root/etc/hostname"
	install -D -m 0644 "$deb" "$root/root/$(basename "$deb")"
	install -D -m 0755 "$here/systemd/guest.sh" "$root/root/guest.sh"
	# A bpffs of the guest's own: nspawn mounts /sys read-only and nothing in
	# the guest mounts one.
	mkdir -p "$out/bpffs"
	mount -t bpf bpf "$out/bpffs"
	trap 'cleanup' EXIT
	log "root unpacked in $(since "$t")"

	t=$(now)
	systemd-nspawn -q -D "$root" --register=no --keep-unit --private-network --boot \
		--capability=all --system-call-filter="bpf perf_event_open" --bind="$out/bpffs:/sys/fs/bpf" --console=passive \
		>"$out/console.log" 2>&1 &
	nspawn=$!
	pid=$(guest_init "$nspawn")
	wait_running "$pid"
	log "guest booted in $(since "$t")"
	set +e
	timeout "$limit" nsenter -t "$pid" -a /root/guest.sh "/root/$(basename "$deb")"
	status=$?
	set -e
	log "guest.sh ended with status $status in $(since "$t")"
	return "$status"
}

# guest_init NSPAWN_PID: the guest's PID 1 (systemd), nspawn's child.
guest_init() {
	local i child
	for ((i = 0; i < 300; i++)); do
		child=$(pgrep -P "$1" | head -n1 || true)
		if [[ -n $child ]] && [[ $(readlink "/proc/$child/exe" 2>/dev/null) == */systemd ]]; then
			echo "$child"
			return
		fi
		kill -0 "$1" 2>/dev/null || die "systemd-nspawn exited: $(tail -n 20 "$out/console.log")"
		sleep 0.2
	done
	die "no systemd in the guest after 60 s"
}

# wait_running PID: until the guest's systemd has finished booting.
wait_running() {
	local i state
	for ((i = 0; i < 600; i++)); do
		state=$(nsenter -t "$1" -a systemctl is-system-running 2>/dev/null || true)
		case $state in
		running | degraded) return ;;
		esac
		sleep 0.2
	done
	die "the guest's systemd is $state after 120 s"
}

# cleanup: power the guest off, then remove its root and bpffs.
cleanup() {
	if [[ -n ${nspawn:-} ]] && kill -0 "$nspawn" 2>/dev/null; then
		kill -TERM "$nspawn" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$nspawn" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$nspawn" 2>/dev/null || true
	fi
	umount "$out/bpffs" 2>/dev/null || true
	rm -rf "$out/root"
}

main "$@"
