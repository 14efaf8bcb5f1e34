#!/usr/bin/env python3
# prof.py SCRIPT A B [comm...]: `perf script -F comm,tid,time,ip,sym` samples between absolute times
# A and B: samples per command, then per comm its leaf functions and innermost own frames.
# prof.py SCRIPT A B --incl COMM FUNC...: per FUNC, COMM's samples with FUNC anywhere on the stack.
import collections, sys

def samples(path, a, b):
    for bl in open(path).read().split('\n\n'):
        ls = bl.strip().split('\n')
        if not ls or not ls[0]:
            continue
        h = ls[0].split()
        try:
            t = float(h[-1].rstrip(':'))
        except ValueError:
            continue
        if a <= t < b:
            yield h[0], t, [x.split()[1] for x in ls[1:] if len(x.split()) > 1]

a, b = float(sys.argv[2]), float(sys.argv[3])
S = list(samples(sys.argv[1], a, b))
if sys.argv[4:5] == ['--incl']:
    comm, fns = sys.argv[5], sys.argv[6:]
    mine = [st for c, _, st in S if c == comm]
    print(comm, len(mine))
    for f in fns:
        k = sum(1 for st in mine if any(f in x for x in st))
        print('%5d %4.1f%% %s' % (k, 100 * k / max(len(mine), 1), f))
    sys.exit()
byc = collections.Counter(c for c, _, _ in S)
print('window %.3f s, samples %d' % (b - a, len(S)))
for c, v in byc.most_common(12):
    print('  %6d %5.1f%% %s' % (v, 100 * v / len(S), c))
for comm in sys.argv[4:]:
    n = 0; leaf = collections.Counter(); own = collections.Counter()
    for c, t, st in S:
        if c != comm:
            continue
        n += 1; leaf[st[0] if st else '?'] += 1
        o = next((x for x in st if 'postcopy/postcopy' in x), '?')
        own[o.replace('github.com/postcopy/postcopy/', '')] += 1
    print('## %s samples %d' % (comm, n))
    for k, v in leaf.most_common(18):
        print('%5d %4.1f%% %s' % (v, 100 * v / n, k[:120]))
    print('--- own')
    for k, v in own.most_common(15):
        print('%5d %4.1f%% %s' % (v, 100 * v / n, k[:120]))
