# halb-ipvs-flush: halb keeps IPVS as configured. After `ipvsadm -C` it
# restores its services at the next resync (every 10 s); a service someone
# added by hand, for a VIP halb's configuration does not name, is not
# halb's: it survives a restart of halb untouched.
conf=/etc/halb/ipvs-two.yaml
hand=192.0.2.99:8000

step "halb run programs the services"
modprobe_off
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=2'
run_to /tmp/before.txt ipvsadm -Ln
expect_ipvs_two

step "ipvsadm -C: halb restores both services within its resync interval"
t0=$(cut -d' ' -f1 /proc/uptime)
run ipvsadm -C
[ "$(ipvs_count)" -eq 0 ] || fail "ipvsadm -C left $(ipvs_count) services"
# shellcheck disable=SC2016 # for the inner sh
wait_until 25 "both services and their 4 real servers back" sh -c \
	'[ "$(ipvsadm -Ln | grep -c "^TCP  ")" -eq 2 ] && [ "$(ipvsadm -Ln | grep -c "^  -> [0-9]")" -eq 4 ]'
t1=$(cut -d' ' -f1 /proc/uptime)
echo "restored $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s after the flush"
run_to /tmp/after.txt ipvsadm -Ln
run diff /tmp/before.txt /tmp/after.txt
expect_ipvs_two
[ "$(grep -c 'msg="ipvs service added"' "$HALB_LOG")" -eq 2 ] && [ "$(grep -c 'restored' "$HALB_LOG")" -eq 2 ] ||
	fail "halb logged 'added' $(grep -c 'msg="ipvs service added"' "$HALB_LOG") and 'restored' $(grep -c 'restored' "$HALB_LOG") times, want 2 and 2 (added at start, restored after the flush)"
echo "ok: halb logged restoring both services"

step "a service added by hand survives a restart of halb untouched"
run modprobe ip_vs_rr # on-demand loading is off
run ipvsadm -A -t "$hand" -s rr
run ipvsadm -a -t "$hand" -r 198.51.100.10:8000 -m -w 7
run_to /tmp/hand1.txt ipvsadm -Ln -t "$hand"
halb_stop
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed' again" 'msg="services programmed" datapath=ipvs services=2'
run_to /tmp/hand2.txt ipvsadm -Ln -t "$hand"
run diff /tmp/hand1.txt /tmp/hand2.txt
expect_not_in "$HALB_LOG" "${hand%:*}" "halb's log does not mention $hand"
[ "$(ipvs_count)" -eq 3 ] || fail "ipvsadm -Ln lists $(ipvs_count) services, want 3"
expect_ipvs_two
halb_stop
