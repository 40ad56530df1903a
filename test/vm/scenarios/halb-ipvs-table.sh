# halb-ipvs-table: a resync that finds nothing changed reads
# /proc/net/ip_vs once and takes it for what halb wrote; this shows that it
# reads the real kernel's text right. halb programs ipvs-shapes.yaml (IPv4
# and IPv6 VIPs, TCP and UDP, persistence on and off, nat, dr and tun,
# weights 0 to 65535, six schedulers); the next resync must log that it
# found the table as the last pass left it, having read nothing else. Then
# the table is changed behind halb's back, a weight (ipvsadm -e), an IPv6
# real server removed (ipvsadm -d), a persistence timeout (ipvsadm -E -p,
# which the file shows in jiffies), one at a time: each time the next
# resync must see the difference and put it back.
conf=/etc/halb/ipvs-shapes.yaml
same='msg="ipvs table as the last pass left it" services=6'
differs='msg="ipvs table differs from what the last pass left'

# ipvs_lines ARGS: ipvsadm -Ln ARGS (read over netlink), blanks squeezed to
# one and none at the end of a line.
ipvs_lines() {
	ipvsadm -Ln "$@" | tr -s ' ' | sed 's/ $//'
}

# expect_ipvs_line ERE: ipvsadm -Ln lists a line matching ERE.
expect_ipvs_line() {
	ipvs_lines | grep -qE "^$1\$" || fail "ipvsadm -Ln lists no line '$1'"
	echo "ok: ipvsadm -Ln: $1"
}

# count ERE: lines of halb's log that match ERE.
count() {
	grep -cE "$1" "$HALB_LOG"
}

step "halb run programs six services, one of each shape"
halb_start -c "$conf"
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=6'
run cat /proc/net/ip_vs
run ipvsadm -Ln
expect_ipvs_line 'TCP 192.0.2.10:80 wrr'
expect_ipvs_line ' -> 198.51.100.14:8080 Masq 0 0 0'
expect_ipvs_line 'UDP 192.0.2.11:53 sh persistent 300'
expect_ipvs_line ' -> 198.51.100.22:53 Route 65535 0 0'
expect_ipvs_line 'TCP 192.0.2.12:8443 lc'
expect_ipvs_line ' -> 198.51.100.31:8443 Tunnel 5 0 0'
expect_ipvs_line 'TCP \[2001:db8::10\]:443 mh persistent 60'
expect_ipvs_line ' -> \[2001:db8:1::12\]:443 Tunnel 0 0 0'
expect_ipvs_line 'UDP \[2001:db8::11\]:53 rr'
expect_ipvs_line ' -> \[2001:db8:2::21\]:5353 Masq 1 0 0'
expect_ipvs_line 'TCP \[2001:db8::1:0:0:12\]:80 wlc'
expect_ipvs_line ' -> \[2001:db8::ab:cdef\]:80 Route 7 0 0'

step "the next resync reads /proc/net/ip_vs once and finds the table as halb left it"
halb_wait 25 "halb logged '$same'" "$same"
expect_not_in "$HALB_LOG" 'msg="ipvs table (could not be read|differs)' "no resync read the table another way"
[ "$(count 'msg="ipvs service added"')" -eq 6 ] || fail "halb logged 'ipvs service added' $(count 'msg="ipvs service added"') times, want 6"
echo "ok: nothing changed after the first pass"

step "a weight changed by hand: the next resync sees it and sets it back"
run ipvsadm -e -t 192.0.2.10:80 -r 198.51.100.10:8080 -m -w 9
expect_ipvs_line ' -> 198.51.100.10:8080 Masq 9 0 0'
halb_wait 25 "halb logged '$differs'" "$differs"
wait_until 5 "weight 3 back on 198.51.100.10:8080" sh -c \
	"ipvsadm -Ln -t 192.0.2.10:80 | tr -s ' ' | sed 's/ \$//' | grep -qx ' -> 198.51.100.10:8080 Masq 3 0 0'"

step "an IPv6 real server removed by hand: the next resync sees it and adds it back"
seen=$(count "$same")
run ipvsadm -d -u '[2001:db8::11]:53' -r '[2001:db8:2::21]:5353'
wait_until 25 "halb logged '$differs' a second time" sh -c "[ \$(grep -c '$differs' $HALB_LOG) -ge 2 ]"
wait_until 5 "[2001:db8:2::21]:5353 back" sh -c \
	"ipvsadm -Ln -u '[2001:db8::11]:53' | tr -s ' ' | sed 's/ \$//' | grep -qx ' -> \[2001:db8:2::21\]:5353 Masq 1 0 0'"

step "a persistence timeout changed by hand: the next resync sees it and sets it back"
run ipvsadm -E -u 192.0.2.11:53 -s sh -p 100
expect_ipvs_line 'UDP 192.0.2.11:53 sh persistent 100'
wait_until 25 "halb logged '$differs' a third time" sh -c "[ \$(grep -c '$differs' $HALB_LOG) -ge 3 ]"
wait_until 5 "persistence 300 s back on 192.0.2.11:53" sh -c \
	"ipvsadm -Ln -u 192.0.2.11:53 | tr -s ' ' | sed 's/ \$//' | grep -qx 'UDP 192.0.2.11:53 sh persistent 300'"
expect_not_in "$HALB_LOG" 'msg="ipvs table (could not be read|read whole does not show)' "every resync read /proc/net/ip_vs as written"
echo "resyncs that found the table unchanged: $(count "$same") ($seen before the removal)"
run cat /proc/net/ip_vs
halb_stop
