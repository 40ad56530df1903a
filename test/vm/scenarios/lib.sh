# lib.sh — what every scenario may use; /init sources it before
# /scenarios/NAME.sh, in busybox sh.
#
# A scenario is a list of steps that each either pass or call fail with a
# reason; the first failure ends it, and /init prints the reason on the
# HALB-VM-RESULT line. A new scenario is one more file in test/vm/scenarios/:
# the Go test runs every NAME.sh there (lib.sh aside) as a subtest.
#
# Helpers:
#   step TEXT                  announce a step
#   fail REASON                end the scenario with REASON
#   run CMD...                 run CMD; fail naming it unless it exits 0
#   run_to FILE CMD...         the same, standard output into FILE (and shown)
#   run_fails CMD...           run CMD; fail unless it exits non-zero; its
#                              output is in $OUT afterwards
#   jget FILE PATH             a value from halb's indented JSON ("ipvs.loaded",
#                              "ipvs.family.supported"); a list's items one a
#                              line, strings without quotes, objects in lists
#                              as "*" ("ipvs_needed.*.state")
#   expect_json FILE PATH WANT  jget, items joined by blanks, must equal WANT
#   expect_json_has FILE PATH ITEM  ITEM must be one of the items
#   expect_loaded MOD / expect_not_loaded MOD   by /proc/modules
#   wait_until SECS WHAT CMD...  run CMD every 0.1 s until it succeeds; fail
#                              saying WHAT did not happen within SECS
#   halb_start ARGS...         `halb run ARGS` in the background, its output
#                              in $HALB_LOG, its pid in $HALB_PID
#   halb_stop                  SIGTERM; fail unless it exits 0 within 10 s
#   halb_wait SECS WHAT ERE    wait until halb's log matches ERE; fail at
#                              once, showing the log, if halb exits first
#   halb_run_fails ARGS...     `halb run ARGS` must exit with status 1 (a
#                              failure, not a bad config) within 30 s; its
#                              output is in $OUT afterwards
#   expect_in FILE ERE WHAT / expect_not_in FILE ERE WHAT   grep -E on FILE
#   loaded_modules             the names in /proc/modules, on one line
#   expect_ipvs_service VIP:PORT SCHED ADDR:PORT:WEIGHT...  ipvsadm -Ln lists
#                              TCP VIP:PORT with SCHED and exactly these
#                              real servers, Masq, with these weights
#   expect_ipvs_two            both services of /etc/halb/ipvs-two.yaml
#   ipvs_count                 how many services ipvsadm -Ln lists
#   modprobe_off / modprobe_on  kernel.modprobe = /bin/false or /sbin/modprobe:
#                              off models a distribution on which the
#                              kernel's on-demand module loading fails
#   modprobe_hide / modprobe_unhide  no modprobe program at all (kmod's is
#                              moved to /run/hidden), as on a minimal system:
#                              halb loads modules with finit_module itself
#   nat_topology               client and two backends in network namespaces
#                              around this (the director's) namespace
#   backend_serve NS PORT NAME  a TCP server in NS that answers NAME, forever
#   connect_many N HOST PORT   N connections from the client namespace; prints
#                              each answer, one a line

OUT=/tmp/halb-vm-out

# Debian's busybox-static runs its own applets ahead of anything on PATH
# (FEATURE_SH_STANDALONE). These names go to the real tools instead: kmod,
# whose modprobe honours modules.softdep as on a Debian host, and iproute2's
# ip, which has netns and veth peers. `busybox modprobe` is still there.
# busybox's depmod writes modules.dep but none of the modules.*.bin indexes
# kmod reads first: after it, kmod's modprobe would go on loading what the
# stale modules.dep.bin says.
ip() { /usr/sbin/ip "$@"; }
modprobe() { /sbin/modprobe "$@"; }
depmod() { /sbin/depmod "$@"; }
insmod() { /sbin/insmod "$@"; }
rmmod() { /sbin/rmmod "$@"; }
lsmod() { /sbin/lsmod "$@"; }
modinfo() { /sbin/modinfo "$@"; }

step() {
	printf '\n== %s\n' "$*"
}

fail() {
	printf '%s\n' "$*" >"${HALB_VM_REASON:-/run/halb-vm-reason}"
	printf 'FAIL: %s\n' "$*"
	exit 1
}

run() {
	echo "+ $*"
	"$@"
	rc=$?
	[ "$rc" -eq 0 ] || fail "'$*' exited with status $rc"
}

run_to() {
	file=$1
	shift
	echo "+ $* > $file"
	"$@" >"$file"
	rc=$?
	cat "$file"
	[ "$rc" -eq 0 ] || fail "'$*' exited with status $rc"
}

run_fails() {
	echo "+ $*   (must fail)"
	"$@" >"$OUT" 2>&1
	rc=$?
	cat "$OUT"
	[ "$rc" -ne 0 ] || fail "'$*' succeeded, want a failure"
	echo "(exit status $rc, as wanted)"
}

# jget reads the output of encoding/json with SetIndent("", "  "): one key
# or list item a line, two blanks a level.
jget() {
	awk -v want="$2" '
	function at(n,   p, i) {
		p = key[1]
		for (i = 2; i <= n; i++) p = p "." key[i]
		return p
	}
	{
		match($0, /^ */)
		depth = RLENGTH / 2
		line = substr($0, RLENGTH + 1)
		if (line ~ /^[]}]/) next
		if (match(line, /^"[^"]*": /)) {
			key[depth] = substr(line, 2, RLENGTH - 4)
			val = substr(line, RLENGTH + 1)
			p = at(depth)
		} else { # a list item
			key[depth] = "*"
			val = line
			p = at(depth - 1)
		}
		sub(/,$/, "", val)
		if (val == "{" || val == "[" || val == "[]" || val == "{}") next
		if (p != want) next
		if (val ~ /^".*"$/) val = substr(val, 2, length(val) - 2)
		print val
	}' "$1"
}

expect_json() {
	have=$(jget "$1" "$2" | tr '\n' ' ' | sed 's/ $//')
	if [ "$have" = "$3" ]; then
		echo "ok: $2 = $3"
	else
		fail "$2 is '$have', want '$3' (in $1)"
	fi
}

expect_json_has() {
	if jget "$1" "$2" | grep -qxF "$3"; then
		echo "ok: $2 has $3"
	else
		fail "$2 lacks $3: have '$(jget "$1" "$2" | tr '\n' ' ' | sed 's/ $//')' (in $1)"
	fi
}

loaded() {
	grep -q "^$1 " /proc/modules
}

expect_loaded() {
	loaded "$1" || fail "module $1 is not loaded; /proc/modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
	echo "ok: $1 loaded"
}

expect_not_loaded() {
	if loaded "$1"; then
		fail "module $1 is loaded, want it absent; /proc/modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
	fi
	echo "ok: $1 not loaded"
}

wait_until() {
	secs=$1 what=$2
	shift 2
	# Whole tenths of a second, counted: busybox sh has no $SECONDS.
	tries=$((secs * 10))
	until "$@" >/dev/null 2>&1; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || fail "$what: not within ${secs}s"
		sleep 0.1
	done
	echo "ok: $what"
}

HALB_LOG=/tmp/halb.log

halb_start() {
	echo "+ halb run $* > $HALB_LOG 2>&1 &"
	halb run "$@" >"$HALB_LOG" 2>&1 &
	HALB_PID=$!
}

halb_running() {
	kill -0 "$HALB_PID" 2>/dev/null
}

halb_stop() {
	halb_running || fail "halb (pid $HALB_PID) exited before it was stopped; its log: $(tail -n5 "$HALB_LOG" | tr '\n' ' ')"
	echo "+ kill -TERM $HALB_PID"
	kill -TERM "$HALB_PID"
	wait_until 10 "halb exits after SIGTERM" sh -c "! kill -0 $HALB_PID"
	wait "$HALB_PID"
	rc=$?
	echo "--- $HALB_LOG"
	cat "$HALB_LOG"
	echo "---"
	[ "$rc" -eq 0 ] || fail "halb run exited with status $rc after SIGTERM, want 0"
}

halb_wait() {
	secs=$1 what=$2 pattern=$3
	tries=$((secs * 10))
	until grep -qE "$pattern" "$HALB_LOG"; do
		if ! halb_running; then
			wait "$HALB_PID"
			rc=$?
			echo "--- $HALB_LOG"
			cat "$HALB_LOG"
			echo "---"
			fail "$what: halb exited with status $rc first; its log ends: $(tail -n2 "$HALB_LOG" | tr '\n' ' ')"
		fi
		tries=$((tries - 1))
		if [ "$tries" -le 0 ]; then
			cat "$HALB_LOG"
			fail "$what: not within ${secs}s"
		fi
		sleep 0.1
	done
	echo "ok: $what"
}

halb_run_fails() {
	echo "+ halb run $*   (must exit with status 1)"
	timeout 30 halb run "$@" >"$OUT" 2>&1
	rc=$?
	cat "$OUT"
	[ "$rc" -eq 1 ] || fail "'halb run $*' exited with status $rc, want 1"
	echo "(exit status 1, as wanted)"
}

expect_in() {
	grep -qE "$2" "$1" || fail "$3: no line of $1 matches '$2'"
	echo "ok: $3"
}

expect_not_in() {
	if grep -E "$2" "$1"; then
		fail "$3: $1 has the lines above, matching '$2'"
	fi
	echo "ok: $3"
}

loaded_modules() {
	cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ' | sed 's/ $//'
}

expect_ipvs_service() {
	svc=$1 sched=$2
	shift 2
	ipvsadm -Ln -t "$svc" >/tmp/ipvs-svc.txt 2>&1 || fail "ipvsadm -Ln lists no service TCP $svc: $(cat /tmp/ipvs-svc.txt)"
	grep -qE "^TCP  $svc $sched( |\$)" /tmp/ipvs-svc.txt ||
		fail "service TCP $svc is not scheduled by $sched: $(head -n4 /tmp/ipvs-svc.txt | tail -n1)"
	for rs in "$@"; do
		grep -qE "^  -> ${rs%:*} +Masq +${rs##*:} " /tmp/ipvs-svc.txt ||
			fail "service TCP $svc lacks real server ${rs%:*} Masq weight ${rs##*:}: $(grep -- '->' /tmp/ipvs-svc.txt | tail -n +2 | tr -s ' ' | tr '\n' ';')"
	done
	have=$(grep -c '^  -> [0-9]' /tmp/ipvs-svc.txt)
	[ "$have" -eq "$#" ] || fail "service TCP $svc has $have real servers, want $#"
	echo "ok: TCP $svc $sched -> $* (Masq, ADDR:PORT:WEIGHT)"
}

expect_ipvs_two() {
	expect_ipvs_service 192.0.2.10:80 wrr 198.51.100.10:8080:3 198.51.100.14:8080:1
	expect_ipvs_service 192.0.2.11:443 mh 198.51.100.10:8443:1 198.51.100.14:8443:2
}

ipvs_count() {
	ipvsadm -Ln | grep -c '^[A-Z][A-Z]*  '
}

modprobe_off() {
	echo /bin/false >/proc/sys/kernel/modprobe
	echo "kernel.modprobe = /bin/false: the kernel cannot load modules on demand"
}

modprobe_on() {
	echo /sbin/modprobe >/proc/sys/kernel/modprobe
	echo "kernel.modprobe = /sbin/modprobe (kmod)"
}

# Where halb looks for modprobe: kernel.modprobe, then these.
MODPROBES="/sbin/modprobe /usr/sbin/modprobe"

modprobe_hide() {
	modprobe_off
	mkdir -p /run/hidden
	for p in $MODPROBES; do
		if [ -e "$p" ] || [ -L "$p" ]; then
			run mv "$p" "/run/hidden/$(echo "$p" | tr / _)"
		fi
	done
	for p in $MODPROBES; do
		[ ! -e "$p" ] || fail "$p is still there"
	done
	echo "no modprobe: none of $MODPROBES exists"
}

modprobe_unhide() {
	for p in $MODPROBES; do
		h=/run/hidden/$(echo "$p" | tr / _)
		if [ -e "$h" ] || [ -L "$h" ]; then
			run mv "$h" "$p"
		fi
	done
}

# The network for NAT through IPVS; the addresses are those of
# /etc/halb/ipvs.yaml. Each backend has a /30 of its own to the director, so
# no bridge module is needed; both send their replies back through the
# director, as IPVS NAT requires.
CLIENT_NS=client
# shellcheck disable=SC2034 # for the scenarios
VIP=192.0.2.10
B1=198.51.100.10
B2=198.51.100.14

# veth_ns HOSTIF NS NSIF HOSTCIDR NSCIDR GATEWAY
veth_ns() {
	run ip netns add "$2"
	run ip link add "$1" type veth peer name "$3" netns "$2"
	run ip addr add "$4" dev "$1"
	run ip link set "$1" up
	run ip -n "$2" link set lo up
	run ip -n "$2" addr add "$5" dev "$3"
	run ip -n "$2" link set "$3" up
	run ip -n "$2" route add default via "$6"
}

nat_topology() {
	# veth is a module; load it by name so the topology also comes up with
	# modprobe_off.
	run modprobe veth
	veth_ns lan0 "$CLIENT_NS" cl0 203.0.113.1/24 203.0.113.2/24 203.0.113.1
	veth_ns be1 b1 eth0 198.51.100.9/30 "$B1/30" 198.51.100.9
	veth_ns be2 b2 eth0 198.51.100.13/30 "$B2/30" 198.51.100.13
	run sysctl -qw net.ipv4.ip_forward=1
}

backend_serve() {
	printf '#!/bin/sh\necho %s\n' "$3" >"/run/answer-$3"
	chmod +x "/run/answer-$3"
	echo "+ ip netns exec $1 nc -ll -p $2 -e /run/answer-$3 &"
	ip netns exec "$1" nc -ll -p "$2" -e "/run/answer-$3" </dev/null >/dev/null 2>&1 &
	# Wait until it listens: a connection attempt before that would be
	# refused and counted as a failure of whatever is under test.
	i=0
	until ip netns exec "$1" netstat -lnt 2>/dev/null | grep -q ":$2 "; do
		i=$((i + 1))
		[ "$i" -lt 100 ] || fail "backend $3 in netns $1 does not listen on port $2"
		sleep 0.1
	done
}

connect_many() {
	ip netns exec "$CLIENT_NS" sh -c '
		i=0
		while [ "$i" -lt "$1" ]; do
			nc -w 2 "$2" "$3" </dev/null || echo "connection $i failed"
			i=$((i + 1))
		done' connect_many "$@"
}
