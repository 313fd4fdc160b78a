#!/usr/bin/env python3
"""ctx-per-op.py MOUNT PID... - context switches and time per file operation on a kadalu mount.

Creates 2000 4 KiB files in MOUNT/ctx, then (after drop_caches) stats, reads and unlinks
them, and prints per operation the context switches summed over every thread of the
given PIDs (the kadalu-mount and kadalu-server processes) and the mean wall time. Needs
root (drop_caches). Context switches are steadier than wall time on a noisy VM.
"""
import os, sys, time, glob
mnt, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
def ctx():
    t=0
    for pid in pids:
        for st in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                for l in open(st):
                    if 'ctxt_switches' in l: t+=int(l.split()[1])
            except FileNotFoundError: pass
    return t
d=os.path.join(mnt,"ctx"); os.makedirs(d, exist_ok=True)
N=2000
c0=ctx(); t0=time.time()
for i in range(N):
    fd=os.open(f"{d}/f{i}", os.O_WRONLY|os.O_CREAT|os.O_EXCL, 0o644); os.write(fd, b"x"*4096); os.close(fd)
c1=ctx(); t1=time.time()
os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
c2=ctx(); t2=time.time()
for i in range(N): os.stat(f"{d}/f{i}")
c3=ctx(); t3=time.time()
os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
c4=ctx(); t4=time.time()
for i in range(N):
    fd=os.open(f"{d}/f{i}", os.O_RDONLY); os.read(fd, 8192); os.close(fd)
c5=ctx(); t5=time.time()
for i in range(N): os.unlink(f"{d}/f{i}")
c6=ctx(); t6=time.time()
for name,(ca,cb,ta,tb) in {"create":(c0,c1,t0,t1),"stat":(c2,c3,t2,t3),"read":(c4,c5,t4,t5),"unlink":(c5,c6,t5,t6)}.items():
    print(f"{name}: {(cb-ca)/N:.1f} ctxsw/op {1e6*(tb-ta)/N:.0f} us/op")
