# probe-no-btf: datapath.mode auto on Debian's kernel, which has BTF, and on
# the same kernel with /sys/kernel/btf hidden, as on a Raspberry Pi kernel:
# the probe picks ipvs, and so does `halb run`, which then programs the
# services. No -c for the probe: /etc/halb/halb.yaml does not exist, so it
# judges auto.

step "Debian's kernel has BTF: auto picks xdp"
[ -f /sys/kernel/btf/vmlinux ] || fail "no /sys/kernel/btf/vmlinux on Debian's kernel"
run_to /tmp/btf.json halb probe --json
expect_json /tmp/btf.json configured_mode auto
expect_json /tmp/btf.json btf.present true
expect_json /tmp/btf.json xdp.supported true
expect_json /tmp/btf.json decision.mode xdp
expect_json /tmp/btf.json decision.reason "xdp: BTF present, XDP loads"

step "an empty directory over /sys/kernel/btf: auto picks ipvs"
mkdir -p /tmp/empty
run mount --bind /tmp/empty /sys/kernel/btf
[ ! -e /sys/kernel/btf/vmlinux ] || fail "/sys/kernel/btf/vmlinux still visible after the bind mount"
run_to /tmp/nobtf.json halb probe --json
expect_json /tmp/nobtf.json btf.present false
expect_json /tmp/nobtf.json decision.mode ipvs
expect_json /tmp/nobtf.json decision.reason "ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"
expect_json /tmp/nobtf.json ipvs.loadable true

step "halb run with datapath.mode auto and no BTF: ipvs, services programmed"
modprobe_off
export HALB_DATAPATH_MODE=auto # over /etc/halb/ipvs-two.yaml's ipvs
halb_start -c /etc/halb/ipvs-two.yaml
unset HALB_DATAPATH_MODE
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=2'
expect_in "$HALB_LOG" 'msg="halb starting" .* datapath=ipvs reason="ipvs: no kernel BTF at /sys/kernel/btf/vmlinux"' \
	"halb chose ipvs for want of BTF"
expect_ipvs_two
halb_stop
run umount /sys/kernel/btf
[ -f /sys/kernel/btf/vmlinux ] || fail "/sys/kernel/btf/vmlinux did not come back after umount"
