#!/usr/bin/env bash
# capture.sh — record keepalived's own VRRP adverts as golden vectors for the
# codec tests (advert_test.go reads them; no keepalived is needed at test time).
#
# Run again, as root, from anywhere:
#
#	apt-get install -y keepalived tcpdump
#	bash vrrp/testdata/capture.sh
#
# It makes two network namespaces joined by a veth pair, starts keepalived in
# one (VRRP only, its config and pid files in a temporary directory, so it
# never meets a system keepalived), captures with tcpdump in the other, stops
# keepalived (which sends priority-0 adverts as it resigns, RFC 5798 §6.4.3),
# and removes everything it made. It rewrites, beside itself:
#
#	keepalived.pcap          the raw capture, for Wireshark or `tcpdump -r`
#	keepalived-adverts.txt   one advert a line: name, IP source, IP destination,
#	                         and the VRRP payload (IP header stripped) in hex
#
# Only documentation addresses are used: 192.0.2.0/24 on the link,
# 203.0.113.0/24 and 2001:db8::/32 as virtual addresses, fe80::/64 on the veths.
# The MACs and link-local addresses are fixed so the vectors are reproducible:
# a second run yields the same adverts file.
#
# The instances, by VRID (advert_test.go's table says the same):
#
#	51 v2-mcast-pass  VRRPv2, IPv4 multicast, auth PASS "halb-pw", prio 150, 1s
#	52 v2-unicast     VRRPv2, IPv4 unicast to 192.0.2.2, prio 100, 2s
#	53 v3-mcast4      VRRPv3, IPv4 multicast, prio 200, 0.5s
#	54 v3-mcast6      VRRPv3, IPv6 multicast, fe80::54 + 2001:db8:54::1/2, prio 120, 1s
#	55 v3-many4       VRRPv3, IPv4 multicast, five addresses, prio 254, 1s
#	56 v3-unicast4    VRRPv3, IPv4 unicast to 192.0.2.2, prio 90, 1s
#	                  (the pseudo-header carries the unicast destination;
#	                  keepalived before 1.3.6 used 224.0.0.18 there)
#	57 v2-excluded    VRRPv2, IPv4 multicast, only virtual_ipaddress_excluded:
#	                  keepalived sends Count IP Addrs 0 unless vrrp_strict
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ns_ka=halb-vrrpcap-ka     # keepalived runs here
ns_peer=halb-vrrpcap-peer # tcpdump listens here
tmp=$(mktemp -d /tmp/halb-vrrpcap.XXXXXX)
tcpdump_pid=

for cmd in keepalived tcpdump ip; do
	command -v "$cmd" >/dev/null || { echo "capture.sh: $cmd not found: apt-get install -y keepalived tcpdump iproute2" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "capture.sh: needs root for network namespaces" >&2; exit 1; }

cleanup() {
	set +e
	# Only what this script started: keepalived by its own pid file, tcpdump by $!.
	if [ -s "$tmp/keepalived.pid" ]; then kill "$(cat "$tmp/keepalived.pid")" 2>/dev/null; fi
	if [ -n "$tcpdump_pid" ]; then kill "$tcpdump_pid" 2>/dev/null; fi
	sleep 0.5
	ip netns del "$ns_ka" 2>/dev/null
	ip netns del "$ns_peer" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

# Leftovers of an interrupted run carry this script's names only.
ip netns del "$ns_ka" 2>/dev/null || true
ip netns del "$ns_peer" 2>/dev/null || true

ip netns add "$ns_ka"
ip netns add "$ns_peer"
ip -n "$ns_ka" link add veth-ka address 02:00:5e:c0:02:01 type veth peer name veth-peer netns "$ns_peer" address 02:00:5e:c0:02:02
for pair in "$ns_ka veth-ka 1" "$ns_peer veth-peer 2"; do
	set -- $pair
	# No kernel-made link-local address: a fixed fe80::N instead, so the v3
	# IPv6 advert's source (and so its checksum) is the same on every run.
	ip netns exec "$1" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	ip -n "$1" link set "$2" addrgenmode none
	ip -n "$1" link set lo up
	ip -n "$1" link set "$2" up
	ip -n "$1" addr add "192.0.2.$3/24" dev "$2"
	ip -n "$1" addr add "fe80::$3/64" dev "$2" nodad
	ip -n "$1" addr add "2001:db8::$3/64" dev "$2" nodad
done

cat >"$tmp/keepalived.conf" <<'EOF'
global_defs {
	router_id halb-capture
	vrrp_garp_master_delay 0
	vrrp_garp_master_repeat 1
}

vrrp_instance v2-mcast-pass {
	interface veth-ka
	version 2
	state MASTER
	virtual_router_id 51
	priority 150
	advert_int 1
	authentication {
		auth_type PASS
		auth_pass halb-pw
	}
	virtual_ipaddress {
		203.0.113.51/32
	}
}

vrrp_instance v2-unicast {
	interface veth-ka
	version 2
	state MASTER
	virtual_router_id 52
	priority 100
	advert_int 2
	unicast_src_ip 192.0.2.1
	unicast_peer {
		192.0.2.2
	}
	virtual_ipaddress {
		203.0.113.52/32
	}
}

vrrp_instance v3-mcast4 {
	interface veth-ka
	version 3
	state MASTER
	virtual_router_id 53
	priority 200
	advert_int 0.5
	virtual_ipaddress {
		203.0.113.53/32
	}
}

vrrp_instance v3-mcast6 {
	interface veth-ka
	version 3
	state MASTER
	virtual_router_id 54
	priority 120
	advert_int 1
	virtual_ipaddress {
		fe80::54/64
		2001:db8:54::1/64
		2001:db8:54::2/64
	}
}

vrrp_instance v3-many4 {
	interface veth-ka
	version 3
	state MASTER
	virtual_router_id 55
	priority 254
	advert_int 1
	virtual_ipaddress {
		203.0.113.10/32
		203.0.113.11/32
		203.0.113.12/32
		203.0.113.13/32
		203.0.113.14/32
	}
}

vrrp_instance v3-unicast4 {
	interface veth-ka
	version 3
	state MASTER
	virtual_router_id 56
	priority 90
	advert_int 1
	unicast_src_ip 192.0.2.1
	unicast_peer {
		192.0.2.2
	}
	virtual_ipaddress {
		203.0.113.56/32
	}
}

vrrp_instance v2-excluded {
	interface veth-ka
	version 2
	state MASTER
	virtual_router_id 57
	priority 110
	advert_int 1
	virtual_ipaddress_excluded {
		203.0.113.57/32
	}
}
EOF

ip netns exec "$ns_peer" tcpdump -i veth-peer -n -U -w "$tmp/capture.pcap" 'ip proto 112 or ip6 proto 112' 2>"$tmp/tcpdump.log" &
tcpdump_pid=$!
sleep 1

# -P VRRP only; -n stay in the foreground; -l -D log to the console in
# detail; every pid file in $tmp so a system keepalived is never touched.
ip netns exec "$ns_ka" keepalived -f "$tmp/keepalived.conf" -P -n -l -D -G \
	-p "$tmp/keepalived.pid" -r "$tmp/vrrp.pid" -c "$tmp/checkers.pid" -b "$tmp/bfd.pid" \
	>"$tmp/keepalived.log" 2>&1 &
sleep 8
kill "$(cat "$tmp/keepalived.pid")"
sleep 2 # the priority-0 adverts of the resigning masters
kill "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true
tcpdump_pid=

keepalived --version 2>&1 | head -1 | sed 's/^/capture.sh: /'
cp "$tmp/capture.pcap" "$here/keepalived.pcap"

# tcpdump -x prints each packet from its IP header on; keep per VRID the
# distinct adverts (one at the configured priority, one at priority 0).
{
	echo "# Captured by capture.sh from $(keepalived --version 2>&1 | head -1)."
	echo "# name ip-src ip-dst vrrp-payload-hex (IP header stripped)"
	tcpdump -r "$here/keepalived.pcap" -n -x 2>/dev/null | awk '
	function hexval(s,   i, v) {
		v = 0
		for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
		return v
	}
	function flush(   hex, off, vrid, prio, name, line) {
		if (src == "") return
		hex = pkt
		if (substr(hex, 1, 1) == "4") {
			off = hexval(substr(hex, 2, 1)) * 4 # IPv4 IHL
		} else {
			off = 40 # IPv6 fixed header; keepalived sends no extension headers
		}
		hex = substr(hex, off * 2 + 1)
		vrid = hexval(substr(hex, 3, 2))
		prio = hexval(substr(hex, 5, 2))
		name = names[vrid]
		if (name == "") name = "vrid" vrid
		if (prio == 0) name = name "-resign"
		line = name " " src " " dst " " hex
		if (!seen[line]++) print line
		src = ""
	}
	BEGIN {
		names[51] = "v2-mcast-pass"; names[52] = "v2-unicast"; names[53] = "v3-mcast4"
		names[54] = "v3-mcast6"; names[55] = "v3-many4"; names[56] = "v3-unicast4"
		names[57] = "v2-excluded"
	}
	/^[0-9]/ {
		flush()
		src = $3; dst = $5; sub(/:$/, "", dst); pkt = ""
		next
	}
	/^[ \t]+0x[0-9a-f]+:/ {
		line = $0
		sub(/^[ \t]+0x[0-9a-f]+:[ \t]+/, "", line)
		gsub(/[ \t]/, "", line)
		pkt = pkt line
	}
	END { flush() }' | sort -k1,1 -s
} >"$here/keepalived-adverts.txt"

echo "capture.sh: wrote $here/keepalived.pcap and $here/keepalived-adverts.txt ($(grep -vc '^#' "$here/keepalived-adverts.txt") adverts)"
grep -i -E 'error|warn|unknown' "$tmp/keepalived.log" | sed 's/^/capture.sh: keepalived: /' || true
