# halb-ipvs-missing-module: a module halb needs is not on the host. `halb
# run` must exit with status 1, say which module, which kernel and what to
# do, and leave IPVS with no service at all.
#
# First crc32c, which only modules.softdep asks for (libcrc32c's init
# function needs it): without it ip_vs cannot load, and halb's error must
# name crc32c rather than send the user to depmod. Then ip_vs_wrr, a
# service's scheduler: ip_vs_mh, which the other service uses, loads, but
# nothing is programmed while ip_vs_wrr is missing. "Not on the host" two
# ways, each with kmod's modprobe and without any modprobe (finit_module):
# the file deleted while modules.dep still lists it (a damaged install), and
# then also gone from modules.dep after depmod (a kernel that does not ship
# it).
conf=/etc/halb/ipvs-two.yaml
rel=$(uname -r)
dir=/lib/modules/$rel
wrr=$(grep -o '^[^:]*/ip_vs_wrr\.ko[^:]*' "$dir/modules.dep")
crc=$(grep -o '^[^:]*/crc32c[-_][a-z]*\.ko[^:]*' "$dir/modules.dep")

# refused WHAT MODULE TEXT: halb run fails naming MODULE, the kernel
# release and TEXT (a part of the message), and IPVS holds no service.
refused() {
	halb_run_fails -c "$conf"
	grep -qF "load kernel module $2" "$OUT" || fail "$1: halb's error does not name $2"
	grep -qF "for kernel $rel" "$OUT" || fail "$1: halb's error does not name kernel $rel"
	grep -qF "$3" "$OUT" || fail "$1: halb's error does not say '$3'"
	expect_not_loaded "$2"
	if loaded ip_vs; then
		run_to /tmp/ipvs.txt ipvsadm -Ln
		[ "$(ipvs_count)" -eq 0 ] || fail "$1: ipvsadm -Ln lists $(ipvs_count) services after the failure, want none"
	fi
	echo "ok: $1: refused, no service programmed"
}

step "no modprobe, crc32c's modules gone: halb names the soft dependency"
modprobe_hide
mkdir -p /run/aside
for f in $crc; do
	run mv "$dir/$f" /run/aside/
done
refused "crc32c gone" libcrc32c "modules.softdep says to load crc32c ("
# The warnings before it may well mention depmod, about crc32c's files.
if grep '^halb: ' "$OUT" | grep -q depmod; then
	fail "halb's error suggests depmod, which cannot help libcrc32c"
fi
expect_not_loaded ip_vs
for f in $crc; do
	run mv "/run/aside/${f##*/}" "$dir/$f"
done

step "ip_vs_wrr's file deleted, modules.dep still lists it: without modprobe"
run rm "$dir/$wrr"
grep -q "ip_vs_wrr.ko:" "$dir/modules.dep" || fail "modules.dep no longer lists ip_vs_wrr"
refused "file gone, finit_module" ip_vs_wrr "$wrr: modules.dep lists it but there is no such file"
expect_in "$OUT" 'nothing changed in IPVS' "halb says it changed nothing"

step "the same with modprobe"
modprobe_unhide
refused "file gone, modprobe" ip_vs_wrr "modules.dep lists $dir/$wrr but there is no such file"

step "depmod: modules.dep no longer lists ip_vs_wrr either; with modprobe"
run depmod "$rel"
if grep -q "ip_vs_wrr" "$dir/modules.dep"; then
	fail "depmod left ip_vs_wrr in modules.dep"
fi
refused "not shipped, modprobe" ip_vs_wrr "not found in directory"

step "the same without modprobe"
modprobe_hide
refused "not shipped, finit_module" ip_vs_wrr "modules.dep: not listed"
