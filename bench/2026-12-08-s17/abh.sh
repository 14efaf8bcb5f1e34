#!/bin/bash
# abh.sh OUT ROUNDS: alternate /work/tmp/bA and bB, migbench 1 GiB zipf hybrid only, shared
out=$1; rounds=$2
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  b=/work/tmp/b$t
  flock /work/bench.lock $b/migbench --bin $b --size 1G --pattern ${PAT:-zipf} --methods hybrid --runs 1 --hybrid-memory ${MEM:-shared} --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
