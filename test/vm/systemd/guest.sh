#!/bin/bash
# guest.sh DEB — run inside the systemd guest systemd.sh boots: install
# halb's package, check what installing does and does not do, run halb
# under its unit, then purge. One line a check:
#
#   HALB-SYSTEMD: PASS NAME | FAIL NAME reason | INFO NAME text
#
# Every check runs even when one before it failed, so that one run shows
# all that is wrong; the exit status is 1 when any failed. Everything here
# happens in the guest's own network namespace, with documentation
# addresses only:
#
#   client netns  cl0 203.0.113.2/24 ── lan0 203.0.113.1/24 (+ VIP 192.0.2.10;
#                                         VMAC vrrp.21.N with 192.0.2.20)
#   b1 netns     eth0 198.51.100.10/30 ── be1 198.51.100.9/30 (VIP on b1's lo: DR)
#   client cb0 198.51.100.129/30 ── b1 cb1 198.51.100.130/30
#
# b1 answers the client over cb1: its answers come from the VIP, which the
# director holds too, so the director would drop them as martians.
set -u
deb=$1
failed=0
pass() { echo "HALB-SYSTEMD: PASS $1"; }
fail() {
	echo "HALB-SYSTEMD: FAIL $1 ${*:2}"
	failed=1
}
info() { echo "HALB-SYSTEMD: INFO $1 ${*:2}"; }
# check NAME CMD...: PASS when CMD exits 0, else FAIL with its output.
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		pass "$name"
	else
		fail "$name" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"
	fi
}
# wait_for SECS CMD...: run CMD every 0.2 s until it succeeds.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || return 1
		sleep 0.2
	done
}

# snapshot: what installing must not change.
snapshot() {
	ip -d link
	ip addr
	ls -R /sys/fs/bpf
}

# topology: the namespaces and veths of the picture above.
topology() {
	ip netns add cl && ip netns add b1 &&
		ip link add lan0 type veth peer name cl0 netns cl &&
		ip link add be1 type veth peer name eth0 netns b1 &&
		ip addr add 203.0.113.1/24 dev lan0 && ip link set lan0 up &&
		ip addr add 198.51.100.9/30 dev be1 && ip link set be1 up &&
		ip -n cl addr add 203.0.113.2/24 dev cl0 && ip -n cl link set cl0 up && ip -n cl link set lo up &&
		ip -n cl route add default via 203.0.113.1 &&
		ip -n b1 addr add 198.51.100.10/30 dev eth0 && ip -n b1 link set eth0 up && ip -n b1 link set lo up &&
		ip -n b1 addr add 192.0.2.10/32 dev lo &&
		ip link add cb0 netns cl type veth peer name cb1 netns b1 &&
		ip -n cl addr add 198.51.100.129/30 dev cb0 && ip -n cl link set cb0 up &&
		ip -n b1 addr add 198.51.100.130/30 dev cb1 && ip -n b1 link set cb1 up &&
		ip -n b1 route add 203.0.113.0/24 via 198.51.100.129 dev cb1 &&
		ip netns exec b1 sh -c 'echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore && echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce' &&
		mkdir -p /srv/b1 && echo b1 >/srv/b1/index.html &&
		ip netns exec b1 busybox httpd -p 80 -h /srv/b1
}

# config: one VRRP instance with a notify script and a tracked process,
# and one DR service, as the operator would write /etc/halb/halb.yaml.
config() {
	cat >/etc/halb/halb.yaml <<'EOF'
log:
  level: info
  format: text
control:
  socket: /run/halb/halb.sock
  metrics: ""
datapath:
  mode: xdp
  interfaces: [lan0, be1]
vrrp:
  instances:
    - name: VI_GUEST
      interface: lan0
      vrid: 20
      version: 3
      priority: 100
      advert_interval: 100ms
      virtual_ips: [192.0.2.10/32]
      notify_master: [/etc/halb/notify.sh, master]
      track_processes:
        - {name: sleep, min_count: 1, weight: 0}
    - name: VI_VMAC
      interface: lan0
      vrid: 21
      version: 3
      priority: 100
      advert_interval: 100ms
      use_vmac: true
      virtual_ips: [192.0.2.20/32]
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    protocol: tcp
    forward: dr
    backends:
      - address: 198.51.100.10
        port: 80
    health_check:
      type: tcp
      interval: 1s
      timeout: 500ms
EOF
	cat >/etc/halb/notify.sh <<'EOF'
#!/bin/sh
# Written by the test: a notify script that keeps state in a file.
mkdir -p /var/lib/halb-test && echo "$1" >/var/lib/halb-test/state
EOF
	chmod 0700 /etc/halb/notify.sh
}

# connect: one HTTP request from the client to the VIP, answered by b1
# (bash's /dev/tcp: busybox's wget crashes in this minimal root).
connect() {
	ip netns exec cl timeout 5 bash -c 'exec 3<>/dev/tcp/192.0.2.10/80 &&
		printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3' | tail -n 1 | grep -qx b1
}
# vmac_holds_vip: 192.0.2.20 is on a macvlan with the VRRP MAC of vrid 21.
vmac_holds_vip() {
	local dev
	dev=$(ip -o addr show to 192.0.2.20/32 | awk '{ print $2 }')
	[[ -n $dev ]] && ip -d link show dev "$dev" | grep -q macvlan &&
		ip link show dev "$dev" | grep -q 'link/ether 00:00:5e:00:01:15'
}

before=$(snapshot)
check dpkg-install dpkg -i "$deb"
after=$(snapshot)
if [[ $before == "$after" ]]; then
	pass install-changes-no-link-address-or-pin
else
	fail install-changes-no-link-address-or-pin "$(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ')"
fi
check install-does-not-enable test "$(systemctl is-enabled halb 2>&1)" = disabled
check install-does-not-start test "$(systemctl is-active halb 2>&1)" = inactive

check topology topology
config
# The tracked process: halb's instance is FAULT without one.
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
check start-active systemctl start halb
check type-notify test "$(systemctl show -P Type halb)" = notify
check vip-on-lan0 wait_for 15 sh -c 'ip -o addr show dev lan0 | grep -q "192.0.2.10/32"'
check vmac-holds-vip wait_for 15 vmac_holds_vip
check track-process-counted wait_for 10 sh -c 'halb status | grep -q "process sleep: 1 running"'
check notify-script-writes-file wait_for 10 grep -qx master /var/lib/halb-test/state
check connection-through-service wait_for 20 connect
if [[ $failed == 1 ]]; then
	info status "$(halb status 2>&1 | tr '\n' '|')"
	info journal "$(journalctl -u halb -o cat | tail -n 15 | tr '\n' '|')"
fi
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
# log.format changes at the next restart only: the reload warns so.
sed -i 's/format: text/format: json/' /etc/halb/halb.yaml
check reload systemctl reload halb
check reload-logged wait_for 10 sh -c "journalctl -u halb --since '$since' -o cat | grep -q 'msg=\"config reloaded\"'"
check active-after-reload test "$(systemctl is-active halb)" = active

# journalctl -p warning: priorities 0..4 alone.
bad=$(journalctl -u halb -p warning -o json --output-fields=PRIORITY,MESSAGE |
	grep -v '"PRIORITY":"[0-4]"' | head -n 3)
if [[ -z $bad ]]; then
	pass journal-warning-priorities
else
	fail journal-warning-priorities "$bad"
fi
check journal-warning-shown sh -c 'journalctl -u halb -p warning -o cat | grep -q "changes at the next restart"'
info journal-warnings "$(journalctl -u halb -p warning -o cat | wc -l) lines: $(journalctl -u halb -p warning -o cat | head -n 3 | tr '\n' '|')"
check journal-has-info-lines sh -c 'journalctl -u halb -p info -o cat | grep -q .'

exposure=$(systemd-analyze security --offline=true /usr/lib/systemd/system/halb.service 2>&1 | tail -n 1)
info exposure "$exposure"
check exposure-below-5 sh -c "echo '$exposure' | awk '{ for (i = 1; i <= NF; i++) if (\$i ~ /^[0-9.]+\$/) { exit !(\$i < 5.0) } exit 1 }'"

check stop systemctl stop halb
check vip-gone-after-stop wait_for 10 sh -c '! ip -o addr show dev lan0 | grep -q "192.0.2.10/32"'
# An operator enables halb; purging takes the link enabling made away
# (postinst recorded it for deb-systemd-helper, postrm purges it), so that
# no multi-user.target.wants/halb.service is left dangling.
check enable systemctl enable halb
check enable-makes-link test -L /etc/systemd/system/multi-user.target.wants/halb.service
check purge dpkg --purge halb
check purge-removes-binary test ! -e /usr/sbin/halb
check purge-removes-unit test ! -e /usr/lib/systemd/system/halb.service
check purge-removes-conffile test ! -e /etc/halb/halb.yaml
check purge-keeps-users-file test -x /etc/halb/notify.sh
check purge-removes-enable-link sh -c 'links=$(find /etc/systemd -name halb.service); test -z "$links" || { echo "$links"; false; }'
exit "$failed"
