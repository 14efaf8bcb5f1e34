#!/bin/bash
# abm6.sh OUT ROUNDS: alternate /work/tmp/bA and bB, migbench 1 GiB $PAT (default zipf) hybrid,stopcopy, --hybrid-memory ${MEM:-shared}, extra args $MA
out=$1; rounds=$2; pat=${PAT:-zipf}; mem=${MEM:-shared}
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  b=/work/tmp/b$t
  flock /work/bench.lock $b/migbench --bin $b --size 1G --pattern $pat --methods hybrid,stopcopy --runs 1 --hybrid-memory $mem $MA --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
