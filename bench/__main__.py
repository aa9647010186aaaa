"""``python -m bench``: the hub against nginx + Nchan, every scenario, one run, one table.

    python -m bench [--quick] [--only S1a,S3,...] [--out bench/results/latest.json]
    python -m bench chaos --duration 60 [--nodes 3] [--seed N]   (docs/chaos.md)

Starts what it needs on loopback (the hub as ``hub serve`` on a real Redis, nginx with
Debian's libnginx-mod-nchan on the same Redis), runs each scenario against both, prints
a Markdown table with hub/Nchan ratios and writes it next to the JSON. Without nginx or
the Nchan module the Nchan column says why and the hub is still measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import alternating, many_streams, publish_cost, report
from . import scenarios as sc
from .servers import Server, cleanup_redis, nchan_missing, start_hub, start_nchan

HERE = Path(__file__).resolve().parent

#: id -> title; the order is the order they run in.
SCENARIOS = {
    "S1a": "fan-out, 1 channel, many clients x 40 msg/s",
    "S1b": "fan-out, 1 channel, 10x the clients x 4 msg/s",
    "S1c": "fan-out, 1 client on each of many channels",
    "S2": "saturation (p99 < 100 ms, nothing lost)",
    "S3": "memory per idle connection",
    "S4": "replay to a client resuming far behind",
    "S5": "publish throughput",
    "S6": "connection churn",
    "S7": "CPU per event: hub batches vs Nchan single publishes, alternating",
    "S8": "the most streams one process may hold here, and two workers (bench.many_streams)",
}

#: (full, quick) sizes
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "S1a": {"conns": 1000, "rate": 40, "seconds": 8, "rounds": 3},
        "S1b": {"conns": 10000, "rate": 4, "seconds": 8, "rounds": 3},
        "S1c": {"conns": 1000, "rate": 1000, "seconds": 8, "channels": 1000, "rounds": 3},
        "S2": {
            "conns": 1000,
            "seconds": 4,
            "rates": [
                10,
                20,
                40,
                60,
                80,
                100,
                120,
                140,
                160,
                180,
                200,
                230,
                260,
                300,
                340,
                390,
                450,
                520,
                600,
                700,
                800,
                960,
            ],
        },
        "S3": {"conns": 10000},
        "S4": {"events": 100000},
        "S5": {"concurrency": 8, "seconds": 5},
        "S6": {"concurrency": 32, "seconds": 5},
        "S7": {"rounds": 4, "seconds": 3, "concurrency": 8, "batch": 100},
        "S8": {"most": 50000, "seconds": 5},
    },
    "quick": {
        "S1a": {"conns": 50, "rate": 20, "seconds": 1, "settle": 0.5},
        "S1b": {"conns": 100, "rate": 4, "seconds": 1, "settle": 0.5},
        "S1c": {"conns": 20, "rate": 40, "seconds": 1, "channels": 20, "settle": 0.5},
        "S2": {"conns": 20, "seconds": 1, "rates": [10, 20]},
        "S3": {"conns": 100},
        "S4": {"events": 500},
        "S5": {"concurrency": 4, "seconds": 0.5},
        "S6": {"concurrency": 4, "seconds": 0.5},
        "S7": {"rounds": 1, "seconds": 1, "concurrency": 2, "batch": 10},
        "S8": {"most": 50, "seconds": 1},
    },
}


def machine(redis_url: str) -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        nginx_v = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        nginx_v = None
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": nginx_v,
        "redis_url": redis_url,
    }


def _s5(server: Server, redis_url: str, size: dict[str, Any]) -> dict[str, Any]:
    ab = sc.ab_publish(server, **size)
    http = asyncio.run(sc.http_publish(server, **size))
    out: dict[str, Any] = {
        "ab_msgs_per_s": ab["msgs_per_s"],
        "ab_cpu_us_per_publish": ab["cpu_us_per_publish"],
        "http_msgs_per_s": http["msgs_per_s"],
        "ab": ab,
        "http": http,
    }
    if server.name == "hub":
        single = asyncio.run(sc.python_publisher(redis_url, seconds=size["seconds"], batch=1))
        batch = asyncio.run(sc.python_publisher(redis_url, seconds=size["seconds"], batch=100))
        many = asyncio.run(
            sc.python_publisher(redis_url, seconds=size["seconds"], batch=100, many=True)
        )
        out |= {
            "publisher_single_msgs_per_s": single["msgs_per_s"],
            "publisher_batch_msgs_per_s": batch["msgs_per_s"],
            "publisher_many_msgs_per_s": many["msgs_per_s"],
        }
    return out


def run_scenario(sid: str, server: Server, redis_url: str, size: dict[str, Any]) -> dict[str, Any]:
    """One scenario against one (running) server."""
    if sid.startswith("S1"):
        return sc.fanout_run(server, **size)
    if sid == "S2":
        return sc.saturation(server, **size)
    if sid == "S3":
        return sc.idle_memory(server, **size)
    if sid == "S5":
        return _s5(server, redis_url, size)
    if sid == "S6":
        return asyncio.run(sc.churn(server, **size))
    raise ValueError(sid)


def _raise_nofile() -> None:
    # The servers we start inherit our limits: 10,000 streams need 10,000+ fds.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["chaos"]:
        # The fault campaign (bench/chaos/): its own options, see --help.
        from .chaos.cli import main as chaos

        return chaos(args[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-nchan", action="store_true", help="measure the hub only")
    a = ap.parse_args(args)

    only = [s.strip() for s in a.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    _raise_nofile()
    sizes = SIZES["quick" if a.quick else "full"]
    nchan_why = "disabled with --no-nchan" if a.no_nchan else nchan_missing()
    results: dict[str, Any] = {
        "machine": machine(a.redis_url),
        "quick": a.quick,
        "nchan": nchan_why or "nginx + libnginx-mod-nchan",
        "sizes": {s: sizes[s] for s in SCENARIOS if s in only},
        "scenarios": {},
    }
    if nchan_why:
        print(f"note: Nchan skipped: {nchan_why}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    kinds: list[tuple[str, Callable[..., Server]]] = [("hub", start_hub)]
    if not nchan_why:
        kinds.append(("nchan", start_nchan))
    try:
        for sid in (s for s in only if s.startswith("S1")):
            _s1(results, sid, kinds, a.redis_url, workdir, sizes[sid])
        cleanup_redis(a.redis_url)
        for name, start in kinds:
            # S3 first: memory per connection is measured on a fresh process, not on
            # one whose heap already grew (and kept) room for S1b's 10,000 streams.
            # S1*, S4, S7 and S8 start servers of their own.
            own = ("S1a", "S1b", "S1c", "S4", "S7", "S8")
            main_ids = sorted((s for s in only if s not in own), key=lambda s: s != "S3")
            if main_ids:
                # Hub history 1000 and an Nchan buffer of 1000: the same work per publish.
                kw = {"history_size": 1000} if name == "hub" else {"buffer": 1000}
                server = start(a.redis_url, workdir, **kw)
                try:
                    for sid in main_ids:
                        _one(results, sid, name, server, a.redis_url, sizes[sid])
                finally:
                    server.stop()
            if "S4" in only:
                events = sizes["S4"]["events"]
                kw = {"history_size": events + 10} if name == "hub" else {"buffer": events + 10}
                server = start(a.redis_url, workdir, **kw)
                try:
                    _one(results, "S4", name, server, a.redis_url, sizes["S4"], replay=True)
                finally:
                    server.stop()
            cleanup_redis(a.redis_url)
        if "S7" in only:
            _s7(results, a.redis_url, workdir, sizes["S7"], nchan=not nchan_why)
        if "S8" in only:
            _s8(results, a.redis_url, workdir, sizes["S8"], nchan=not nchan_why)
    finally:
        cleanup_redis(a.redis_url)
    if nchan_why:
        for res in results["scenarios"].values():
            res["nchan"] = {"skipped": nchan_why}
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    md = report.markdown(results)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(md + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _s1(
    results: dict[str, Any],
    sid: str,
    kinds: list[tuple[str, Callable[..., Server]]],
    redis_url: str,
    workdir: Path,
    size: dict[str, Any],
) -> None:
    """A fan-out scenario on both servers taking turns (:mod:`bench.alternating`)."""
    print(f"{sid} {'+'.join(n for n, _ in kinds)} {size}", file=sys.stderr, flush=True)
    for name, res in alternating.scenario(kinds, redis_url, workdir, size).items():
        print(f"  {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
        results["scenarios"].setdefault(sid, {})[name] = res


def _s7(
    results: dict[str, Any], redis_url: str, workdir: Path, size: dict[str, Any], *, nchan: bool
) -> None:
    """Both servers at once, ``ab`` against each in turn, round after round
    (:mod:`bench.publish_cost`): the shared machine's load falls on both alike."""
    size = dict(size)
    batch = size.pop("batch")
    print(f"S7 hub+nchan {size} batch={batch}", file=sys.stderr, flush=True)
    servers: dict[str, Server] = {}
    try:
        servers["hub"] = start_hub(redis_url, workdir)
        if nchan:
            servers["nchan"] = start_nchan(redis_url, workdir)
        got = publish_cost.measure(publish_cost.targets_for(servers, batch), **size)
    finally:
        for server in servers.values():
            server.stop()
    hub_batch, hub_single = got[f"hub batch x{batch}"], got["hub single"]
    hub = {
        "batch_cpu_us_per_event": hub_batch["cpu_us_per_event"],
        "single_cpu_us_per_event": hub_single["cpu_us_per_event"],
        "targets": got,
    }
    results["scenarios"]["S7"] = {"hub": hub}
    if nchan:
        single = got["nchan single"]["cpu_us_per_event"]
        results["scenarios"]["S7"]["nchan"] = {
            "batch_cpu_us_per_event": single,
            "single_cpu_us_per_event": single,
        }
    print(f"  {json.dumps(got)}", file=sys.stderr, flush=True)


def _s8(
    results: dict[str, Any], redis_url: str, workdir: Path, size: dict[str, Any], *, nchan: bool
) -> None:
    """As many streams as the descriptor limit allows (:mod:`bench.many_streams`)."""
    made = many_streams.run(redis_url, workdir, nchan=nchan, workers=True, **size)
    results["scenarios"]["S8"] = {"hub": made["hub"]} | ({"nchan": made["nchan"]} if nchan else {})
    results["scenarios"]["S8w"] = {"hub": made["hub --workers 2"]}
    results["sizes"]["S8w"] = {"workers": 2, **size}
    results["machine"]["nofile_hard_limit"] = made["limit"]


def _one(
    results: dict[str, Any],
    sid: str,
    name: str,
    server: Server,
    redis_url: str,
    size: dict[str, Any],
    *,
    replay: bool = False,
) -> None:
    print(f"{sid} {name} {size}", file=sys.stderr, flush=True)
    waited = sc.quiesce(server)
    t0 = time.perf_counter()
    try:
        if replay:
            res = asyncio.run(sc.replay(server, redis_url, **size))
        else:
            res = run_scenario(sid, server, redis_url, size)
    except Exception as exc:  # one broken scenario must not lose the others' figures
        traceback.print_exc()
        res = {"error": f"{type(exc).__name__}: {exc}"}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["quiesce_s"] = waited
    print(f"  {json.dumps(res)}", file=sys.stderr, flush=True)
    results["scenarios"].setdefault(sid, {})[name] = res


if __name__ == "__main__":
    sys.exit(main())
