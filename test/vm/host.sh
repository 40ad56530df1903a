# host.sh — the host-side helpers build.sh and systemd.sh share (sourced):
# log lines named after the script, the exit status 3 that means a
# prerequisite could not be had, timing, and installing missing tools with
# apt-get.

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# unavailable: a prerequisite is missing and cannot be had on this machine.
unavailable() { log "prerequisite unavailable: $*"; exit 3; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

apt_updated=
apt_update() {
	[[ -n $apt_updated ]] && return 0
	log "apt-get update"
	apt-get update -qq >&2 || unavailable "apt-get update failed: is Debian's archive reachable?"
	apt_updated=1
}

# need_tools CMD=PACKAGE...: install the packages whose command is missing.
need_tools() {
	local pkgs=() spec
	for spec in "$@"; do
		command -v "${spec%%=*}" >/dev/null 2>&1 || pkgs+=("${spec#*=}")
	done
	((${#pkgs[@]})) || return 0
	[[ $(id -u) -eq 0 ]] || unavailable "missing ${pkgs[*]}: run as root, or install them"
	apt_update
	log "apt-get install ${pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
		unavailable "apt-get install ${pkgs[*]} failed"
}
