#!/bin/bash
# ab4.sh OUT ROUNDS: alternate bA and bB, migbench 4 GiB zipf hybrid only, shared
out=$1; rounds=$2
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  b=/work/tmp/b$t
  flock /work/bench.lock $b/migbench --bin $b --size 4G --pattern zipf --methods hybrid --runs 1 --hybrid-memory shared --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
