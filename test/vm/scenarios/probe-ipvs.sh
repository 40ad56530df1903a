# probe-ipvs: what `halb probe --json` says about IPVS on a kernel that ships
# it as modules (Debian's), before and after the modules are loaded, and
# whether the probe itself loads any.
#
# arch: amd64 arm64 armhf
rel=$(uname -r)
all_schedulers="dh fo lblc lblcr lc mh nq ovf rr sed sh wlc wrr"

step "config: halb check accepts /etc/halb/ipvs.yaml"
run halb check -c /etc/halb/ipvs.yaml

step "nothing loaded, on-demand loading off: the probe sees modules it can load"
modprobe_off
expect_not_loaded ip_vs
run_to /tmp/p1.json halb probe --json -c /etc/halb/ipvs.yaml
expect_json /tmp/p1.json kernel_release "$rel"
expect_json /tmp/p1.json ipvs.loaded false
expect_json /tmp/p1.json ipvs.builtin false
expect_json /tmp/p1.json ipvs.loadable true
expect_json /tmp/p1.json ipvs.modules_dir "/lib/modules/$rel"
expect_json /tmp/p1.json ipvs.schedulers "$all_schedulers"
expect_json /tmp/p1.json ipvs.loaded_schedulers ""
expect_json /tmp/p1.json ipvs.problems ""
expect_json /tmp/p1.json ipvs.family.supported false
expect_json /tmp/p1.json ipvs_needed.*.module "ip_vs ip_vs_wrr"
expect_json /tmp/p1.json ipvs_needed.*.state "loadable loadable"
expect_json /tmp/p1.json decision.mode ipvs
expect_json /tmp/p1.json decision.warnings ""
# The probe asked for the IPVS generic netlink family; with kernel.modprobe
# failing, that loaded nothing.
expect_not_loaded ip_vs

step "on-demand loading on: the probe's family lookup makes the kernel load ip_vs"
modprobe_on
run_to /tmp/p2.json halb probe --json -c /etc/halb/ipvs.yaml
# loaded describes the host before the lookup; family the host after it.
expect_json /tmp/p2.json ipvs.loaded false
expect_json /tmp/p2.json ipvs.family.supported true
expect_loaded ip_vs
# A scheduler is loaded on demand only when a service asks for it.
expect_not_loaded ip_vs_wrr

step "modprobe -a ip_vs ip_vs_wrr: the probe sees them loaded"
modprobe_off
run modprobe -a ip_vs ip_vs_wrr
expect_loaded ip_vs_wrr
run_to /tmp/p3.json halb probe --json -c /etc/halb/ipvs.yaml
expect_json /tmp/p3.json ipvs.family.supported true
expect_json /tmp/p3.json ipvs.loaded true
expect_json /tmp/p3.json ipvs.loaded_schedulers wrr
expect_json /tmp/p3.json ipvs.schedulers "$all_schedulers"
expect_json /tmp/p3.json ipvs_needed.*.state "loaded loaded"
