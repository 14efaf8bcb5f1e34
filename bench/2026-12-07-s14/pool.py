#!/usr/bin/env python3
# pool.py DIR...: the hybrid's figures of migbench runs A-*.json / B-*.json, pooled per side (medians)
import json, glob, sys, statistics as S
agg = {'A': [], 'B': []}
for d in sys.argv[1:]:
    for f in sorted(glob.glob(d + '/*.json')):
        r = json.load(open(f))['runs'][0]; h = r['hybrid']; fs = h['fetcher_summary']
        ref = h['pre_ops_per_s'] / 100.0; nb = int(round(h['warm_s'] * 100))
        wl = sum(1 - min(1, x / ref) for x in h['source_timeline'][-nb:]) * 0.01  # work lost during the warm-up
        agg[f.split('/')[-1][0]].append(dict(x=h['lost_work_s'] / r['stopcopy']['lost_work_s'], lost=h['lost_work_s'],
            sc=r['stopcopy']['lost_work_s'], warm_loss=wl, after_stop=h['lost_work_s'] - wl, down=h['downtime_ms'],
            stall_p99_us=h['stall_p99_us'], stall_ms=h['stall_total_ms'], total=h['total_s'], warm=h['warm_s'],
            changed=h['changed_pages'], rides=fs['faults_on_bulk']))
for k, v in agg.items():
    if v:
        print(k, len(v), ' '.join('%s=%.3f' % (m, S.median([r[m] for r in v])) for m in v[0]))
