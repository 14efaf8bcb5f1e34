#!/bin/bash
# abm3.sh OUT ROUNDS METHODS: one binary dir (bB), sides A and B differ by migbench args MA_A / MA_B
out=$1; rounds=$2; methods=$3
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  v=MA_$t; ma=${!v}
  eval flock /work/bench.lock /work/tmp/bB/migbench --bin /work/tmp/bB --size 1G --pattern zipf --methods $methods --runs 1 $ma --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
