# ipvsadm-smoke: the failure modes halb's module loading exists for, shown
# with ipvsadm. With the kernel's on-demand loading broken (kernel.modprobe =
# /bin/false, as on distributions that switch it off), IPVS works only once
# someone loads ip_vs and each service's scheduler module by name, and a
# loader that reads modules.dep alone cannot load ip_vs on this kernel.
svc=192.0.2.10:80

step "on-demand loading off"
modprobe_off
expect_not_loaded ip_vs

step "a loader that follows modules.dep alone cannot load ip_vs here"
# ip_vs needs libcrc32c, whose init asks the crypto API for crc32c; the
# crypto API then asks the kernel's modprobe for crypto-crc32c, which fails.
# Only modules.softdep ("libcrc32c pre: crc32c") says to load crc32c first:
# kmod reads it, busybox's modprobe (and a finit_module loader that reads
# modules.dep only) does not. Debian hosts usually have crc32c loaded
# already (ext4 uses it); this guest has not.
run_fails busybox modprobe ip_vs
grep -q libcrc32c "$OUT" || fail "busybox modprobe ip_vs failed, but not on libcrc32c"
expect_not_loaded libcrc32c
expect_not_loaded ip_vs

step "ipvsadm loads ip_vs itself, but the kernel cannot load the scheduler"
# When the IPVS family is missing, ipvsadm runs `/sbin/modprobe ip_vs`
# itself; nothing loads ip_vs_wrr, and service creation fails.
run_fails ipvsadm -A -t "$svc" -s wrr
grep -q "Scheduler or persistence engine not found" "$OUT" ||
	fail "ipvsadm failed, but not with 'Scheduler or persistence engine not found'"
expect_loaded ip_vs
expect_loaded crc32c_generic
expect_not_loaded ip_vs_wrr

step "modprobe ip_vs_wrr: the service is created"
run modprobe ip_vs_wrr
run ipvsadm -A -t "$svc" -s wrr
run ipvsadm -a -t "$svc" -r 198.51.100.10:8080 -m -w 2
run_to /tmp/ipvs.txt ipvsadm -Ln
grep -q "^TCP  $svc wrr" /tmp/ipvs.txt || fail "ipvsadm -Ln does not list TCP $svc wrr"
grep -q -- "-> 198.51.100.10:8080 *Masq *2 " /tmp/ipvs.txt ||
	fail "ipvsadm -Ln does not list real server 198.51.100.10:8080 Masq weight 2"

step "on-demand loading on: the kernel loads the scheduler a service names"
modprobe_on
expect_not_loaded ip_vs_sh
run ipvsadm -A -t 192.0.2.10:443 -s sh
expect_loaded ip_vs_sh
