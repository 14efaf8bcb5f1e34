import json,glob,statistics,collections,sys
agg=collections.defaultdict(lambda: collections.defaultdict(list))
for f in sys.argv[1:]:
    d=json.load(open(f)); r=d['runs'][0]; h=r['hybrid']; fs=h['fetcher_summary']
    ref=h['pre_ops_per_s']/100.0
    L=lambda xs: sum(1-min(1,x/ref) for x in xs)*0.01
    nb=int(round(h['warm_s']*100))
    row=dict(x=h['lost_work_x_stopcopy'],lost=h['lost_work_s'],sc=r['stopcopy']['lost_work_s'],warm=h['warm_s'],wloss=L(h['source_timeline'][-nb:]),total=h['total_s'],down=h['downtime_ms'],faults=h['faults'],rides=fs.get('faults_on_bulk'),fp50=fs['fault_latency_s']['p50']*1e3,fp99=fs['fault_latency_s']['p99']*1e3,stall_ms=h['stall_total_ms'],changed=h['changed_pages'],ok=h['verified'])
    print(f.split('/')[-1], ' '.join('%s=%.4g'%(k,v) for k,v in row.items()))
    for k,v in row.items(): agg[f.split('/')[-1][0]][k].append(v)
for l,m in sorted(agg.items()): print('MED',l,' '.join('%s=%.4g'%(k,statistics.median(v)) for k,v in m.items()))
