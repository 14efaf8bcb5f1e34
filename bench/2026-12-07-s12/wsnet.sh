#!/bin/bash
# wsnet.sh MODE(record|use|none) RATE: one restore as ws.sh, over a veth pair shaped with tc tbf
# (pageserver in one network namespace, pagefetcher in another, the VMM here); B (binaries), FRAC.
set -e
mode=$1; rate=${2:-1gbit}
D=/work/tmp/wsnet; mkdir -p $D; B=${B:-/work/main/bin}
S=wsn-src; T=wsn-dst # the namespaces stay for the next run; remove them with ip netns del
if ! ip netns list | grep -q "^$S"; then
  ip netns add $S; ip netns add $T
  ip link add wsns netns $S type veth peer name wsnd netns $T
  for n in "$S wsns 10.232.0.1" "$T wsnd 10.232.0.2"; do set -- $n
    ip -n $1 link set lo up; ip -n $1 addr add $3/30 dev $2; ip -n $1 link set $2 up
    ip netns exec $1 tc qdisc add dev $2 root tbf rate $rate burst 131072 latency 20ms
  done
fi
rm -f $D/sock $D/ready.out
ip netns exec $S $B/pageserver --listen 10.232.0.1:0 --source file:${IMG:-/work/tmp/img1g.b} --log-level info >$D/ready.out 2>$D/server.log &
SP=$!
while ! grep -q addr $D/ready.out 2>/dev/null; do sleep 0.05; done
addr=$(python3 -c "import json;print(json.loads(open('$D/ready.out').readline())['addr'])")
fa=""
case $mode in record) fa="--record-working-set $D/vm.ws";; use) fa="--working-set $D/vm.ws";; esac
ip netns exec $T $B/pagefetcher --server $addr --uffd-socket $D/sock --log-level info $fa > $D/fetcher.out 2>$D/fetcher.log &
FP=$!
while [ ! -S $D/sock ]; do sleep 0.02; done
$B/vmm --socket $D/sock --regions 4k:0x0:1G --threads 1 --touch sample --fraction ${FRAC:-0.05} --seed 1 > $D/vmm.out 2>/dev/null
wait $FP
kill $SP; wait $SP 2>/dev/null || true
python3 - <<PY
import json
v=[json.loads(l) for l in open('$D/vmm.out') if l.startswith('{')][-1]
s=[json.loads(l) for l in open('$D/fetcher.out') if '"summary"' in l][-1]['summary']
print("$mode", "B=$B", {k:round(v[k],1) for k in ('touch_ms','stall_count','handler_closed_ms')}, 'received', s['received_bytes'])
PY
