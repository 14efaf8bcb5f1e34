# offcpu.py TXT TID... : off-CPU time of threads by reason (stack), from perf script of sched_switch -g
import re,sys,collections
path=sys.argv[1]; tids=sys.argv[2:]
events=[];cur=None
for l in open(path):
    l=l.rstrip('\n')
    if not l.strip():
        if cur: events.append(cur); cur=None
        continue
    m=re.match(r'\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)',l)
    if m and not l.startswith('\t'):
        if cur: events.append(cur)
        cur={'t':float(m[4]),'ev':m[5],'tr':m[6],'stack':[]}
        continue
    if cur is not None: cur['stack'].append(l.strip().split(' ',1)[-1])
if cur: events.append(cur)
skip=('__','schedule','futex','do_','entry','x64','ksys','vfs','sock','tcp','inet','ep_','hrtimer','exit_to','irqentry','asm_','sysvec','restore','poll_','wait_woken','sk_wait')
for who in tids:
    off={}; agg=collections.defaultdict(list); woke={}; delay=[]
    for e in events:
        if e['ev']=='sched:sched_wakeup':
            m=re.search(r'pid=(\d+)',e['tr'])
            if m and m[1]==who: woke[who]=e['t']
            continue
        if e['ev']!='sched:sched_switch': continue
        m=re.search(r'prev_pid=(\d+).*prev_state=(\S+).*next_pid=(\d+)',e['tr'])
        if not m: continue
        if m[1]==who:
            st=[s for s in e['stack'] if not s.startswith(skip)]
            off[who]=(e['t'],m[2]+' '+' < '.join(st[:int(__import__('os').environ.get('DEPTH','3'))]))
        elif m[3]==who:
            if who in off:
                t0,key=off.pop(who); agg[key].append(e['t']-t0)
            if who in woke: delay.append(e['t']-woke.pop(who))
    delay.sort()
    print('== %s: wakeup->run delay n=%d max=%.2fms p99=%.2fms'%(who,len(delay),delay[-1]*1e3 if delay else 0,delay[int(len(delay)*0.99)]*1e3 if delay else 0))
    for k,v in sorted(agg.items(), key=lambda kv:-max(kv[1]))[:6]:
        v.sort()
        print('  n=%d max=%.2fms sum=%.0fms  %s'%(len(v),v[-1]*1e3,sum(v)*1e3,k[:140]))
