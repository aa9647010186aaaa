"""CPU per published event over HTTP, servers side by side in one run.

    python -m bench.publish_cost [--redis-url URL] [--rounds 4] [--seconds 3]
                                 [--batch 100] [--baseline DIR] [--no-nchan]

Starts the hub (this tree), nginx + Nchan and, with ``--baseline DIR``, a second hub
from another checkout (``git archive <commit> | tar -x -C DIR``), all on one Redis;
then runs ApacheBench (``ab -k -c 8``, a C client) against each in turn, round after
round, so that a shared machine's ups and downs fall on all of them alike. For each
it reads the CPU time of the server process and of redis-server from /proc around
its own runs only, and divides by the events published:

- ``hub batch``: POST /publish with a JSON array of ``--batch`` events per request;
- ``hub single`` (and ``baseline single``): one event per request;
- ``nchan single``: one event per request (Nchan has no batch publish).

Every event is 100 bytes of data, as in S5. One JSON line per round on stderr, then
a Markdown table with the ratios to Nchan's single publish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fanout
from .scenarios import quiesce
from .servers import Server, cleanup_redis, nchan_missing, start_hub, start_nchan

DATA = "x" * 100


@dataclass
class Target:
    """One way of publishing to one server, and what its runs cost."""

    name: str
    server: Server
    body: bytes
    content_type: str
    events_per_request: int
    events: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.pub_url("pubcost")


def targets_for(servers: dict[str, Server], batch: int) -> list[Target]:
    """The publish kinds measured, each on its server."""
    one = json.dumps({"channel": "pubcost", "data": DATA}).encode()
    many = json.dumps([{"channel": "pubcost", "data": DATA}] * batch).encode()
    made = []
    if "hub" in servers:
        made.append(Target(f"hub batch x{batch}", servers["hub"], many, "application/json", batch))
        made.append(Target("hub single", servers["hub"], one, "application/json", 1))
    if "baseline" in servers:
        base = servers["baseline"]
        made.append(Target(f"baseline batch x{batch}", base, many, "application/json", batch))
        made.append(Target("baseline single", base, one, "application/json", 1))
    if "nchan" in servers:
        made.append(Target("nchan single", servers["nchan"], DATA.encode(), "text/plain", 1))
    return made


def run_ab(target: Target, *, concurrency: int, seconds: float) -> None:
    """One ``ab`` run against ``target``; its events and CPU added to the target's."""
    ab = shutil.which("ab")
    if ab is None:
        raise RuntimeError("ab is not installed: apt-get install apache2-utils")
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as f:
        f.write(target.body)
    pids = target.server.pids
    quiesce(target.server)
    cpu0 = [fanout.cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [
                *(ab, "-q", "-k", "-c", str(concurrency), "-t", str(max(1, math.ceil(seconds)))),
                *("-n", "100000000", "-p", f.name, "-T", target.content_type, target.url),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(f.name)
    wall = time.perf_counter() - t0
    cpu = [fanout.cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    done = int(_field(out, "Complete requests"))
    ok = done - int(_field(out, "Non-2xx responses", "0"))
    if ok <= 0 or ok < done:
        raise RuntimeError(f"{target.name}: {done - ok} of {done} requests failed: {out[-400:]}")
    events = ok * target.events_per_request
    target.events += events
    target.cpu_s += sum(cpu)
    target.wall_s += wall
    target.rounds.append(
        {
            "target": target.name,
            "events": events,
            "cpu_us_per_event": round(sum(cpu) * 1e6 / events, 2),
            "server_us": round(cpu[0] * 1e6 / events, 2),
            "redis_us": round(sum(cpu[1:]) * 1e6 / events, 2),
            "events_per_s": round(events / wall, 1),
        }
    )
    print(json.dumps(target.rounds[-1]), file=sys.stderr, flush=True)


def measure(
    targets: list[Target], *, rounds: int, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Every target once a round, ``rounds`` times; CPU per event over all its runs."""
    for _ in range(rounds):
        for target in targets:
            run_ab(target, concurrency=concurrency, seconds=seconds)
    return {
        t.name: {
            "events": t.events,
            "cpu_us_per_event": round(t.cpu_s * 1e6 / t.events, 2),
            "events_per_s": round(t.events / t.wall_s, 1),
            "rounds_cpu_us": [r["cpu_us_per_event"] for r in t.rounds],
            "redis_us_per_event": round(
                sum(r["redis_us"] * r["events"] for r in t.rounds) / t.events, 2
            ),
        }
        for t in targets
    }


def table(results: dict[str, Any], reference: str = "nchan single") -> str:
    ref = results.get(reference, {}).get("cpu_us_per_event")
    lines = [
        "| publish | CPU us / event (server + Redis) | of which Redis | events/s "
        f"| / {reference} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        ratio = f"{r['cpu_us_per_event'] / ref:.2f}x" if ref else "n/a"
        lines.append(
            f"| {name} | {r['cpu_us_per_event']:.1f} | {r['redis_us_per_event']:.1f} | "
            f"{r['events_per_s']:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def _field(out: str, name: str, default: str | None = None) -> str:
    match = re.search(rf"^{name}:\s+([\d.]+)", out, re.MULTILINE)
    if match is None:
        if default is not None:
            return default
        raise RuntimeError(f"ab printed no {name!r}: {out[-400:]}")
    return match.group(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.publish_cost", description=__doc__)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--baseline", type=Path, help="another hub checkout to measure beside")
    ap.add_argument("--no-nchan", action="store_true")
    a = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pubcost-"))
    servers: dict[str, Server] = {}
    try:
        servers["hub"] = start_hub(a.redis_url, workdir)
        if a.baseline is not None:
            servers["baseline"] = start_hub(a.redis_url, workdir, source=a.baseline)
        why = "disabled" if a.no_nchan else nchan_missing()
        if why is None:
            servers["nchan"] = start_nchan(a.redis_url, workdir)
        else:
            print(f"note: Nchan skipped: {why}", file=sys.stderr)
        targets = targets_for(servers, a.batch)
        results = measure(targets, rounds=a.rounds, seconds=a.seconds, concurrency=a.concurrency)
    finally:
        for server in servers.values():
            server.stop()
        cleanup_redis(a.redis_url)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(results, indent=2))
    print(f"\n{os.cpu_count()} CPUs, load average at end {load}\n")
    print(table(results, "nchan single" if "nchan" in servers else "hub single"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
