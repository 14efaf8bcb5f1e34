#!/bin/bash
# ws.sh MODE(record|use|none) [taskset cpus]: one restore, 5 % sample by default; IMG, REGIONS, TOUCH (vmm touch flags), FA (fetcher flags), B (binaries) override
set -e
mode=$1; cpus=${2:-0-1}
D=/work/tmp/ws; mkdir -p $D; B=${B:-/work/main/bin}
rm -f $D/sock $D/ready.out
ts="taskset -c $cpus"
/usr/bin/time -o $D/server.time -f "%U %S" $ts $B/pageserver --listen 127.0.0.1:0 --source file:${IMG:-/work/tmp/img1g.b} --log-level info >$D/ready.out 2>$D/server.log &
SP=$!
while ! grep -q addr $D/ready.out 2>/dev/null; do sleep 0.05; done
addr=$(python3 -c "import json;print(json.loads(open('$D/ready.out').readline())['addr'])")
fa=""
case $mode in record) fa="--record-working-set $D/vm.ws";; use) fa="--working-set $D/vm.ws";; esac
/usr/bin/time -o $D/fetcher.time -f "%U %S" $ts $B/pagefetcher --server $addr --uffd-socket $D/sock --log-level debug $fa $FA > $D/fetcher.out 2>$D/fetcher.log &
FP=$!
while [ ! -S $D/sock ]; do sleep 0.02; done
/usr/bin/time -o $D/vmm.time -f "%U %S" $ts $B/vmm --socket $D/sock --regions ${REGIONS:-4k:0x0:1G} --threads 1 ${TOUCH:---touch sample --fraction ${FRAC:-0.05}} --seed 1 > $D/vmm.out
wait $FP
kill $(pgrep -P $SP); wait $SP 2>/dev/null || true
echo "cpu server $(cat $D/server.time) fetcher $(cat $D/fetcher.time) vmm $(cat $D/vmm.time)"
python3 - <<PY
import json
v=[json.loads(l) for l in open('$D/vmm.out') if l.startswith('{')][-1]
print("$mode", {k:v[k] for k in ('touch_ms','stall_count','stall_p50_us','stall_p99_us','handler_closed_ms','first_page_ms')})
PY
