# ipvsadm-nat: the network the next scenarios run halb in, proved with
# ipvsadm: a client and two backends in network namespaces around the
# director (this namespace), IPVS NAT from the VIP to both backends, and 100
# connections that come back from both. The service is /etc/halb/ipvs.yaml's,
# with rr instead of wrr so that the spread is exact.
n=100

step "topology: client, b1 and b2 in network namespaces"
nat_topology
run ip addr add "$VIP/32" dev lan0
backend_serve b1 8080 b1
backend_serve b2 8080 b2
run ip netns exec "$CLIENT_NS" ping -c1 -W2 203.0.113.1
run ip netns exec b1 ping -c1 -W2 198.51.100.9
run ip netns exec b2 ping -c1 -W2 198.51.100.13

step "IPVS NAT service $VIP:80 -> $B1:8080, $B2:8080"
run modprobe -a ip_vs ip_vs_rr
run ipvsadm -A -t "$VIP:80" -s rr
run ipvsadm -a -t "$VIP:80" -r "$B1:8080" -m
run ipvsadm -a -t "$VIP:80" -r "$B2:8080" -m
run ipvsadm -Ln

step "$n connections from the client to $VIP:80"
connect_many "$n" "$VIP" 80 >/tmp/answers
sort /tmp/answers | uniq -c
b1=$(grep -cx b1 /tmp/answers)
b2=$(grep -cx b2 /tmp/answers)
[ "$((b1 + b2))" -eq "$n" ] || fail "$((b1 + b2)) of $n connections answered by a backend; answers: $(sort /tmp/answers | uniq -c | tr '\n' ' ')"
if [ "$b1" -ne 50 ] || [ "$b2" -ne 50 ]; then
	fail "rr spread $n connections as b1 $b1, b2 $b2; want 50 each"
fi
run_to /tmp/stats ipvsadm -Ln --stats
