# halb-ipvs-modules: `halb run` with datapath.mode ipvs on a kernel that
# cannot load modules on demand (kernel.modprobe = /bin/false) loads ip_vs
# and the scheduler modules its services use itself, here with kmod's
# modprobe as on Debian, and programs both services of
# /etc/halb/ipvs-two.yaml. Started again, it finds everything in place and
# changes nothing.
#
# arch: amd64 arm64 armhf
conf=/etc/halb/ipvs-two.yaml
# What ipvs/datapath.go logs for each change it makes, and the module
# loader for each module it loads.
changes='msg="(ipvs service (added|changed|removed|existed before)|ipvs backend (added|changed|removed)|loaded kernel module)'

step "on-demand loading off, nothing of IPVS loaded"
modprobe_off
for m in ip_vs ip_vs_wrr ip_vs_mh; do
	expect_not_loaded "$m"
done
echo "modules before halb: $(loaded_modules)"

step "halb run loads ip_vs, ip_vs_wrr and ip_vs_mh and programs the services"
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=2'
for m in ip_vs ip_vs_wrr ip_vs_mh; do
	expect_loaded "$m"
	expect_in "$HALB_LOG" "msg=\"loaded kernel module\" module=$m with=/sbin/modprobe" "halb loaded $m with /sbin/modprobe"
done
echo "modules after halb: $(loaded_modules)"
run_to /tmp/ipvs1.txt ipvsadm -Ln
[ "$(ipvs_count)" -eq 2 ] || fail "ipvsadm -Ln lists $(ipvs_count) services, want 2"
expect_ipvs_two
expect_in "$HALB_LOG" 'msg="ipvs service added" service="web \(192.0.2.10:80/tcp\)" scheduler=wrr' "halb logged adding web"
expect_in "$HALB_LOG" 'msg="ipvs service added" service="api \(192.0.2.11:443/tcp\)" scheduler=mh' "halb logged adding api"
halb_stop
[ "$(ipvs_count)" -eq 2 ] || fail "after SIGTERM ipvsadm -Ln lists $(ipvs_count) services, want both kept"
echo "ok: the services stay after halb stops"

step "second start: everything is in place, halb changes nothing"
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed' again" 'msg="services programmed" datapath=ipvs services=2'
run_to /tmp/ipvs2.txt ipvsadm -Ln
run diff /tmp/ipvs1.txt /tmp/ipvs2.txt
echo "ok: ipvsadm -Ln is the same as after the first start"
expect_not_in "$HALB_LOG" "$changes" "no change and no module load logged on the second start"
halb_stop
