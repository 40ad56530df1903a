# halb-run-vrrp: the VRRP side of `halb run` in the guest with
# /etc/halb/ipvs.yaml: the lone instance becomes MASTER and puts the VIP on
# lan0, and SIGTERM takes it off again and ends halb with status 0. The IPVS
# scenarios start halb the same way (halb_start, halb_stop).

step "topology"
nat_topology

step "halb run: the instance becomes MASTER and takes the VIP"
halb_start -c /etc/halb/ipvs.yaml
wait_until 20 "$VIP on lan0" sh -c "ip -o addr show dev lan0 | grep -q ' $VIP/32 '"
run ip addr show dev lan0
grep -q 'msg="halb starting".*datapath=ipvs' "$HALB_LOG" ||
	fail "halb did not log its start with datapath=ipvs; its log: $(head -n3 "$HALB_LOG" | tr '\n' ' ')"
# The client reaches the VIP through the director.
run ip netns exec "$CLIENT_NS" ping -c1 -W2 "$VIP"

step "SIGTERM: halb gives the VIP up and exits 0"
halb_stop
if ip -o addr show dev lan0 | grep -q " $VIP/32 "; then
	fail "$VIP is still on lan0 after halb stopped"
fi
echo "ok: $VIP gone from lan0"
