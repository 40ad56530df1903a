#!/usr/bin/env bash
# build.sh [HALB_BINARY] — build the kernel and initramfs that run.sh boots.
#
# HALB_VM_ARCH names the guest's Debian architecture: amd64 (the default),
# arm64 or armhf (32-bit Raspberry Pi OS's). HALB_BINARY must be a halb built
# for it; for armhf, with GOARM=6, the build every Pi from the Zero up runs.
#
# halb's IPVS data path has to be tested against a real kernel whose IPVS is
# made of loadable modules, as on Raspberry Pi OS and Debian. The host's own
# kernel cannot be used for that (no loadable modules here), so this script
# takes Debian's kernel package as it is shipped and builds a small initramfs
# around it:
#
#   /init                 test/vm/init: mounts, lo up, runs halb.scenario=NAME
#   /scenarios/*.sh       test/vm/scenarios/: lib.sh and one script a scenario
#   /lib/modules/<rel>/   ip_vs, its schedulers, veth and what they need
#                         (the closure over modules.dep and modules.softdep),
#                         with the modules.* files depmod wrote for just these
#   /bin, /sbin, ...      busybox-static and its applets
#   /bin/kmod             kmod as /sbin/modprobe, insmod, lsmod..., as on
#                         Debian: busybox's modprobe ignores modules.softdep,
#                         and ip_vs needs libcrc32c, whose softdep on crc32c
#                         only kmod honours
#   /usr/sbin             halb, ipvsadm and (amd64 only) iproute2's ip
#   /lib, /lib64          the shared libraries of kmod, ipvsadm and ip
#   /etc/halb/NAME.yaml   test/vm/halb-NAME.yaml: ipvs.yaml, ipvs-two.yaml,
#                         ipvs-shapes.yaml
#
# On amd64, kmod, ipvsadm and ip are the host's, with the libraries ldd
# names. For another architecture they come from Debian's packages for it
# (dpkg --add-architecture), with the libraries their ELF headers name; ip is
# left out there, and so are the scenarios that need it (see run.sh).
#
# Outputs, under the cache directory ($HALB_VM_CACHE, else test/vm/.cache):
#   ARCH/vmlinuz  ARCH/initramfs.cpio.zst  ARCH/kernel-release
# with the work behind them in ARCH/ too, and the .deb files in debs/.
#
# Idempotent: host tools are installed only when missing; the .deb files are
# downloaded once and kept; the kernel's module subset is extracted again only
# when the package or the module list changes. Without HALB_BINARY it builds
# halb from this checkout (CGO_ENABLED=0, so it runs on busybox's bare root).
#
# Exit status 3 means a prerequisite could not be had (a tool would not
# install, a package would not download): the Go test skips on that outside
# CI and fails in CI. Any other failure is a bug here.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${HALB_VM_CACHE:-$here/.cache}
arch=${HALB_VM_ARCH:-amd64} # Debian's architecture name
out=$cache/$arch
# The guest's own copies of kmod and ipvsadm, and the libraries they load,
# when the guest's architecture is not the host's.
guest_packages=(kmod liblzma5 libssl3 libzstd1 ipvsadm libnl-3-200 libnl-genl-3-200
	libpopt0 libc6)

# Modules the initramfs carries, with everything modules.dep says they need.
# ip_vs_ftp and ip_vs_pe_sip are left out: they are not schedulers, and they
# would pull in nf_nat and the conntrack helpers.
modules=(ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_fo ip_vs_ovf ip_vs_lblc
	ip_vs_lblcr ip_vs_dh ip_vs_sh ip_vs_mh ip_vs_sed ip_vs_nq veth)
# The stamp that says the staged kernel is up to date; bump it when the way
# the closure is computed changes.
stage_version=2

# flavour is the kernel's: linux-image-$flavour is Debian's kernel for the
# architecture (armhf's is armmp, for the multiplatform ARMv7 boards QEMU's
# virt machine is one of).
case $arch in
amd64) qemu=qemu-system-x86_64=qemu-system-x86 goarch=amd64 machine='Advanced Micro Devices X86-64' flavour=amd64 ;;
arm64) qemu=qemu-system-aarch64=qemu-system-arm goarch=arm64 machine=AArch64 flavour=arm64 ;;
armhf) qemu=qemu-system-arm=qemu-system-arm goarch=arm machine=ARM flavour=armmp ;;
*) echo "build.sh: HALB_VM_ARCH=$arch: want amd64, arm64 or armhf" >&2; exit 2 ;;
esac

# log, die, unavailable, now, since, apt_update, need_tools.
. "$here/host.sh"

# load_candidates PACKAGE:ARCH...: the versions apt would install, into
# candidates, with one apt-cache policy: each call reads all of apt's lists,
# which takes seconds.
declare -A candidates
load_candidates() {
	local name ver
	while read -r name ver; do
		# The host's own architecture goes without its name.
		[[ $name == *:* ]] || name+=":$(dpkg --print-architecture)"
		candidates[$name]=$ver
	done < <(apt-cache policy "$@" 2>/dev/null |
		awk '/^[^ ].*:$/ { n = $0; sub(/:$/, "", n) } $1 == "Candidate:" && $2 != "(none)" { print n, $2 }')
}

# candidate PACKAGE:ARCH: the version apt would install, or nothing.
candidate() {
	[[ -n ${candidates[$1]:-} ]] || load_candidates "$1"
	echo "${candidates[$1]:-}"
}

# fetch PACKAGE [ARCH]: print the path of the .deb of PACKAGE for ARCH
# (default $arch) in the cache, downloading the candidate version when it is
# not there yet. Offline, the newest cached .deb of PACKAGE does.
fetch() {
	local pkg=$1 arch=${2:-$arch} ver deb
	mkdir -p "$cache/debs"
	ver=$(candidate "$pkg:$arch")
	if [[ -z $ver ]]; then
		apt_update
		ver=$(candidate "$pkg:$arch")
	fi
	if [[ -z $ver ]]; then
		deb=$(find "$cache/debs" -maxdepth 1 -name "${pkg}_*_$arch.deb" | sort -V | tail -n1)
		[[ -n $deb ]] || unavailable "no package $pkg in apt's lists and none cached"
		log "using cached $deb: apt knows no $pkg"
		echo "$deb"
		return
	fi
	# apt-get download names the file after the version, epoch as %3a.
	deb=$cache/debs/${pkg}_${ver/:/%3a}_$arch.deb
	if [[ ! -s $deb ]]; then
		local t
		t=$(now)
		log "download $pkg:$arch $ver"
		(cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg:$arch=$ver" >&2) ||
			unavailable "apt-get download $pkg:$arch=$ver failed"
		[[ -s $deb ]] || die "apt-get download $pkg:$arch=$ver did not write $deb"
		log "downloaded $(du -h "$deb" | cut -f1) in $(since "$t")"
		# Older versions of the package are of no more use.
		find "$cache/debs" -maxdepth 1 -name "${pkg}_*_$arch.deb" ! -name "$(basename "$deb")" -delete
	fi
	echo "$deb"
}

# kernel_package: the versioned image package linux-image-$flavour depends
# on (linux-image-amd64 is a metapackage), e.g. linux-image-6.1.0-56-amd64.
kernel_package() {
	local pkg
	if [[ -n ${HALB_VM_KERNEL_PACKAGE:-} ]]; then
		echo "$HALB_VM_KERNEL_PACKAGE"
		return
	fi
	pkg=$(apt-cache depends "linux-image-$flavour:$arch" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }')
	if [[ -z $pkg ]]; then
		apt_update
		pkg=$(apt-cache depends "linux-image-$flavour:$arch" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }')
	fi
	if [[ -z $pkg ]]; then
		# Offline: the newest image package already cached.
		pkg=$(find "$cache/debs" -maxdepth 1 -name "linux-image-[0-9]*-${flavour}_*.deb" -printf '%f\n' 2>/dev/null |
			sed 's/_.*//' | sort -V | tail -n1)
	fi
	[[ -n $pkg ]] || unavailable "cannot resolve linux-image-$flavour to a versioned kernel package"
	echo "$pkg"
}

# stage_kernel DEB: extract vmlinuz and the module subset into $kernel,
# unless that was done already for this package and module list.
stage_kernel() {
	local deb=$1 stamp kver full t
	stamp="$stage_version $(basename "$deb") ${modules[*]}"
	if [[ -f $kernel/.stamp && $(cat "$kernel/.stamp") == "$stamp" ]]; then
		return
	fi
	t=$(now)
	rm -rf "$kernel" "$kernel.tmp"
	full=$kernel.tmp
	mkdir -p "$full"
	dpkg-deb -x "$deb" "$full"
	kver=$(ls -1 "$full/lib/modules")
	[[ $(wc -w <<<"$kver") -eq 1 ]] || die "$deb holds $(wc -w <<<"$kver") module trees, want one"
	# The package ships no modules.dep: the postinst runs depmod. depmod
	# reads the modules of any architecture.
	depmod -b "$full" "$kver"

	# The closure: a modules.dep line lists all of a module's dependencies,
	# transitively; each of them is visited too for its softdeps.
	# modules.softdep names the modules a module asks for at run time
	# (libcrc32c needs crc32c, through the crypto API); its names may be
	# aliases.
	local dir=$full/lib/modules/$kver files=() queue=("${modules[@]}") seen=" " m line soft f
	while ((${#queue[@]})); do
		m=${queue[0]}
		queue=("${queue[@]:1}")
		[[ $seen == *" $m "* ]] && continue
		seen+="$m "
		line=$(awk -v m="$m" '{ f = $1; sub(/:$/, "", f); n = f; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n) } n == m { print; exit }' "$dir/modules.dep")
		if [[ -z $line ]]; then
			# A softdep name that is only an alias is fine; a module asked
			# for by name is not.
			[[ " ${modules[*]} " != *" $m "* ]] || die "$(basename "$deb"): modules.dep has no $m"
			continue
		fi
		# "kernel/x/a.ko: kernel/y/b.ko kernel/z/c.ko"; split on purpose.
		# shellcheck disable=SC2206
		files+=(${line/:/})
		for f in ${line/:/}; do
			f=${f##*/}
			f=${f%%.ko*}
			queue+=("${f//-/_}")
		done
		soft=$(awk -v m="$m" '$1 == "softdep" && $2 == m { for (i = 3; i <= NF; i++) if ($i != "pre:" && $i != "post:") print $i }' "$dir/modules.softdep")
		for f in $soft; do
			# An alias stands for every module that has it (crc32c:
			# crc32c_generic and crc32c_intel), as for modprobe.
			mapfile -t -O "${#queue[@]}" queue < <(awk -v a="$f" '$1 == "alias" && $2 == a { print $3 }' "$dir/modules.alias")
			queue+=("${f//-/_}")
		done
	done
	mkdir -p "$kernel/lib/modules/$kver"
	(cd "$dir" && printf '%s\n' "${files[@]}" | sort -u | cpio -pdm --quiet "$kernel/lib/modules/$kver")
	cp "$dir/modules.builtin" "$dir/modules.builtin.modinfo" "$dir/modules.order" "$kernel/lib/modules/$kver/"
	# arm64's vmlinuz is a plain Image, which QEMU boots as it is.
	cp "$full/boot/vmlinuz-$kver" "$kernel/vmlinuz"
	cp "$full/boot/config-$kver" "$kernel/config"
	echo "$kver" >"$kernel/release"
	rm -rf "$full"
	# modules.dep, .softdep and .alias (the kernel's on-demand requests name
	# aliases: net-pf-16-proto-16-family-IPVS, crypto-crc32c) for just the
	# files carried.
	depmod -b "$kernel" "$kver"
	echo "$stamp" >"$kernel/.stamp"
	log "kernel $kver: $(printf '%s\n' "${files[@]}" | sort -u | wc -l) module files staged in $(since "$t")"
}

# copy_binary SRC DEST_DIR: a dynamically linked program and its libraries
# (the ldd closure), at the paths the dynamic loader looks for them.
copy_binary() {
	local src=$1 dst=$2 lib
	install -D -m 0755 "$src" "$stage$dst/$(basename "$src")"
	for lib in $(ldd "$src" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }'); do
		[[ -e $stage$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$stage$lib"
	done
}

# copy_foreign SRC DEST_DIR: copy_binary for a program of the sysroot
# $guest, another architecture's, where ldd cannot run it: the libraries are
# those its ELF headers name (NEEDED, transitively), found in the sysroot.
copy_foreign() {
	local src=$guest$1 dst=$2 queue=() seen=" " f lib path interp
	install -D -m 0755 "$src" "$stage$dst/$(basename "$src")"
	interp=$(readelf -l "$src" | sed -n 's/.*Requesting program interpreter: \([^]]*\)].*/\1/p')
	[[ -n $interp ]] || die "$1: no program interpreter in $src"
	[[ -e $stage$interp ]] || install -D -m 0755 "$(readlink -f "$guest$interp")" "$stage$interp"
	queue=("$src")
	while ((${#queue[@]})); do
		f=${queue[0]}
		queue=("${queue[@]:1}")
		for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
			[[ $seen == *" $lib "* ]] && continue
			seen+="$lib "
			path=$(find "$guest/lib" "$guest/usr/lib" -name "$lib" 2>/dev/null | head -n1)
			[[ -n $path ]] || die "$1 needs $lib, which none of ${guest_packages[*]} ships: add its package to guest_packages"
			[[ -e $stage${path#"$guest"} ]] || install -D -m 0755 "$(readlink -f "$path")" "$stage${path#"$guest"}"
			queue+=("$path")
		done
	done
}

main() {
	local t_all halb kpkg kdeb bbdeb bblist kver t
	t_all=$(now)
	mkdir -p "$cache"
	exec 9>"$cache/.lock"
	flock 9 # one build at a time per cache
	mkdir -p "$out"

	need_tools "$qemu" kmod=kmod cpio=cpio zstd=zstd \
		ipvsadm=ipvsadm ip=iproute2 dpkg-deb=dpkg ldd=libc-bin flock=util-linux readelf=binutils
	local foreign=
	if [[ $arch != "$(dpkg --print-architecture)" ]]; then
		foreign=1
		if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
			[[ $(id -u) -eq 0 ]] || unavailable "dpkg knows no $arch packages: run as root, or dpkg --add-architecture $arch"
			log "dpkg --add-architecture $arch"
			dpkg --add-architecture "$arch"
			apt_updated= # the lists of $arch's packages are still to come
			apt_update
		fi
	fi

	kernel=$out/kernel
	kpkg=$(kernel_package)
	local pkgs=("$kpkg:$arch" "busybox-static:$arch" "busybox-static:$(dpkg --print-architecture)") p
	[[ -z $foreign ]] || for p in "${guest_packages[@]}"; do pkgs+=("$p:$arch"); done
	load_candidates "${pkgs[@]}"
	kdeb=$(fetch "$kpkg")
	# A new ABI is a new package name: drop the kernels it replaced.
	find "$cache/debs" -maxdepth 1 -name "linux-image-[0-9]*-${flavour}_*.deb" ! -name "$(basename "$kdeb")" -delete
	# busybox-static is taken from its .deb rather than installed, so the
	# host's own busybox (initramfs-tools uses the dynamic one) stays.
	bbdeb=$(fetch busybox-static)
	# The host cannot run another architecture's busybox to ask it for its
	# applets; the host's build of the same package has the same ones.
	bblist=$bbdeb
	[[ -z $foreign ]] || bblist=$(fetch busybox-static "$(dpkg --print-architecture)")
	local guest_debs=()
	if [[ -n $foreign ]]; then
		for p in "${guest_packages[@]}"; do
			guest_debs+=("$(fetch "$p")")
		done
	fi
	stage_kernel "$kdeb"
	kver=$(cat "$kernel/release")

	if [[ $# -ge 1 ]]; then
		halb=$(readlink -f "$1")
		[[ -x $halb ]] || die "$1: not an executable"
	else
		t=$(now)
		# The binary `make cross` ships for this architecture.
		halb=$out/halb-linux-$goarch
		make -s -C "$repo" BINDIR="$out" "$out/halb-linux-$goarch" ||
			die "make $out/halb-linux-$goarch failed"
		log "built halb in $(since "$t")"
	fi
	LC_ALL=C readelf -h "$halb" | grep -q "Machine: *$machine\$" ||
		die "$halb is not a program for $arch: $(LC_ALL=C readelf -h "$halb" 2>&1 | grep Machine:)"
	if LC_ALL=C readelf -l "$halb" | grep -q 'program interpreter'; then
		die "$halb is dynamically linked: build it with CGO_ENABLED=0"
	fi
	# A Pi Zero or Pi 1 (ARMv6) cannot run a GOARM=7 build, though
	# Raspberry Pi OS calls both armhf.
	if [[ $arch == armhf ]] && ! go version -m "$halb" | grep -qx $'\tbuild\tGOARM=6'; then
		die "$halb is not built with GOARM=6: $(go version -m "$halb" | grep GOARM || echo 'no GOARM')"
	fi

	t=$(now)
	stage=$out/stage
	guest=$out/sysroot
	rm -rf "$stage" "$out/busybox" "$guest"
	mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/halb,proc,sys,dev,run,tmp,root,lib/modules,scenarios}

	dpkg-deb -x "$bbdeb" "$out/busybox"
	install -m 0755 "$out/busybox/bin/busybox" "$stage/bin/busybox"
	rm -rf "$out/busybox"
	dpkg-deb -x "$bblist" "$out/busybox"
	local applet
	for applet in $("$out/busybox/bin/busybox" --list-full); do
		case ${applet##*/} in
		busybox) continue ;;
		ip) [[ -n $foreign ]] || continue ;; # iproute2's ip is carried: busybox's has no netns or veth peers
		esac
		ln -sf /bin/busybox "$stage/$applet"
	done
	rm -rf "$out/busybox"

	if [[ -n $foreign ]]; then
		local deb
		for deb in "${guest_debs[@]}"; do
			dpkg-deb -x "$deb" "$guest"
		done
		copy_foreign /bin/kmod /bin
		copy_foreign /sbin/ipvsadm /usr/sbin
		rm -rf "$guest"
	else
		copy_binary "$(readlink -f "$(command -v kmod)")" /bin
		copy_binary "$(command -v ipvsadm)" /usr/sbin
		copy_binary "$(command -v ip)" /usr/sbin
	fi
	for applet in modprobe insmod rmmod lsmod modinfo depmod; do
		ln -sf /bin/kmod "$stage/sbin/$applet"
	done
	cp -a "$kernel/lib/modules/$kver" "$stage/lib/modules/"
	install -m 0755 "$halb" "$stage/usr/sbin/halb"
	local conf
	for conf in "$here"/halb-*.yaml; do
		conf=${conf##*/}
		install -m 0644 "$here/$conf" "$stage/etc/halb/${conf#halb-}"
	done
	install -m 0755 "$here/init" "$stage/init"
	install -m 0644 "$here"/scenarios/*.sh "$stage/scenarios/"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
	printf 'root:x:0:\n' >"$stage/etc/group"

	mkdir -p "$out"
	# Reproducible: same inputs, same bytes (file order and owners fixed,
	# mtimes set to the epoch).
	find "$stage" -exec touch -h -d @0 {} +
	(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc --owner 0:0 --reproducible --quiet) |
		zstd -q -T0 -12 -f -o "$out/initramfs.cpio.zst.tmp"
	mv "$out/initramfs.cpio.zst.tmp" "$out/initramfs.cpio.zst"
	cp "$kernel/vmlinuz" "$out/vmlinuz"
	echo "$kver" >"$out/kernel-release"
	log "initramfs $(du -h "$out/initramfs.cpio.zst" | cut -f1) ($(du -sh "$stage" | cut -f1) unpacked) in $(since "$t")"
	log "kernel $kver ($kpkg), built in $(since "$t_all"): $out"
}

main "$@"
