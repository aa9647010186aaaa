"""``python -m bench chaos``: the command line and the printed summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys

from .campaign import Campaign, Options, Outcome
from .processes import missing_tools

#: Bounds: a run is loopback-only and ends by itself.
MAX_DURATION = 24 * 3600
MAX_NODES = 8
MAX_CLIENTS = 200


def parse(argv: list[str] | None) -> tuple[Options, bool]:
    ap = argparse.ArgumentParser(
        prog="python -m bench chaos",
        description="A randomized fault campaign against hub nodes behind haproxy, with an "
        "exactly-once checker; or, with --url, the checker against any hub (native API or "
        "Mercure), without faults. Exit status 1 on any violation.",
    )
    ap.add_argument("--duration", type=float, default=60, help="seconds of traffic (and faults)")
    ap.add_argument("--nodes", type=int, default=3, help=f"hub nodes, 1-{MAX_NODES}")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed; default: new)")
    ap.add_argument("--clients", type=int, default=8, help=f"SSE clients, 1-{MAX_CLIENTS}")
    ap.add_argument("--channels", type=int, default=4, help="channels (topics) used")
    ap.add_argument("--rate", type=float, default=30, help="publishes per second, all publishers")
    ap.add_argument("--history-size", type=int, default=300, help="HUB_HISTORY_SIZE of the nodes")
    ap.add_argument("--drain", type=float, default=40, help="seconds clients get to catch up")
    ap.add_argument("--url", help="check this hub instead of starting one (no faults)")
    ap.add_argument("--protocol", choices=["native", "mercure"], default="native")
    ap.add_argument("--publish-token", help="bearer token for publishing (with --url)")
    ap.add_argument("--subscribe-token", help="bearer token for subscribing (with --url)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each fault as it happens")
    ap.add_argument("--keep", action="store_true", help="keep the logs' directory")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    if not 0 < a.duration <= MAX_DURATION:
        ap.error(f"--duration must be in (0, {MAX_DURATION}]")
    if not 1 <= a.nodes <= MAX_NODES:
        ap.error(f"--nodes must be 1-{MAX_NODES}")
    if not 1 <= a.clients <= MAX_CLIENTS:
        ap.error(f"--clients must be 1-{MAX_CLIENTS}")
    if not 1 <= a.channels <= 100 or not 0 < a.rate <= 1000 or a.history_size < 10:
        ap.error("--channels 1-100, --rate (0, 1000], --history-size at least 10")
    if a.url is None and a.protocol != "native":
        ap.error("--protocol mercure needs --url (the managed run speaks the native API)")
    if a.url is not None and not a.url.startswith(("http://127.", "http://localhost")):
        ap.error("--url must be a loopback address (http://127.0.0.1:PORT)")
    if a.url is None and (missing := missing_tools()):
        ap.error(f"needs {' and '.join(missing)} on PATH (apt-get install {' '.join(missing)})")
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "big")
    return Options(
        duration=a.duration,
        nodes=a.nodes,
        seed=seed,
        clients=a.clients,
        channels=a.channels,
        rate=a.rate,
        history_size=a.history_size,
        drain=a.drain,
        url=a.url.rstrip("/") if a.url else None,
        protocol=a.protocol,
        publish_token=a.publish_token,
        subscribe_token=a.subscribe_token,
        verbose=a.verbose,
        keep=a.keep or a.verbose,
    ), a.json


def summary(opts: Options, out: Outcome) -> dict[str, object]:
    r = out.report
    return {
        "ok": r.ok,
        "seed": opts.seed,
        "target": opts.url or f"{opts.nodes} nodes behind haproxy, one Redis (AOF)",
        "protocol": opts.protocol,
        "seconds": round(out.seconds, 1),
        "faults_injected": dict(sorted(out.faults.items())),
        "faults_total": sum(out.faults.values()),
        "publish_answers": dict(sorted(out.answers.items())),
        "publish_refusals_first_seen": dict(sorted(out.samples.items())),
        "events_acknowledged": r.acknowledged,
        "events_unacknowledged": r.uncertain,
        "delivered": r.delivered,
        "lost": r.lost,
        "duplicated": r.duplicated,
        "reordered": r.reordered,
        "skipped_by_a_reset": r.skipped_by_reset,
        "resets_by_reason": dict(sorted(r.resets.items())),
        "streams_opened": out.streams,
        "streams_failed": out.failed_streams,
        "clients_not_caught_up": out.not_caught_up,
        "violations": [f"{v.kind}: {v.client} {v.channel}: {v.detail}" for v in r.violations],
        "logs": out.workdir,
    }


def print_summary(data: dict[str, object]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key == "violations":
            continue
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{key.replace('_', ' '):<{width}}  {shown}")
    for line in data["violations"]:  # type: ignore[attr-defined]
        print(f"VIOLATION {line}")
    print("PASS: exactly once" if data["ok"] else "FAIL: see the violations above")


async def _main(opts: Options) -> Outcome:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # Ctrl-C and SIGTERM cancel the run; the campaign's finally ends everything it
    # started. SIGINT explicitly too: a shell's background job starts with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    campaign = Campaign(opts)
    # A hard bound whatever happens: traffic, then healing and draining.
    return await asyncio.wait_for(campaign.run(), opts.duration + opts.drain + 240)


def main(argv: list[str] | None = None) -> int:
    opts, as_json = parse(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    print(f"chaos: seed {opts.seed}, {opts.duration:g} s", file=sys.stderr, flush=True)
    try:
        outcome = asyncio.run(_main(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    data = summary(opts, outcome)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print_summary(data)
    return 0 if outcome.report.ok else 1
