"""S8: as many streams as this machine lets a process hold, on one process and on two.

    python -m bench.many_streams [--redis-url URL] [--most 50000] [--seconds 5]
                                 [--no-nchan] [--no-workers] [--baseline DIR]
                                 [--own-channels]

The goal is 50,000 streams on one process and 100,000 on ``hub serve --workers 2``. A
process here holds at most the hard ``RLIMIT_NOFILE`` in descriptors (20,000 on the VM
of bench/RESULTS.md; raising it takes CAP_SYS_RESOURCE, which the sandbox drops), and
so does each load tool. So this runs what the limit allows, and says so:

- one process, the hub and then Nchan: ``min(most, hard - 1,000)`` streams;
- ``hub serve --workers 2``: ``2 x min(most, hard - 2,000)`` streams, from one
  ``sseload`` per worker, each from a loopback address of its own (``SSELOAD_SOURCE``):
  one address has about 28,000 ephemeral ports.

All streams follow one channel (with ``--own-channels``, each stream a channel of its
own, as when each user or each answer has one; then only the set-up is measured, there
being no one publish that reaches every stream). For each server it reports the time to open them
(``sseload``'s connects, then until the server is idle again: every stream set up), the
RSS per stream of the server's processes, and, over ``--seconds`` at one publish a
second, how long each publish took to reach each stream (p50, p99, max; the p99 of
several ``sseload`` is the largest of theirs), and the CPU the server's processes spent
opening and setting up the streams, per stream. ``--baseline DIR`` measures the hub of
another checkout (an older commit: ``git archive <commit> | tar -x -C DIR``) right after
this one, on one process, in the same run. ``sseload``'s latency histogram ends at
409.6 ms: a p99 beyond it reads as the maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from . import fanout
from .scenarios import HERE, _cpu, _fresh, quiesce
from .servers import Server, cleanup_redis, nchan_missing, start_hub, start_nchan

#: Descriptors a server process keeps for itself beside its streams (listening socket,
#: Redis, logs, the interpreter's own) and, with workers, the spread between them.
SPARE_ONE, SPARE_EACH = 1_000, 2_000


def sizes(most: int) -> tuple[int, int]:
    """Streams for one process and for two workers, under the hard descriptor limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = most + SPARE_EACH if hard == resource.RLIM_INFINITY else hard
    return min(most, hard - SPARE_ONE), 2 * min(most, hard - SPARE_EACH)


def _rss_kib(pids: list[int]) -> int:
    return sum(fanout.rss_kib(p) for p in pids)


def measure(
    server: Server, conns: int, *, clients: int, seconds: float, own_channels: bool = False
) -> dict[str, Any]:
    """``conns`` streams on one channel (or each on its own) from ``clients`` sseloads;
    see the module's text."""
    own = server.server_pids
    before = _rss_kib(own)
    cpu0 = _cpu(own)
    channel = _fresh("many")
    path = server.sub_path(channel)
    per = conns // clients
    t0 = time.perf_counter()
    loads = []
    for k in range(clients):
        env = dict(os.environ, SSELOAD_SOURCE=f"127.0.0.{k + 1}")
        # sseload puts its client number where the path says {i}.
        mine = server.sub_path(f"{channel}-{k}-{{i}}") if own_channels else path
        cmd = [fanout.build_sseload(), "127.0.0.1", str(server.port), mine, str(per), "900"]
        loads.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    opened = []
    for load in loads:
        assert load.stderr is not None
        opened.append(load.stderr.readline().decode().strip())
    connected_s = time.perf_counter() - t0
    quiesce(server, limit=300)
    ready_s = time.perf_counter() - t0
    after = _rss_kib(own)
    set_up_cpu = _cpu(own) - cpu0
    published: dict[str, Any] = {}
    if not own_channels:
        cmd = [sys.executable, str(HERE / "ssepub.py"), server.pub_url(channel), "1", str(seconds)]
        cmd += ["--body", server.pub_body(channel)]
        for header in server.pub_headers():
            cmd += ["--header", header]
        pub = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        published = json.loads(pub.stdout or "{}")
        time.sleep(2.0)  # the last publish reaches the last stream
    outs = []
    for load in loads:
        load.send_signal(signal.SIGTERM)
        out, _ = load.communicate(timeout=60)
        outs.append(json.loads(out))
    held = sum(o["connections"] - o["closed_by_peer"] for o in outs)
    sent = int(published.get("sent", 0))
    events = sum(int(o["events"]) for o in outs)
    return {
        "streams": held,
        "failed": sum(o["failed"] for o in outs),
        "seconds_to_connect": round(connected_s, 2),
        "seconds_to_set_up": round(ready_s, 2),
        "kib_per_stream": round((after - before) / max(held, 1), 2),
        "cpu_us_per_stream_set_up": round(set_up_cpu * 1e6 / max(held, 1), 1),
        "rss_mib": round(after / 1024, 1),
        "published": sent,
        "delivered_ratio": round(events / (sent * held), 4) if sent and held else None,
        "p50_ms": max(o["p50_ms"] for o in outs) if sent else None,
        "p99_ms": max(o["p99_ms"] for o in outs) if sent else None,
        "max_ms": max(o["max_ms"] for o in outs) if sent else None,
        "sseload": opened,
    }


def run(
    redis_url: str,
    workdir: Path,
    *,
    most: int,
    seconds: float,
    nchan: bool,
    workers: bool,
    baseline: Path | None = None,
    own_channels: bool = False,
) -> dict[str, Any]:
    """S8 on the hub, on the ``baseline`` checkout's hub if given, on Nchan and on the
    hub with two workers; results by server."""
    one, two = sizes(most)
    made: dict[str, Any] = {"limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
    kinds: list[tuple[str, Any, int, int]] = [
        ("hub", lambda: start_hub(redis_url, workdir), one, 1)
    ]
    if baseline is not None:
        old = partial(start_hub, redis_url, workdir, source=baseline)
        kinds.append((f"hub at {baseline}", old, one, 1))
    if nchan:
        kinds.append(("nchan", lambda: start_nchan(redis_url, workdir, nofile=one + 500), one, 1))
    if workers:
        kinds.append(("hub --workers 2", lambda: start_hub(redis_url, workdir, workers=2), two, 2))
    for name, start, conns, clients in kinds:
        print(f"S8 {name}: {conns} streams", file=sys.stderr, flush=True)
        server = start()
        try:
            made[name] = measure(
                server, conns, clients=clients, seconds=seconds, own_channels=own_channels
            )
        finally:
            server.stop()
            cleanup_redis(redis_url)
        print(json.dumps(made[name]), file=sys.stderr, flush=True)
    return made


def table(made: dict[str, Any]) -> str:
    """The Markdown table of one run, one row per server."""
    lines = [
        "| server | streams | s to connect | s to set up | CPU us / stream set up "
        "| KiB RSS / stream | p50 ms | p99 ms | max ms | delivered |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in made.items():
        if isinstance(r, dict):
            lines.append(
                f"| {name} | {r['streams']:,} | {r['seconds_to_connect']} | "
                f"{r['seconds_to_set_up']} | {r['cpu_us_per_stream_set_up']} | "
                f"{r['kib_per_stream']} | {r['p50_ms']} | "
                f"{r['p99_ms']} | {r['max_ms']} | {r['delivered_ratio']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.many_streams", description=__doc__)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--most", type=int, default=50_000, help="streams per process at most")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--no-nchan", action="store_true")
    ap.add_argument("--no-workers", action="store_true")
    ap.add_argument("--baseline", type=Path, help="also the hub of this checkout, one process")
    ap.add_argument(
        "--own-channels", action="store_true", help="each stream on a channel of its own"
    )
    a = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    nchan = not a.no_nchan and nchan_missing() is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-many-"))
    made = run(
        a.redis_url,
        workdir,
        most=a.most,
        seconds=a.seconds,
        nchan=nchan,
        workers=not a.no_workers,
        baseline=a.baseline,
        own_channels=a.own_channels,
    )
    print(json.dumps(made, indent=2))
    print()
    print(f"RLIMIT_NOFILE hard limit {made['limit']}, {os.cpu_count()} CPUs")
    print()
    print(table(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
