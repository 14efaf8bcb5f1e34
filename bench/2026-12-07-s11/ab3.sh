#!/bin/bash
# ab3.sh OUT BENCH BENCHTIME ROUNDS : alternate wtA (before) and wtB (after) for fetchbench
out=$1; bench=$2; bt=$3; rounds=$4
mkdir -p $out
for r in $(seq 1 $rounds); do
  for t in A B; do
    (cd /work/tmp/wt$t && flock /work/bench.lock go test -run '^$' -bench "$bench" -benchtime $bt -timeout 60m ./test/fetchbench > $out/$t-$r.txt 2>&1)
  done
done
echo done > $out/DONE
