"""Holds N connections, each sending HEAD_BYTES of an unfinished request head (1 KiB header
lines, no final blank line), then waits HOLD seconds and closes them all. Prints when each phase
ends so the caller can read the proxy's RSS at the right moments.

    python3 bench/slowloris.py HOST:PORT [N] [HEAD_BYTES] [HOLD]
"""
import asyncio
import sys


async def one(host, port, head_bytes, held, release):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        return "refused"
    line = b"x-pad: " + b"a" * 1017 + b"\r\n"
    w.write(b"GET / HTTP/1.1\r\nhost: svc\r\n")
    sent = 0
    try:
        while sent + len(line) <= head_bytes:
            w.write(line)
            sent += len(line)
            await w.drain()
    except OSError:
        pass
    held.append(w)
    await release.wait()
    w.close()
    return "held"


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    head = int(sys.argv[3]) if len(sys.argv) > 3 else 60 * 1024
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    held, release = [], asyncio.Event()
    tasks = [asyncio.create_task(one(host, int(port), head, held, release)) for _ in range(n)]
    while len(held) < n and not all(t.done() for t in tasks if t.done()) or len(held) < n:
        await asyncio.sleep(0.1)
        if sum(1 for t in tasks if t.done()) + len(held) >= n:
            break
    print(f"sent {len(held)} heads", flush=True)
    await asyncio.sleep(hold)
    print("holding done", flush=True)
    release.set()
    await asyncio.gather(*tasks)
    print("closed", flush=True)


asyncio.run(main())
