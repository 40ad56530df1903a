#!/usr/bin/env bash
# run.sh SCENARIO — boot the kernel and initramfs build.sh made, run one
# scenario (test/vm/scenarios/SCENARIO.sh) in the guest and report it.
#
# QEMU runs with TCG (no KVM needed), no network card and the serial port as
# the console. The guest's /init prints "HALB-VM-RESULT: PASS SCENARIO" or
# "HALB-VM-RESULT: FAIL SCENARIO reason" and powers off. This script exits 0
# only on the PASS line; otherwise it prints the whole console and exits 1.
# The console is kept in $cache/ARCH/logs/SCENARIO.log either way.
#
# Environment: HALB_VM_ARCH (amd64, the default, arm64 or armhf: the guest
# that build.sh made with the same setting), HALB_VM_CACHE (build.sh's cache),
# HALB_VM_TIMEOUT (seconds for the whole boot, default 120, 240 on armhf),
# HALB_VM_VERBOSE=1 (print the console on success too).
#
# A scenario runs on amd64 only, unless a line "# arch: amd64 arm64 armhf"
# in it names the architectures whose guest has what it needs (the arm64 and
# armhf guests have no iproute2, so no network namespaces).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${HALB_VM_CACHE:-$here/.cache}
arch=${HALB_VM_ARCH:-amd64}
out=$cache/$arch
# armhf's TCG is the slowest: probe-ipvs took 41 s alone and 106 s beside
# another guest on a loaded 2-core machine.
default_limit=120
[[ $arch != armhf ]] || default_limit=240
limit=${HALB_VM_TIMEOUT:-$default_limit}

[[ $# -eq 1 ]] || { echo "usage: $0 SCENARIO" >&2; exit 2; }
scenario=$1
[[ $scenario =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: $scenario: not a scenario name" >&2; exit 2; }
for f in vmlinuz initramfs.cpio.zst; do
	[[ -s $out/$f ]] || { echo "run.sh: no $out/$f: run test/vm/build.sh first" >&2; exit 2; }
done

mkdir -p "$out/logs"
log=$out/logs/$scenario.log
start=$(date +%s.%N)
set +e
# The guest gets 30 s less than the whole boot, so that a scenario that hangs
# still prints its FAIL line.
case $arch in
# no_timer_check: under TCG on a busy host the guest's check that the
# IO-APIC timer ticks can miss it and panic ("IO-APIC + timer doesn't
# work", seen in CI at load 15); the check proves nothing about halb.
amd64) qemu=(qemu-system-x86_64 -cpu max) console="ttyS0 no_timer_check" ;;
arm64) qemu=(qemu-system-aarch64 -M virt -cpu cortex-a72) console=ttyAMA0 ;;
# A Raspberry Pi 2's core; the armmp kernel is not LPAE, so the virt machine
# keeps its devices below 4 GiB.
armhf) qemu=(qemu-system-arm -M virt,highmem=off -cpu cortex-a7) console=ttyAMA0 ;;
*) echo "run.sh: HALB_VM_ARCH=$arch: want amd64, arm64 or armhf" >&2; exit 2 ;;
esac
timeout --kill-after=5 "$limit" "${qemu[@]}" \
	-accel tcg -m 512 -smp 1 \
	-nographic -no-reboot -nic none \
	-kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio.zst" \
	-append "console=$console quiet panic=-1 halb.scenario=$scenario halb.timeout=$((limit - 30))" \
	</dev/null >"$log" 2>&1
status=$?
set -e
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# The serial console ends its lines with \r\n.
marker=$(tr -d '\r' <"$log" | grep -a '^HALB-VM-RESULT: ' | tail -n1 || true)
if [[ $marker == "HALB-VM-RESULT: PASS $scenario" ]]; then
	[[ ${HALB_VM_VERBOSE:-} == 1 ]] && tr -d '\r' <"$log"
	echo "run.sh: $scenario ($arch) passed in ${secs}s (console: $log)"
	exit 0
fi
tr -d '\r' <"$log"
echo
if [[ -n $marker ]]; then
	echo "run.sh: $scenario failed in ${secs}s: ${marker#HALB-VM-RESULT: }"
elif [[ $status -eq 124 || $status -eq 137 ]]; then
	echo "run.sh: $scenario: no result line; QEMU killed after ${limit}s"
else
	echo "run.sh: $scenario: no result line; QEMU exited with status $status after ${secs}s"
fi
echo "run.sh: console kept in $log"
exit 1
