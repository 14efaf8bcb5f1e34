#!/bin/bash
# fp.sh: one first-page run by hand, pinned to cpu 0; B binaries
set -e
D=/work/tmp/fp; mkdir -p $D; B=${B:-/work/main/bin}
rm -f $D/sock $D/ready.out
ts="taskset -c ${CPUS:-0}"
$ts $B/pageserver --listen 127.0.0.1:0 --source file:${IMG:-/work/tmp/img1g.b} --log-level ${SL:-info} >$D/ready.out 2>$D/server.log &
SP=$!
while ! grep -q addr $D/ready.out 2>/dev/null; do sleep 0.05; done
addr=$(python3 -c "import json;print(json.loads(open('$D/ready.out').readline())['addr'])")
$PFENV $ts $PFWRAP $B/pagefetcher --server $addr --uffd-socket $D/sock --log-level debug $FA > $D/fetcher.out 2>$D/fetcher.log &
FP=$!
while [ ! -S $D/sock ]; do sleep 0.02; done
sleep 1.5
$VMMWRAP $ts $B/vmm --socket $D/sock --regions 4k:0x0:16M --threads 1 --touch random --seed 1 > $D/vmm.out
wait $FP
kill $SP; wait $SP 2>/dev/null || true
python3 - <<PY
import json
v=[json.loads(l) for l in open('$D/vmm.out') if l.startswith('{')][-1]
print({k:v[k] for k in ('first_page_ms','stall_p50_us','handler_closed_ms')})
PY
