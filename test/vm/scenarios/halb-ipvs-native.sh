# halb-ipvs-native: halb on a host with no modprobe at all and on-demand
# loading off loads the modules itself with finit_module(2), in the order
# modules.dep gives and with modules.softdep's soft dependencies: ip_vs
# needs libcrc32c, whose init function asks the crypto API for crc32c, and
# only modules.softdep ("libcrc32c pre: crc32c") says to load crc32c first
# (scenario ipvsadm-smoke shows a loader without it failing).
#
# arch: amd64 arm64 armhf
conf=/etc/halb/ipvs-two.yaml

step "no modprobe anywhere, on-demand loading off, nothing loaded"
modprobe_hide
[ "$(cat /proc/sys/kernel/modprobe)" = /bin/false ] || fail "kernel.modprobe is $(cat /proc/sys/kernel/modprobe), want /bin/false"
for m in crc32c_generic crc32c_intel libcrc32c nf_conntrack ip_vs ip_vs_wrr ip_vs_mh; do
	expect_not_loaded "$m"
done
echo "modules before halb: $(loaded_modules)"

step "halb run loads with finit_module, following modules.dep and modules.softdep"
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=2'
for m in crc32c_generic libcrc32c nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack ip_vs ip_vs_wrr ip_vs_mh; do
	expect_loaded "$m"
	expect_in "$HALB_LOG" "msg=\"loaded kernel module\" module=$m with=finit_module" "halb loaded $m with finit_module"
done
order=$(sed -n 's/.*msg="loaded kernel module" module=\([^ ]*\) with=finit_module.*/\1/p' "$HALB_LOG" | tr '\n' ' ')
echo "load order: $order"
case " $order" in
*" crc32c_generic "*"libcrc32c "*) echo "ok: crc32c_generic before libcrc32c" ;;
*) fail "crc32c_generic was not loaded before libcrc32c: $order" ;;
esac
echo "modules after halb: $(loaded_modules)"
run_to /tmp/ipvs.txt ipvsadm -Ln
[ "$(ipvs_count)" -eq 2 ] || fail "ipvsadm -Ln lists $(ipvs_count) services, want 2"
expect_ipvs_two
halb_stop
