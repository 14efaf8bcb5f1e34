#!/bin/bash
# wsab.sh ROUNDS MODES DIR... : alternate binaries dirs for ws.sh; prints label mode touch stalls resident cpu(server fetcher)
# CPUS=0 pins everything to cpu 0
rounds=$1; modes=$2; shift 2
for r in $(seq 1 $rounds); do for d in "$@"; do for m in $modes; do
  out=$(B=$d bash "$(dirname "$0")/ws.sh" $m ${CPUS:-0-1} 2>&1 | grep -E "^$m |^cpu" | tr '\n' ' ')
  echo "$(basename $d) $m $out" | python3 -c "
import sys,ast,re
l=sys.stdin.read().strip(); lab,m,rest=l.split(' ',2)
c=re.search(r'cpu server ([\d.]+) ([\d.]+) fetcher ([\d.]+) ([\d.]+)',rest)
d=ast.literal_eval(rest[rest.index('{'):rest.rindex('}')+1])
print(lab,m,'touch %.0f stalls %d resident %.0f cpu_srv %.2f cpu_f %.2f'%(d['touch_ms'],d['stall_count'],d['handler_closed_ms'],float(c[1])+float(c[2]),float(c[3])+float(c[4])))"
done; done; done
