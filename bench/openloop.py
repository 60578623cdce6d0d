#!/usr/bin/env python3
"""Open-loop load: requests at Poisson arrival times, whatever the latency (wrk and other
closed-loop tools slow down when the backends do, which hides overload).

    openloop.py --duration 20 --measure 10 PORT:RATE [PORT:RATE ...]

Sends GET /hostname to each 127.0.0.1:PORT at RATE requests per second for DURATION seconds
and prints, as JSON, one object per port: who answered (the response body) the requests sent
in the last MEASURE seconds.
"""
import argparse
import asyncio
import json
import random


class Pool:
    """Keep-alive HTTP/1.1 connections to one port, opened as concurrency needs them."""

    def __init__(self, port):
        self.port = port
        self.idle = []

    async def get(self):
        while self.idle:
            reader, writer = self.idle.pop()
            if not writer.is_closing():
                return reader, writer
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self):
        reader, writer = await self.get()
        try:
            writer.write(b"GET /hostname HTTP/1.1\r\nHost: svc\r\n\r\n")
            status = (await reader.readline()).split(b" ")[1].decode()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = (await reader.readexactly(length)).decode().strip()
            self.idle.append((reader, writer))
            return body if status == "200" else f"status {status}"
        except Exception as e:  # a broken connection is an answer too, and counted
            writer.close()
            return f"error {type(e).__name__}"


async def drive(port, rate, duration, measure, seed):
    rng = random.Random(seed)
    pool = Pool(port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    counts, tasks, at = {}, [], 0.0

    async def one(counted):
        who = await pool.request()
        if counted:
            counts[who] = counts.get(who, 0) + 1

    while True:
        at += rng.expovariate(rate)
        if at >= duration:
            break
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at >= duration - measure)))
    await asyncio.gather(*tasks)
    return counts


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--measure", type=float, default=10)
    p.add_argument("targets", nargs="+")
    a = p.parse_args()
    jobs = []
    for i, t in enumerate(a.targets):
        port, rate = t.split(":")
        jobs.append(drive(int(port), float(rate), a.duration, a.measure, i + 1))
    print(json.dumps(await asyncio.gather(*jobs)))


asyncio.run(main())
