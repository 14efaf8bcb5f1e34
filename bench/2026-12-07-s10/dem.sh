#!/bin/bash
# dem.sh [wrapS] [wrapF]: one demand-only restore (16 MiB, random, every page a fault), prefetch off
TS=""; [ -n "$CPUS" ] && TS="taskset -c $CPUS"
D=/work/tmp/dem; mkdir -p $D; B=${B:-/work/bin-main}
rm -f $D/sock $D/ready.out
$TS $WS $B/pageserver --listen 127.0.0.1:0 --source file:/work/tmp/img1g --log-level info >$D/ready.out 2>$D/server.log &
SP=$!
while ! grep -q addr $D/ready.out 2>/dev/null; do sleep 0.05; done
addr=$(python3 -c "import json;print(json.loads(open('$D/ready.out').readline())['addr'])")
$TS $WF $B/pagefetcher --server $addr --uffd-socket $D/sock --prefetch off $FA > $D/fetcher.out 2>$D/fetcher.log &
FP=$!
while [ ! -S $D/sock ]; do sleep 0.02; done
$TS $B/vmm --socket $D/sock --regions 4k:0x0:16M --threads 1 --touch random --seed 1 > $D/vmm.out
wait $FP
kill -INT $SP; wait $SP 2>/dev/null
python3 - <<PY
import json
v=[json.loads(l) for l in open('$D/vmm.out') if l.startswith('{')][-1]
print({k:v[k] for k in ('stall_count','stall_p50_us','stall_p99_us')})
PY
