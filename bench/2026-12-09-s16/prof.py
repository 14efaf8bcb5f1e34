import collections,sys
# prof.py SCRIPT A B [comm...]: samples between absolute times A and B
blocks=open(sys.argv[1]).read().split('\n\n')
a=float(sys.argv[2]); b=float(sys.argv[3]); comms=sys.argv[4:]
S=[]
for bl in blocks:
    ls=bl.strip().split('\n')
    if not ls or not ls[0]: continue
    h=ls[0].split()
    try: t=float(h[-1].rstrip(':'))
    except: continue
    if not (a<=t<b): continue
    S.append((h[0],t,[x.split()[1] for x in ls[1:] if len(x.split())>1]))
byc=collections.Counter(c for c,_,_ in S)
print('window %.3f s, samples %d'%(b-a,len(S)))
for c,v in byc.most_common(12): print('  %6d %5.1f%% %s'%(v,100*v/len(S),c))
for comm in comms:
    n=0; leaf=collections.Counter(); own=collections.Counter()
    for c,t,st in S:
        if c!=comm: continue
        n+=1; leaf[st[0] if st else '?']+=1
        o=next((x for x in st if 'postcopy/postcopy' in x), '?')
        own[o.replace('github.com/postcopy/postcopy/','')]+=1
    print('## %s samples %d'%(comm,n))
    for k,v in leaf.most_common(18): print('%5d %4.1f%% %s'%(v,100*v/n,k[:120]))
    print('--- own')
    for k,v in own.most_common(15): print('%5d %4.1f%% %s'%(v,100*v/n,k[:120]))
