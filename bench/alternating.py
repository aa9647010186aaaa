"""S1a-S1c, round after round on both servers: hub, Nchan, hub, Nchan, ...

Fan-out CPU per delivery is mostly kernel time (one write per client per event), and
that time per write moves between runs of the same code on the same machine: in one
series of S1b rounds minutes apart, the hub's system time per delivery ran from 8.9 to
10.8 us and Nchan's from 8.7 to 9.8 us, with the load tool unable to preempt either
(``chrt --batch``). One round per server, minutes apart, can land on either end of that.
Both servers stay up for the whole scenario and take turns, so a slow stretch of the
machine falls on both; each figure is the median over the rounds, and the JSON keeps
every round's CPU per delivery.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import scenarios as sc
from .servers import Server

#: Figures where the worst round speaks for all: one round that lost events is a loss.
_WORST: dict[str, Callable[[list[Any]], Any]] = {"delivered_ratio": min, "failed": max}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of :func:`bench.scenarios.fanout_run`: the median
    of each number (the worst round's loss and failed connections), the first round's
    other values, and every round's CPU per delivery (``rounds_cpu_us_per_delivery``)."""
    merged = dict(runs[0])
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numbers and first is not None:
            merged[key] = _WORST.get(key, statistics.median)(values)
    merged["rounds_cpu_us_per_delivery"] = [run.get("cpu_us_per_delivery") for run in runs]
    return merged


def fanout_rounds(
    starts: dict[str, Callable[[], Server]], size: dict[str, Any], rounds: int
) -> dict[str, dict[str, Any]]:
    """``rounds`` runs of one fan-out scenario on each server, taking turns; the median
    result per server (:func:`median_run`)."""
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, start in starts.items():
            servers[name] = start()
            runs[name] = []
        for k in range(rounds):
            for name, server in servers.items():
                waited = sc.quiesce(server)
                res = sc.fanout_run(server, **size)
                res["quiesce_s"] = waited
                print(f"  round {k + 1} {name}: {res['cpu_us_per_delivery']} us", file=sys.stderr)
                runs[name].append(res)
    finally:
        for server in servers.values():
            server.stop()
    return {name: median_run(done) for name, done in runs.items()}


def scenario(
    kinds: list[tuple[str, Callable[..., Server]]],
    redis_url: str,
    workdir: Path,
    size: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """One S1 scenario of ``python -m bench`` (``size`` with its ``rounds``) on fresh
    servers of each kind; the result per server, or what went wrong."""
    size = dict(size)
    rounds = size.pop("rounds", 1)
    starts = {
        # Hub history 1000 and an Nchan buffer of 1000: the same work per publish.
        name: functools.partial(
            start,
            redis_url,
            workdir,
            **({"history_size": 1000} if name == "hub" else {"buffer": 1000}),
        )
        for name, start in kinds
    }
    t0 = time.perf_counter()
    try:
        got = fanout_rounds(starts, size, rounds)
    except Exception as exc:  # one broken scenario must not lose the others' figures
        traceback.print_exc()
        got = {name: {"error": f"{type(exc).__name__}: {exc}"} for name in starts}
    for res in got.values():
        res["wall_s"] = round(time.perf_counter() - t0, 1)
    return got
