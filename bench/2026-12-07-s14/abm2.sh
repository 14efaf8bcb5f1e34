#!/bin/bash
# abm2.sh OUT PATTERN ROUNDS METHODS: alternate /work/tmp/bA (FA_A fetcher args) and bB (FA_B) in migbench (1 GiB, loopback)
out=$1; pat=$2; rounds=$3; methods=${4:-postcopy,stopcopy}
mkdir -p $out
for r in $(seq 1 $rounds); do
 for t in A B; do
  b=/work/tmp/b$t; v=FA_$t; fa=${!v}
  flock /work/bench.lock $b/migbench --bin $b --size 1G --pattern $pat --methods $methods --runs 1 --fetcher-args "$fa" --json $out/$t-$r.json > $out/$t-$r.txt 2>&1
 done
done
echo done > $out/DONE
