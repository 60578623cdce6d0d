#!/usr/bin/env python3
"""Open-loop latency probe: GET requests at a fixed rate (Poisson arrivals) over a pool of
keep-alive connections, whatever the latency, then the latency distribution.

    latency.py --port 10003 --host svc --rate 1000 --duration 20

Prints one JSON object: requests, errors, p50/p90/p99/p999/max in milliseconds.
"""
import argparse
import asyncio
import gc
import json
import random
import time


async def one(pool, port, host, lat, errors):
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    try:
        writer.write(f"GET /hostname HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status = (await reader.readline()).split(b" ")[1]
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        lat.append((time.perf_counter() - start) * 1000)
        if status != b"200":
            errors.append(status.decode())
        pool.append((reader, writer))
    except Exception as e:  # a broken connection is an error, and is not reused
        errors.append(type(e).__name__)
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="svc")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=20)
    a = ap.parse_args()
    # The collector's pauses would read as the proxy's latency.
    gc.disable()
    pool, lat, errors, tasks = [], [], [], []
    loop = asyncio.get_running_loop()
    end = loop.time() + a.duration
    at = loop.time()
    while at < end:
        at += random.expovariate(a.rate)
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(pool, a.port, a.host, lat, errors)))
    await asyncio.gather(*tasks)
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None
    print(json.dumps({"requests": len(lat) + len(errors), "errors": len(errors),
                      "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                      "p999_ms": q(0.999), "max_ms": round(lat[-1], 3) if lat else None}))


asyncio.run(main())
