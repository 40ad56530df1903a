# halb-ipvs-traffic: traffic through the service halb programs. halb runs
# /etc/halb/ipvs.yaml (one NAT service, wrr, two backends of weight 1) with
# on-demand loading off; its VRRP instance becomes MASTER and puts the VIP
# on lan0, and connections from the client namespace to the VIP come back
# from both backends; halb status counts them, and halb flows lists each
# with the backend that answered it.
n=100

step "topology: client, b1 and b2 in network namespaces, backends serving"
nat_topology
backend_serve b1 8080 b1
backend_serve b2 8080 b2

step "halb run programs the service and takes the VIP"
modprobe_off
halb_start -c /etc/halb/ipvs.yaml
halb_wait 30 "halb logged 'services programmed'" 'msg="services programmed" datapath=ipvs services=1'
wait_until 20 "$VIP on lan0" sh -c "ip -o addr show dev lan0 | grep -q ' $VIP/32 '"
run_to /tmp/ipvs.txt ipvsadm -Ln
expect_ipvs_service "$VIP:80" wrr "$B1:8080:1" "$B2:8080:1"

step "$n connections from the client to $VIP:80"
connect_many "$n" "$VIP" 80 >/tmp/answers
b1=$(grep -cx b1 /tmp/answers)
b2=$(grep -cx b2 /tmp/answers)
echo "split of $n connections: b1 $b1, b2 $b2"
[ "$((b1 + b2))" -eq "$n" ] || fail "$((b1 + b2)) of $n connections answered by a backend; answers: $(sort /tmp/answers | uniq -c | tr '\n' ' ')"
if [ "$b1" -eq 0 ] || [ "$b2" -eq 0 ]; then
	fail "one backend got nothing: b1 $b1, b2 $b2"
fi
run_to /tmp/stats ipvsadm -Ln --stats

step "halb status shows IPVS's counters: $n connections, b1 $b1, b2 $b2"
run_to /tmp/status.txt halb status -c /etc/halb/ipvs.yaml
grep -q "(ipvs)" /tmp/status.txt || fail "halb status does not name the ipvs data path"
run_to /tmp/status.json halb status --json -c /etc/halb/ipvs.yaml
# IPVS's connection counters lag (the kernel sums them every 2 s), so the
# service's must only have started; the connections each backend holds now
# (active + inactive, the closed ones wait in TIME_WAIT) are exact.
grep -q "\"datapath\":\"ipvs\",\"packets\":[1-9][0-9]*,\"bytes\":[1-9][0-9]*,\"new_flows\":[1-9][0-9]*," /tmp/status.json ||
	fail "halb status --json counts no packets, bytes or connections for the service"
for b in "$B1:8080 $b1" "$B2:8080 $b2"; do
	set -- $b
	conns=$(grep -o "\"backend\":\"$1\",[^}]*" /tmp/status.json | sed -n 's/.*"active_connections":\([0-9]*\),"inactive_connections":\([0-9]*\).*/\1 + \2/p')
	[ -n "$conns" ] || fail "halb status --json has no connection counts for backend $1"
	[ "$(($conns))" -eq "$2" ] || fail "halb status --json: backend $1 holds $conns connections, it answered $2"
done

step "halb flows lists IPVS's $n connections (/proc/net/ip_vs_conn): b1 $b1, b2 $b2"
run_to /tmp/flows.txt halb flows -c /etc/halb/ipvs.yaml
run_to /tmp/flows.json halb flows --json -c /etc/halb/ipvs.yaml
grep -q "\"total\":$n[,}]" /tmp/flows.json || fail "halb flows --json does not count the $n connections: $(head -c 300 /tmp/flows.json)"
for b in "$B1:8080 $b1" "$B2:8080 $b2"; do
	set -- $b
	got=$(grep -o "\"backend\":\"$1\"" /tmp/flows.json | wc -l | tr -d " ")
	[ "$got" -eq "$2" ] || fail "halb flows lists $got connections to $1, it answered $2"
done
halb_stop
