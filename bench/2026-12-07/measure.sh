#!/usr/bin/env bash
# Final measurements: run on a quiet machine, sequentially.
set -u
out=/work/notes/measure; mkdir -p $out
cur=/work/cur2-bin; base=/work/base-bin
cd /work/main/test/fetchbench
fb() { # name bindir testbin benchregex extra-fetcher-flags
  POSTCOPY_FETCHBENCH_BIN=$2 $3 -test.run '^$' -test.bench "$4" -test.benchtime 3x ${5:+-fetchbench.fetcher-flags "$5"} > $out/fb-$1.txt 2>&1
}
date > $out/start
fb cur $cur $cur/fetchbench.test 'Demand|LoadedFaults|FaultStorm|FirstPage|TLS|Bulk'
fb base $base $base/fetchbench.test 'Demand|LoadedFaults'
fb cur-ab $cur $cur/fetchbench.test 'Demand|LoadedFaults'
fb cur-normal $cur $cur/fetchbench.test 'Demand|LoadedFaults|FaultStorm' '--demand-priority normal'
cd /work/main
for p in random zipf; do
  $cur/migbench --bin $cur --size 1G --pattern $p --methods postcopy,stopcopy,hybrid --runs 3 --json $out/mb-$p-loop.json --quiet > $out/mb-$p-loop.txt 2>&1
done
for p in random zipf; do
  $cur/migbench --bin $cur --size 1G --pattern $p --link 1gbit --methods postcopy,stopcopy,hybrid --runs 2 --json $out/mb-$p-1gbit.json --quiet > $out/mb-$p-1gbit.txt 2>&1
done
date > $out/end
