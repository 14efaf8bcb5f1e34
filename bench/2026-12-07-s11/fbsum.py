#!/usr/bin/env python3
# fbsum.py FILES...: per benchmark and label (file name before '-'), medians of every metric over the files
import sys, re, statistics, collections, os
data = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sys.argv[1:]:
    label = os.path.basename(f).split('-')[0]
    for line in open(f):
        if not line.startswith('Benchmark'): continue
        parts = line.split('\t')
        name = parts[0].strip()
        for p in parts[2:]:
            p = p.strip()
            m = re.match(r'([-\d.e+]+)\s+(\S+)', p)
            if m: data[(name, m.group(2))][label].append(float(m.group(1)))
labels = sorted({l for v in data.values() for l in v})
print('%-40s %-22s ' % ('bench', 'metric') + ' '.join('%22s' % l for l in labels))
for (name, key), v in sorted(data.items()):
    cells = []
    for l in labels:
        xs = v.get(l, [])
        cells.append('%22s' % ('%.4g (n=%d)' % (statistics.median(xs), len(xs)) if xs else '-'))
    print('%-40s %-22s ' % (name[:40], key[:22]) + ' '.join(cells))
