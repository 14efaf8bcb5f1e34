import sys,collections
lines=open(sys.argv[1]).read().split('\n\n')
blocks=[]
for b in lines:
    ls=b.strip().split('\n')
    if not ls or not ls[0]: continue
    h=ls[0].split()
    blocks.append((h[0],float(h[2].rstrip(':')),h[3],ls[1:]))
start=end=None
for comm,t,ev,st in blocks:
    if 'sendmsg' in ev and comm=='vmm': start=t; break
for comm,t,ev,st in blocks:
    if start and t>start and 'ioctl' in ev and comm=='pagefetcher' and any('Copy' in s for s in st): end=t; break
print('window ms', (end-start)*1e3)
cats=[('gc','gcBgMarkWorker'),('gc','gcStart'),('gc','gcAssist'),('gc','markroot'),('log','hclog'),('handshake','handshake.'),('New','fetcher.New'),('open','link).open'),('newConn','newConn'),('Run','Fetcher).Run'),('clone','clone'),('morestack','morestack'),('sched','findRunnable'),('sched','schedule'),('faultloop','faultLoop'),('demand','demand'),('pagefault','exc_page_fault'),('json','encoding/json')]
c=collections.Counter()
for comm,t,ev,st in blocks:
    if start<=t<=end and 'cpu-clock' in ev:
        s=' '.join(st)
        cat='other'
        for n,k in cats:
            if k in s: cat=n;break
        c[(comm,cat)]+=1
for k,v in sorted(c.items(), key=lambda x:-x[1]): print(v,k)
