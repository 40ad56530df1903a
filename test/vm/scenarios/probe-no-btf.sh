# probe-no-btf: datapath.mode auto on Debian's kernel, which has BTF, and on
# the same kernel with /sys/kernel/btf hidden, as on a Raspberry Pi kernel.
# No -c: /etc/halb/halb.yaml does not exist, so the probe judges auto.

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
run umount /sys/kernel/btf
[ -f /sys/kernel/btf/vmlinux ] || fail "/sys/kernel/btf/vmlinux did not come back after umount"
