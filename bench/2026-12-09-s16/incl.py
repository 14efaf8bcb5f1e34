import collections,sys
blocks=open(sys.argv[1]).read().split('\n\n')
a=float(sys.argv[2]); b=float(sys.argv[3]); comm=sys.argv[4]; fns=sys.argv[5:]
C=collections.Counter(); n=0
for bl in blocks:
    ls=bl.strip().split('\n')
    if not ls or not ls[0]: continue
    h=ls[0].split()
    try: t=float(h[-1].rstrip(':'))
    except: continue
    if not (a<=t<b) or h[0]!=comm: continue
    st=[x.split()[1] for x in ls[1:] if len(x.split())>1]
    n+=1
    for f in fns:
        if any(f in x for x in st): C[f]+=1
print(comm,n)
for f in fns: print('%5d %4.1f%% %s'%(C[f],100*C[f]/max(n,1),f))
