#!/usr/bin/env python3
"""What key order costs a stream on several channels, beside a stream on one.

    .venv/bin/python bench/hold_back.py [--events 2000] [--rate 200] [--cluster]

Starts a private redis-server on a free loopback port (with ``--cluster``, three
masters), one hub node (``hub serve``) on it, and two SSE streams on that node: one on
``c0`` alone, one on ``c0``, ``c1`` and ``c2`` (three channels whose slots are on three
different masters of a cluster). A ``hub.Publisher`` publishes ``--events`` events
round robin over the three channels, ``--rate`` a second, each carrying the time it
was sent. The figure is arrival minus send (one clock: all on loopback) for the ``c0``
events, which both streams get: p50, p99 and max of each, side by side. The stream on
three channels takes an event only once every shard has passed its millisecond
(hub/delivery/order.py); the stream on one takes it as it comes.

Then, in this process, the per-delivery work that the other design the Redis Cluster
issue named would add: a per-client cursor naming a position per shard makes each
client's ``id:`` line its own, so each event is framed per client instead of once.
Timed: handing 1,000 clients one shared frame per event, against building each a
frame with its own three-position ``id:`` line. Only that part of the alternative is
measured (it was not built).

Prints one JSON line per measurement. The machine may be shared: compare the two
streams of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.redis_cost import start_cluster, start_redis  # noqa: E402
from bench.servers import HUB_PREFIX, start_hub  # noqa: E402
from hub import Publisher, Settings  # noqa: E402


def channels_on_three_masters() -> list[str]:
    """``c0``-like names whose slots fall in the three ranges ``redis-cli --cluster
    create`` gives three masters."""
    from redis.crc import key_slot

    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    found: list[str] = []
    for low, high in ranges:
        found.append(
            next(
                f"c{i}"
                for i in range(10_000)
                if low <= key_slot(f"c{i}".encode()) <= high and f"c{i}" not in found
            )
        )
    return found


async def listen(
    url: str, channels: list[str], arrivals: dict[str, float], ready: asyncio.Event
) -> None:
    query = "&".join(f"channel={c}" for c in channels)
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("GET", f"{url}/events?{query}") as response,
    ):
        ready.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                now = time.time()
                tag, _, _sent = line[6:].partition(" ")
                arrivals[tag] = now


def summary(name: str, delays: list[float]) -> dict[str, Any]:
    delays = sorted(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return {
        "stream": name,
        "events": len(delays),
        "p50_ms": round(1000 * statistics.median(delays), 3),
        "p99_ms": round(1000 * p99, 3),
        "max_ms": round(1000 * delays[-1], 3),
    }


async def measure(redis_url: str, workdir: Path, events: int, rate: float) -> None:
    names = channels_on_three_masters()
    hub = start_hub(redis_url, workdir)
    url = f"http://127.0.0.1:{hub.port}"
    one: dict[str, float] = {}
    three: dict[str, float] = {}
    ready = [asyncio.Event(), asyncio.Event()]
    tasks = [
        asyncio.ensure_future(listen(url, names[:1], one, ready[0])),
        asyncio.ensure_future(listen(url, names, three, ready[1])),
    ]
    publisher = Publisher.from_url(redis_url, Settings(key_prefix=HUB_PREFIX))
    sent: dict[str, float] = {}
    try:
        for event in ready:
            await asyncio.wait_for(event.wait(), 10)
        await asyncio.sleep(0.5)  # both subscriptions confirmed (the preamble came first)
        start = time.monotonic()
        for i in range(events):
            channel = names[i % 3]
            tag = f"{channel}/{i}"
            sent[tag] = time.time()
            await publisher.publish(channel, f"{tag} {sent[tag]}")
            pause = start + (i + 1) / rate - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        await asyncio.sleep(1.0)  # the last ones arrive
    finally:
        await publisher.aclose()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.stop()
    mine = [t for t in sent if t.startswith(names[0] + "/")]
    both = [t for t in mine if t in one and t in three]
    print(json.dumps(summary(f"{names[0]} alone", [one[t] - sent[t] for t in both])))
    print(json.dumps(summary(f"{'+'.join(names)}", [three[t] - sent[t] for t in both])))
    others = [t for t in sent if not t.startswith(names[0] + "/") and t in three]
    print(
        json.dumps(
            summary(f"{'+'.join(names)}, its other channels", [three[t] - sent[t] for t in others])
        )
    )
    missing = len(mine) - len(both)
    if missing:
        print(json.dumps({"not received by both": missing}))


def framing(clients: int = 1000, events: int = 300) -> None:
    """ns per delivery: one shared frame, against a frame with a per-client id line."""
    body = b"event: message\ndata: " + b"x" * 100 + b"\n\n"
    shared = b"id: 1700000000000-0.k2x9abcdefgh\n" + body
    cursors = [[1700000000000 + c, 1700000000001 + c, 1700000000002 + c] for c in range(clients)]
    out: list[bytes] = []
    t0 = time.perf_counter()
    for _ in range(events):
        out.clear()
        for _client in range(clients):
            out.append(shared)
    once = time.perf_counter() - t0
    t0 = time.perf_counter()
    for e in range(events):
        out.clear()
        shard = e % 3
        for cursor in cursors:
            cursor[shard] += 1
            line = f"id: {cursor[0]}-0.{cursor[1]}-0.{cursor[2]}-0\n".encode()
            out.append(line + body)
    each = time.perf_counter() - t0
    deliveries = clients * events
    print(
        json.dumps(
            {
                "framing": f"{clients} clients x {events} events",
                "shared_frame_ns_per_delivery": round(1e9 * once / deliveries, 1),
                "per_client_id_ns_per_delivery": round(1e9 * each / deliveries, 1),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--cluster", action="store_true", help="on a 3-master Redis Cluster")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-hold-") as tmp:
        workdir = Path(tmp)
        if args.cluster:
            procs, url, _masters = start_cluster(workdir)
        else:
            proc, url = start_redis(workdir)
            procs = [proc]
        try:
            print(json.dumps({"redis": "cluster of 3 masters" if args.cluster else "one"}))
            asyncio.run(measure(url, workdir, args.events, args.rate))
        finally:
            for p in procs:
                p.kill()
                p.wait()
    framing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
