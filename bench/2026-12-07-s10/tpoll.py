import os, time, sys
names = ('pagefetcher', 'pageserver', 'vmm')
prev = {}
dumped=False
end = time.time() + float(sys.argv[1])
tick = os.sysconf('SC_CLK_TCK')
while time.time() < end:
    now = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try: comm = open(f'/proc/{pid}/comm').read().strip()
        except Exception: continue
        if comm not in names: continue
        try: tids = os.listdir(f'/proc/{pid}/task')
        except Exception: continue
        for t in tids:
            try: s = open(f'/proc/{pid}/task/{t}/stat').read()
            except Exception: continue
            f = s[s.rindex(')')+2:].split()
            cpu = int(f[11]) + int(f[12]); pol = int(f[38]); prio = int(f[37])
            now[(comm, t)] = (cpu, pol, prio, f[0])
    for k, v in now.items():
        p = prev.get(k)
        if p and v[0] - p[0] >= 3:
            if k[0] in ('pagefetcher','pageserver') and v[1]==1 and v[0]-p[0]>=4 and not dumped:
                pid=[x for x in os.listdir('/proc') if x.isdigit() and os.path.exists(f'/proc/{x}/task/{k[1]}')][0]
                try: print('syscall:', k, open(f'/proc/{pid}/task/{k[1]}/syscall').read().strip(), flush=True)
                except Exception as e: print(e)
                os.kill(int(pid), 3); dumped=True
            print('%.3f %s tid=%s cpu+%dms policy=%d rtprio=%d state=%s' % (time.time(), k[0], k[1], (v[0]-p[0])*1000//tick, v[1], v[2], v[3]), flush=True)
    prev = now
    time.sleep(0.05)
