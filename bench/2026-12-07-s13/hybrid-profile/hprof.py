import collections,sys
blocks=open(sys.argv[1]).read().split('\n\n')
comm=sys.argv[2]; a=float(sys.argv[3]); b=float(sys.argv[4]); depth=int(sys.argv[5]) if len(sys.argv)>5 else 1
S=[]
for bl in blocks:
    ls=bl.strip().split('\n')
    if not ls or not ls[0]: continue
    h=ls[0].split()
    try: t=float(h[2].rstrip(':'))
    except: continue
    S.append((h[0],t,[x.split()[1] for x in ls[1:] if len(x.split())>1]))
t0=S[0][1]
leaf=collections.Counter(); own=collections.Counter(); n=0
for c,t,st in S:
    if c!=comm or not (a<=t-t0<b): continue
    n+=1
    leaf[' < '.join(st[:depth])]+=1
    o=next((x for x in st if 'postcopy/postcopy' in x), '?')
    own[o.replace('github.com/postcopy/postcopy/','')]+=1
print('samples',n)
print('--- leaf')
for k,v in leaf.most_common(25): print('%5d %4.1f%% %s'%(v,100*v/n,k[:220]))
print('--- innermost own frame')
for k,v in own.most_common(20): print('%5d %4.1f%% %s'%(v,100*v/n,k))
