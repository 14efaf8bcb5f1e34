#!/bin/bash
# hang.sh: demand-only restore of 13107 pages of 1 GiB pinned; if the VMM is not done in 8 s, dump goroutines
D=/work/tmp/hang; mkdir -p $D; B=${B:-/work/bin-new2}; C=${CPUS:-0}
rm -f $D/sock $D/ready.out
taskset -c $C $B/pageserver --listen 127.0.0.1:0 --source file:/work/tmp/img1g --log-level debug >$D/ready.out 2>$D/server.log 9>&- &
SP=$!
while ! grep -q addr $D/ready.out 2>/dev/null; do sleep 0.05; done
addr=$(python3 -c "import json;print(json.loads(open('$D/ready.out').readline())['addr'])")
taskset -c $C $B/pagefetcher --server $addr --uffd-socket $D/sock --log-level debug --prefetch off $FA > $D/fetcher.out 2>$D/fetcher.log 9>&- &
FP=$!
while [ ! -S $D/sock ]; do sleep 0.02; done
taskset -c $C $B/vmm --socket $D/sock --regions 4k:0x0:1G --threads 1 --touch sample --fraction 0.05 --seed ${SEED:-1} > $D/vmm.out 2>$D/vmm.err 9>&- &
VP=$!
sleep ${WAIT:-6}
curl -s 127.0.0.1:9187/metrics > $D/metrics.txt; kill $FP; wait $FP 2>/dev/null; kill $SP 2>/dev/null; wait $SP 2>/dev/null; wait $VP 2>/dev/null
python3 -c "
import json
v=[json.loads(l) for l in open('$D/vmm.out') if l.startswith('{')][-1]
print({k:v[k] for k in ('touch_ms','stall_count','stall_max_us')})"
