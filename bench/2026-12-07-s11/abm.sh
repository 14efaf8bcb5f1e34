#!/bin/bash
# abm.sh OUT PATTERN ROUNDS : alternate /work/tmp/bA and /work/tmp/bB in migbench (1 GiB, loopback)
out=$1; pat=$2; rounds=$3
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  b=/work/tmp/b$t
  flock /work/bench.lock $b/migbench --bin $b --size 1G --pattern $pat --methods postcopy,stopcopy --runs 1 --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
