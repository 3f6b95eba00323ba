#!/usr/bin/env python3
"""Per-operation counts from a syscalls-per-op.sh output directory.

The operations are the bench's own count for the workload (increments
checked, or messages delivered), over the same span perf counted.
"""
import collections
import re
import sys

d = sys.argv[1]
log = open(d + "/bench.log").read()
ops = float(re.search(r"(\d+) (?:increments checked|messages, none lost)", log).group(1))
tot = collections.Counter()
threads = collections.defaultdict(collections.Counter)
for line in open(d + "/perf.txt"):
    m = re.match(r"\s*(\S+)-(\d+)\s+([\d,.]+)\s+(?:msec\s+)?(\S+)", line)
    if not m:
        continue
    name, tid, val, ev = m.groups()
    v = float(val.replace(",", ""))
    if v:
        tot[ev] += v
        threads[f"{name}-{tid}"][ev] += v
print(f"{d}: {ops:.0f} operations; load {open(d + '/load').read().split()[-3:]}")
for ev in ["raw_syscalls:sys_enter", "context-switches"]:
    print(f"  {ev:32s} {tot[ev]:10.0f} {tot[ev] / ops:8.3f} per op")
print(f"  {'task-clock (us)':32s} {tot['task-clock'] * 1000:10.0f} {tot['task-clock'] * 1000 / ops:8.1f} per op")
for ev, v in tot.most_common():
    if ev.startswith("syscalls:") and v / ops >= 0.005:
        print(f"    {ev[len('syscalls:sys_enter_'):]:28s} {v:10.0f} {v / ops:8.3f} per op")
print("  threads with more than 5 ms of CPU:")
for t, c in sorted(threads.items(), key=lambda x: -x[1]["task-clock"]):
    if c["task-clock"] > 5:
        print(f"    {t:28s} switches {c['context-switches'] / ops:6.3f}/op, "
              f"system calls {c['raw_syscalls:sys_enter'] / ops:6.3f}/op, {c['task-clock']:8.1f} ms")
