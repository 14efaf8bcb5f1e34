#!/usr/bin/env python3
# mbsum.py FILES...: migbench JSON per file, then medians per label (file name before '-')
import sys, json, os, statistics, collections
keys = [('x', lambda d,p: d['lost_work_x_stopcopy']), ('lost', lambda d,p: p['lost_work_s']), ('sc_lost', lambda d,p: d['stopcopy_lost_work_s']),
        ('total', lambda d,p: p['total_s']), ('sc_tot', lambda d,p: d['stopcopy_total_s']), ('down', lambda d,p: p['downtime_ms']),
        ('st_p50', lambda d,p: p['stall_p50_us']), ('st_p99', lambda d,p: p['stall_p99_us']), ('st_ms', lambda d,p: p['stall_total_ms']),
        ('faults', lambda d,p: p['faults']), ('rides', lambda d,p: p['fetcher_summary']['faults_on_bulk']),
        ('blk_ms', lambda d,p: p['blocktime_ms']), ('f_p50', lambda d,p: p['fault_p50_us']), ('f_p99', lambda d,p: p['fault_p99_us']),
        ('ok', lambda d,p: int(p['verified']))]
agg = collections.defaultdict(lambda: collections.defaultdict(list))
print('%-14s' % 'file' + ''.join('%9s' % k for k,_ in keys))
for f in sys.argv[1:]:
    try: d = json.load(open(f))
    except Exception as e: print(f, e); continue
    for r in d['runs']:
        p = r.get(os.environ.get('METHOD','postcopy'))
        if not p: continue
        vals = []
        for k, fn in keys:
            try: v = fn(d, p)
            except Exception: v = float('nan')
            vals.append(v); agg[os.path.basename(f).split('-')[0]][k].append(v)
        print('%-14s' % os.path.basename(f)[:14] + ''.join('%9.4g' % v for v in vals))
for l, m in sorted(agg.items()):
    print('%-14s' % ('MED ' + l) + ''.join('%9.4g' % statistics.median(m[k]) for k,_ in keys))
