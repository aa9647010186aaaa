"""The tables made from one ``python -m bench`` run's JSON.

    python -m bench.report bench/results/latest.json          # the bench/RESULTS.md table
    python -m bench.report --docs bench/results/latest.json   # the docs/performance.md one
    python -m bench.report --docs --write docs/performance.md bench/last-full-run.json

Both tables come from the same JSON, so the docs never quote figures that no run gave:
``bench/last-full-run.json`` is the run the docs cite, and a test renders both tables from
it and fails when either page has drifted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: the figures of the RESULTS table: (scenario, key in its result, label)
TABLE = [
    ("S1a", "cpu_us_per_delivery", "CPU us / delivery (server + Redis)"),
    ("S1a", "deliveries_per_s", "deliveries/s"),
    ("S1a", "p50_ms", "p50 ms"),
    ("S1a", "p99_ms", "p99 ms"),
    ("S1a", "delivered_ratio", "delivered ratio"),
    ("S1b", "cpu_us_per_delivery", "CPU us / delivery"),
    ("S1b", "deliveries_per_s", "deliveries/s"),
    ("S1b", "p50_ms", "p50 ms"),
    ("S1b", "p99_ms", "p99 ms"),
    ("S1b", "delivered_ratio", "delivered ratio"),
    ("S1c", "cpu_us_per_delivery", "CPU us / delivery"),
    ("S1c", "deliveries_per_s", "deliveries/s"),
    ("S1c", "p50_ms", "p50 ms"),
    ("S1c", "p99_ms", "p99 ms"),
    ("S1c", "delivered_ratio", "delivered ratio"),
    ("S2", "max_deliveries_per_s", "max deliveries/s"),
    ("S3", "kib_per_conn", "KiB RSS / idle connection"),
    ("S4", "events_per_s", "replay events/s"),
    ("S5", "ab_msgs_per_s", "HTTP publishes/s (ab -k, C client)"),
    ("S5", "ab_cpu_us_per_publish", "CPU us / HTTP publish (server + Redis)"),
    ("S5", "http_msgs_per_s", "HTTP publishes/s (httpx, one Python client)"),
    ("S5", "publisher_single_msgs_per_s", "Python Publisher, sequential msgs/s"),
    ("S5", "publisher_batch_msgs_per_s", "Python Publisher, gather x100 msgs/s"),
    ("S5", "publisher_many_msgs_per_s", "Python Publisher, publish_many x100 msgs/s"),
    ("S6", "cycles_per_s", "connects + disconnects /s"),
    (
        "S7",
        "batch_cpu_us_per_event",
        "CPU us / event: hub batches vs Nchan single (server + Redis)",
    ),
    ("S7", "single_cpu_us_per_event", "CPU us / event: single HTTP publish, same run"),
    ("S8", "streams", "streams on one process (the descriptor limit)"),
    ("S8", "seconds_to_set_up", "s to open them all and set them up"),
    ("S8", "kib_per_stream", "KiB RSS / stream"),
    ("S8", "p99_ms", "p99 ms of a publish reaching every stream"),
    ("S8w", "streams", "streams on hub serve --workers 2"),
    ("S8w", "seconds_to_set_up", "s to open them all and set them up"),
    ("S8w", "kib_per_stream", "KiB RSS / stream (all processes)"),
    ("S8w", "p99_ms", "p99 ms of a publish reaching every stream"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _figure(results: dict[str, Any], sid: str, server: str, key: str) -> Any:
    res = results["scenarios"].get(sid, {}).get(server)
    return res.get(key) if isinstance(res, dict) else None


def _ratio(hub: Any, nchan: Any) -> str:
    return f"{hub / nchan:.2f}" if isinstance(hub, int | float) and nchan else "n/a"


def table(results: dict[str, Any]) -> str:
    """The RESULTS table: scenario (with its sizes), metric, hub, nchan, hub/nchan."""
    lines = [
        "| scenario | metric | hub | nchan | hub/nchan |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    sizes = results["sizes"]
    for sid, key, label in TABLE:
        if not results["scenarios"].get(sid):
            continue
        hub, nch = _figure(results, sid, "hub", key), _figure(results, sid, "nchan", key)
        size = ", ".join(f"{k}={v}" for k, v in sizes[sid].items() if k not in ("rates", "settle"))
        lines.append(
            f"| {sid} ({size}) | {label} | {_fmt(hub)} | {_fmt(nch)} | {_ratio(hub, nch)} |"
        )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The run's machine line, then :func:`table`: what ``python -m bench`` prints."""
    m = results["machine"]
    head = (
        f"Measured {m['date_utc']} UTC on {m['nproc']} x {m['cpu_model']}, "
        f"Python {m['python']}, {m['nginx'] or 'no nginx'}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_end'])}."
        + (" QUICK (tiny sizes: not a measurement)." if results["quick"] else "")
        + f" Nchan: {results['nchan']}."
    )
    return head + "\n\n" + table(results)


#: the docs table: (label, filled in from the scenario's sizes; scenario; key; unit)
DOCS = [
    (
        "{conns:,} clients x {rate:g} msg/s: CPU per delivery (server + Redis)",
        "S1a",
        "cpu_us_per_delivery",
        "µs",
    ),
    ("the same: p99 publish-to-receive latency", "S1a", "p99_ms", "ms"),
    ("{conns:,} clients x {rate:g} msg/s: CPU per delivery", "S1b", "cpu_us_per_delivery", "µs"),
    ("the same: p99 latency", "S1b", "p99_ms", "ms"),
    (
        "{conns:,} clients on {channels:,} channels: CPU per delivery",
        "S1c",
        "cpu_us_per_delivery",
        "µs",
    ),
    ("the same: p99 latency", "S1c", "p99_ms", "ms"),
    (
        "highest deliveries/s with p99 < 100 ms, nothing lost ({conns:,} clients)",
        "S2",
        "max_deliveries_per_s",
        "",
    ),
    ("replay to a client {events:,} events behind", "S4", "events_per_s", "/s"),
    ("connects + disconnects per second", "S6", "cycles_per_s", ""),
    ("memory per idle connection ({conns:,} connections)", "S3", "kib_per_conn", "KiB"),
    ("HTTP publishes/s (`ab -k -c {concurrency}`)", "S5", "ab_msgs_per_s", ""),
    ("CPU per HTTP publish (server + Redis, S5)", "S5", "ab_cpu_us_per_publish", "µs"),
    (
        "CPU per event, batches of {batch} against Nchan's single publish (S7)",
        "S7",
        "batch_cpu_us_per_event",
        "µs",
    ),
    ("CPU per event, one event per request (S7, same run)", "S7", "single_cpu_us_per_event", "µs"),
    ("streams on one process (the descriptor limit here, S8)", "S8", "streams", ""),
    ("the same: memory per stream", "S8", "kib_per_stream", "KiB"),
    ("the same: p99 of one publish reaching every stream", "S8", "p99_ms", "ms"),
    ("the same: seconds to open and set them all up", "S8", "seconds_to_set_up", "s"),
    ("streams on `hub serve --workers 2` (S8)", "S8w", "streams", ""),
    ("the same: memory per stream", "S8w", "kib_per_stream", "KiB"),
]


def _with_unit(v: Any, unit: str) -> str:
    if v is None:
        return ""
    text = _fmt(v)
    return f"{text}{unit}" if unit == "/s" else f"{text} {unit}".rstrip()


def docs_table(results: dict[str, Any]) -> str:
    """The table of docs/performance.md: the same figures as :func:`table`, in words."""
    lines = ["| scenario | hub | Nchan | hub/Nchan |", "| --- | ---: | ---: | ---: |"]
    for label, sid, key, unit in DOCS:
        if not results["scenarios"].get(sid):
            continue
        hub, nch = _figure(results, sid, "hub", key), _figure(results, sid, "nchan", key)
        ratio = _ratio(hub, nch) if nch is not None else ""
        row = [
            label.format(**results["sizes"][sid]),
            _with_unit(hub, unit),
            _with_unit(nch, unit),
            ratio,
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def replace_table(page: str, new: str) -> str:
    """``page`` with its first Markdown table that has the same header as ``new`` replaced."""
    header = new.splitlines()[0]
    lines = page.splitlines()
    try:
        start = lines.index(header)
    except ValueError:
        raise SystemExit(f"no table with the header {header!r} in the page") from None
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join([*lines[:start], new, *lines[end:]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("results", type=Path, help="a run's JSON (python -m bench --out ...)")
    ap.add_argument("--docs", action="store_true", help="the docs/performance.md table")
    ap.add_argument(
        "--write", type=Path, help="replace that table in this page instead of printing"
    )
    a = ap.parse_args(argv)
    results = json.loads(a.results.read_text())
    new = docs_table(results) if a.docs else markdown(results)
    if a.write:
        a.write.write_text(replace_table(a.write.read_text(), new if a.docs else table(results)))
    else:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
