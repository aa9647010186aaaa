#!/usr/bin/env python3
"""Redis CPU per publish: this tree's publish script against another revision's, side by side.

    .venv/bin/python bench/redis_cost.py [--old-ref main] [--events 20000] [--rounds 3]

Starts a private redis-server on a free loopback port (nothing on disk), exports the
``--old-ref`` revision of this repository with ``git archive`` into a temporary
directory, then alternates rounds: in each, one child process per layout (``new`` =
this tree, ``old`` = the export, and the two floors below) publishes ``--events``
100-byte events with ``hub.Publisher`` over 1,000 channels, 200 in flight, after a
warm-up. The child reads redis-server's own CPU (``INFO cpu``, user + sys) just before
and just after the timed publishes; the figure is that delta divided by the events.

Floors, for scale: ``floor-pipelined`` is ``XADD MAXLEN ~`` + ``PUBLISH`` sent back to
back on one connection; ``floor-script`` is the same two commands in one Lua script.
``--history`` sets ``HUB_HISTORY_SIZE`` (and the floors' ``MAXLEN``): at the default
1000 over 1,000 channels no history fills up within a run, so nothing is trimmed;
``--channels 100 --history 100`` fills every history early in the run, so that every
layout trims as a hub that has run for a while does.
Each publish names one channel, with the Mercure door on (the hub's own publishers
always keep what the door needs: the channel's index entry and its trim bookkeeping).

With ``--cluster``, a fifth layout runs this tree on a Redis Cluster of three masters
(``redis+cluster://``): each channel's keys live in that channel's own slot, so the
line gives the CPU of each master (``per_shard``) as well as their sum, which shows
how evenly the load spreads over the shards.

Prints one JSON line per layout per round, then a summary with the median of each
layout and the old/new ratio. The machine may be shared: the ratio of medians from
one run is the figure to quote, with the absolute numbers beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.servers import free_port  # noqa: E402

#: Run by each child with ``sys.path[0]`` set to the tree under test.
CHILD = r"""
import asyncio, json, sys
import redis.asyncio
mode, url, events, channels, inflight = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
shards = sys.argv[6].split(",")  # the redis-servers whose CPU counts (a cluster's masters)
history = int(sys.argv[7])
data = b"x" * 100

async def cpu(client):
    info = await client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]

async def main():
    probes = [redis.asyncio.Redis.from_url(shard) for shard in shards]
    # No braces: today's tree refuses them (channels pick their own slots), and on one
    # Redis no layout needs a hash tag.
    prefix = "cost-%s:" % mode
    if mode in ("new", "old", "new-cluster"):
        import hub
        from hub.config import Settings
        where = hub.__file__
        publisher = hub.Publisher.from_url(url, Settings(key_prefix=prefix, history_size=history))

        async def one(i):
            await publisher.publish(f"c{i % channels}", data)
    else:
        from hub.store.lane import Lane
        where = mode
        client = redis.asyncio.Redis.from_url(url)
        lane = Lane.for_client(client)
        src = ("redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', ARGV[1]) "
               "redis.call('PUBLISH', KEYS[2], ARGV[1]) return 1")
        sha = await lane.call("SCRIPT", "LOAD", src)

        async def one(i):
            stream, live = f"{prefix}s:c{i % channels}", f"{prefix}l:c{i % channels}"
            if mode == "floor-script":
                await lane.call("EVALSHA", sha, 2, stream, live, data, history)
            else:
                first = lane.call("XADD", stream, "MAXLEN", "~", history, "*", "d", data)
                await asyncio.gather(first, lane.call("PUBLISH", live, data))

    async def burst(n):
        it = iter(range(n))

        async def worker():
            for i in it:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(inflight)))

    await burst(min(events, 5000))  # warm-up: streams created, scripts loaded
    before = [await cpu(probe) for probe in probes]
    await burst(events)
    after = [await cpu(probe) for probe in probes]
    per_shard = [round(1e6 * (a - b) / events, 2) for a, b in zip(after, before)]
    print(json.dumps({"layout": mode, "us_per_publish": round(sum(per_shard), 2),
                      "per_shard": per_shard, "events": events, "code": where}))

asyncio.run(main())
"""

LAYOUTS = ("new", "old", "floor-script", "floor-pipelined")


def export(ref: str, into: Path) -> Path:
    """The ``hub`` package of revision ``ref`` of this repository, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "hub"], check=True, capture_output=True
    ).stdout
    tar_path = into / "old.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into / "old", filter="data")
    return into / "old"


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.05)


def start_cluster(workdir: Path) -> tuple[list[subprocess.Popen[bytes]], str, list[str]]:
    """Three masters, no replicas, on free ports whose bus port (+10000) is free too;
    return the processes, the hub's URL, and each master's own URL."""
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port < 55535 and port not in ports and _bindable(port + 10000):
            ports.append(port)
    procs = []
    for port in ports:
        (workdir / str(port)).mkdir()
        options = ["--cluster-enabled", "yes", "--save", "", "--appendonly", "no"]
        where = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir / str(port))]
        procs.append(
            subprocess.Popen(["redis-server", *where, *options], stdout=subprocess.DEVNULL)
        )
    masters = [f"redis://127.0.0.1:{port}/0" for port in ports]
    for url in masters:
        _wait(lambda u=url: redis.Redis.from_url(u).ping())
    nodes = [f"127.0.0.1:{p}" for p in ports]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
    )
    for url in masters:
        _wait(lambda u=url: redis.Redis.from_url(u).cluster("info")["cluster_state"] == "ok")
    return procs, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports), masters


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            sys.exit("the Redis Cluster did not come up")
        time.sleep(0.05)


def run_child(
    tree: Path, mode: str, url: str, shards: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n" + CHILD
    argv = [mode, url, str(args.events), str(args.channels), str(args.inflight), ",".join(shards)]
    argv.append(str(args.history))
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-ref", default="main", help="git revision to compare with")
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--history",
        type=int,
        default=1000,
        help="HUB_HISTORY_SIZE (the floors' MAXLEN); a small one makes every layout trim "
        "within the run, as a long-running hub does",
    )
    ap.add_argument(
        "--cluster", action="store_true", help="also this tree on a 3-master Redis Cluster"
    )
    args = ap.parse_args(argv)
    layouts = LAYOUTS + (("new-cluster",) if args.cluster else ())
    with tempfile.TemporaryDirectory(prefix="hub-cost-") as tmp:
        old = export(args.old_ref, Path(tmp))
        proc, url = start_redis(Path(tmp))
        procs = [proc]
        where = dict.fromkeys(LAYOUTS, (url, [url]))
        if args.cluster:
            cluster_procs, cluster_url, masters = start_cluster(Path(tmp))
            procs += cluster_procs
            where["new-cluster"] = (cluster_url, masters)
        results: dict[str, list[float]] = {layout: [] for layout in layouts}
        try:
            for _ in range(args.rounds):
                for layout in layouts:
                    tree = old if layout == "old" else ROOT
                    line = run_child(tree, layout, *where[layout], args)
                    results[layout].append(line["us_per_publish"])
                    print(json.dumps(line), flush=True)
                    for shard in where[layout][1]:
                        redis.Redis.from_url(shard).flushall()
        finally:
            for each in procs:
                each.terminate()
                each.wait(10)
    medians = {layout: statistics.median(v) for layout, v in results.items()}
    summary = {
        "summary": "redis-server CPU us per publish (median of rounds)",
        **{layout: round(m, 2) for layout, m in medians.items()},
        "old_over_new": round(medians["old"] / medians["new"], 2),
        "old_ref": args.old_ref,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
