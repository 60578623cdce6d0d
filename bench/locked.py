#!/usr/bin/env python3
"""Locked read-modify-write instructions per request, from a callgrind dump made with
--dump-instr=yes (bench/instructions.sh). Each costs about 5 ns on this machine (a full
barrier), so they weigh far more than their share of the instruction count.

    python3 bench/locked.py DUMP REQUESTS [TOP]

Finds every `lock`-prefixed instruction (and `xchg` with memory, locked implicitly) in each
object the dump covers with objdump, sums how often callgrind saw each execute, and prints the
total per request and the functions they sit in. Also prints the hot code: the 64-byte lines
of code run in at least half of the requests, the request path's footprint in the
instruction cache."""
import collections
import re
import subprocess
import sys


def locked_addresses(path):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                         capture_output=True, text=True).stdout
    found, fn = {}, None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:", line)
        if m:
            fn = m.group(2)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(lock \S+|xchg)\s+(\S*)", line)
        if m and (m.group(2) != "xchg" or "(" in m.group(3)):
            found[int(m.group(1), 16)] = (m.group(2), fn)
    return found


def executed(dump):
    """Executions per instruction address, per object (self cost only)."""
    counts = collections.defaultdict(collections.Counter)
    names, obj, addr, call_line = {}, None, 0, False
    for line in open(dump):
        if line.startswith(("ob=", "cob=")):
            m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("ob="):
                obj = names.get(m.group(1))
            continue
        if line.startswith("calls="):
            call_line = True  # the next position line carries the call's inclusive cost
            continue
        if line[:1] in "0123456789+-*":
            parts = line.split()
            a = parts[0]
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] in "+-":
                step = int(a[1:], 16) if a[1:].startswith("0x") else int(a[1:])
                addr += step if a[0] == "+" else -step
            if call_line:
                call_line = False
            elif len(parts) >= 3:
                counts[obj][addr] += int(parts[2])
    return counts


def main():
    dump, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    total, by_fn = 0, collections.Counter()
    counts_by_obj = executed(dump)
    for obj, counts in counts_by_obj.items():
        if not obj or not obj.startswith("/"):
            continue
        for a, (op, fn) in locked_addresses(obj).items():
            n = counts.get(a, 0)
            total += n
            if n:
                by_fn[(op, fn)] += n
    hot = {(obj, a // 64) for obj, c in counts_by_obj.items() for a, n in c.items()
           if n >= requests / 2}
    print(f"locked instructions/request={total / requests:.1f} "
          f"hot code lines={len(hot)} ({len(hot) * 64 / 1024:.0f} KiB)")
    for (op, fn), n in by_fn.most_common(top):
        print(f"  {n / requests:5.2f}  {op:13} {fn[:110]}")


if __name__ == "__main__":
    main()
