"""The benchmark scenarios. Each takes a running server and returns a flat dict of figures.

The load tools are the shared ones next to this file: ``sseload`` (C, epoll) for many SSE
clients and ``ssepub.py`` for a steady publish rate; fan-out reuses ``fanout.py``'s CPU and
RSS readers so the figures mean the same as in bench/README.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from . import fanout
from .servers import HUB_PREFIX, Server

HERE = Path(__file__).resolve().parent
_RUN = itertools.count(1)


def _fresh(base: str) -> str:
    """A channel name no earlier step used, so no step sees another's backlog."""
    return f"{base}{time.time_ns() % 10**6}n{next(_RUN)}"


def _sseload(server: Server, path: str, conns: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [fanout.build_sseload(), "127.0.0.1", str(server.port), path, str(conns), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_connected(load: subprocess.Popen[str]) -> str:
    # sseload prints this line once every connect() returned; reading it tells us when
    # the clients exist without guessing from the clock.
    assert load.stderr is not None
    return load.stderr.readline().strip()


def _cpu(pids: list[int]) -> float:
    return sum(fanout.cpu_seconds(p) for p in pids)


def _rss(pids: list[int]) -> int:
    return sum(fanout.rss_kib(p) for p in pids)


def quiesce(server: Server, *, limit: float = 30.0) -> float:
    """Wait until the server's own processes are idle (under 10% of a core over 0.5 s).

    A step that closes 10,000 streams leaves the server busy cleaning up for seconds;
    the next scenario must not pay for that. Returns the seconds waited.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        c0 = _cpu(server.server_pids)
        time.sleep(0.5)
        if _cpu(server.server_pids) - c0 < 0.05:
            break
    return round(time.perf_counter() - t0, 1)


def fanout_run(
    server: Server,
    *,
    conns: int,
    rate: float,
    seconds: float,
    channels: int = 1,
    settle: float | None = None,
) -> dict[str, Any]:
    """``conns`` SSE clients, a publisher at ``rate`` msg/s for ``seconds``.

    With ``channels > 1`` client i follows channel ``c{i % channels}`` (sseload's {i}) and
    message k goes to channel ``c{k % channels}``: each message has conns/channels readers.
    """
    # Connection set-up must be over before the CPU window opens; it takes the hub about
    # 1.5 s per 1000 clients on this machine.
    settle = settle if settle is not None else max(1.0, conns / 700)
    if channels > 1:
        base = _fresh("c") + "x"
        sub = server.sub_path(base + "{i}")
        pub_url = server.pub_url(base + "{c}")
        body = server.pub_body(base + "{c}")
    else:
        ch = _fresh("b")
        sub, pub_url, body = server.sub_path(ch), server.pub_url(ch), server.pub_body(ch)
    load = _sseload(server, sub, conns, seconds + settle + 2.0)
    connected = _wait_connected(load)
    time.sleep(settle)
    cpu0 = _cpu(server.pids)
    cmd = [sys.executable, str(HERE / "ssepub.py"), pub_url, str(rate), str(seconds)]
    cmd += ["--body", body, "--channels", str(channels)]
    for h in server.pub_headers():
        cmd += ["--header", h]
    pub = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    time.sleep(1.5)  # let the last events drain before the CPU window closes
    cpu1 = _cpu(server.pids)
    out, _err = load.communicate(timeout=seconds + settle + 60)
    res = json.loads(out)
    published = json.loads(pub.stdout or "{}")
    sent = int(published.get("sent", 0))
    pub_seconds = float(published.get("seconds", seconds)) or seconds
    # Each message has conns/channels readers (all clients when there is one channel).
    expected = sent * max(res["connections"] // channels, 1)
    events = int(res["events"])
    cpu = cpu1 - cpu0
    return {
        "connections": res["connections"],
        "failed": res["failed"],
        "published": sent,
        "publish_errors": published.get("errors"),
        "events": events,
        "expected_deliveries": expected,
        "delivered_ratio": round(events / expected, 4) if expected else None,
        "deliveries_per_s": round(events / pub_seconds, 1),
        "cpu_us_per_delivery": round(cpu * 1e6 / events, 2) if events else None,
        "server_cpu_s": round(cpu, 2),
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "max_ms": res["max_ms"],
        "sseload": connected,
    }


def saturation(server: Server, *, conns: int, seconds: float, rates: list[float]) -> dict[str, Any]:
    """Step the publish rate up; keep the best step with p99 < 100 ms and nothing lost.

    The publisher waits for each response, so a saturated server pulls the publish rate
    down rather than losing events: a step that published less than 95% of what it asked
    for counts as failed too. A failed step is repeated once before the search stops.
    """
    best: dict[str, Any] | None = None
    steps = []
    for rate in rates:
        # A failed step is tried once more: on a shared machine one stray spike of
        # someone else's CPU use must not end the search at the first step.
        for _attempt in range(2):
            quiesce(server)
            r = fanout_run(server, conns=conns, rate=rate, seconds=seconds)
            ok = (
                r["delivered_ratio"] == 1.0
                and r["p99_ms"] < 100
                and r["published"] >= 0.95 * rate * seconds
            )
            keep = ("deliveries_per_s", "p99_ms", "delivered_ratio", "published")
            steps.append({"rate": rate, "ok": ok, **{k: r[k] for k in keep}})
            if ok:
                break
        if not ok:
            break
        best = r | {"rate": rate}
    return {
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "at_rate": best["rate"] if best else None,
        "p99_ms": best["p99_ms"] if best else None,
        "steps": steps,
    }


def idle_memory(server: Server, *, conns: int) -> dict[str, Any]:
    """RSS growth of the server's own processes (Redis apart) per idle SSE connection."""
    own = server.server_pids
    before = _rss(own)
    redis_before = _rss([server.redis_pid]) if server.redis_pid else 0
    load = _sseload(server, server.sub_path(_fresh("idle")), conns, 3.0 + conns / 700)
    connected = _wait_connected(load)
    time.sleep(1.0 + conns / 700)  # the server finishes setting up every stream
    after = _rss(own)
    redis_after = _rss([server.redis_pid]) if server.redis_pid else 0
    out, _ = load.communicate(timeout=120)
    res = json.loads(out)
    n = max(res["connections"] - res["closed_by_peer"], 1)
    return {
        "connections": res["connections"],
        "closed_by_peer": res["closed_by_peer"],
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_conn": round((after - before) / n, 2),
        "redis_kib_per_conn": round((redis_after - redis_before) / n, 3),
        "sseload": connected,
    }


async def _count_events(url: str, headers: dict[str, str], want: int, timeout: float) -> int:
    """Read an SSE stream until ``want`` data lines arrived (or the time is up)."""
    seen = 0
    tail = b""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client,
        client.stream("GET", url, headers=headers) as resp,
    ):
        resp.raise_for_status()
        async for chunk in resp.aiter_raw():
            buf = tail + chunk
            seen += buf.count(b"\ndata:")
            if b"event: hub.reset" in buf:
                # The hub says it cannot replay from there: a failure, not a slow replay.
                raise RuntimeError(f"the hub reset the stream: {buf[-400:]!r}")
            # A 5-byte tail cannot hold the whole 6-byte pattern, so nothing counts twice.
            tail = buf[-5:]
            if seen >= want:
                break
    return seen


async def _http_publish_many(server: Server, channel: str, n: int, concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(count: int) -> None:
            nonlocal done
            for _ in range(count):
                await _post(client, server, channel, str(time.time_ns()))
                done += 1

        share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(worker(c) for c in share))
    return done


async def _post(client: httpx.AsyncClient, server: Server, channel: str, data: str) -> None:
    url = server.pub_url(channel)
    if server.name == "hub":
        r = await client.post(url, json={"channel": channel, "data": data})
    else:
        r = await client.post(url, content=data)
    if r.status_code >= 300:
        raise RuntimeError(f"publish to {url}: HTTP {r.status_code} {r.text[:200]}")


async def replay(server: Server, redis_url: str, *, events: int) -> dict[str, Any]:
    """Events/s delivered to one client that resumes ``events`` behind."""
    channel = _fresh("replay")
    t0 = time.perf_counter()
    if server.name == "hub":
        from hub import Publisher, Settings

        # The publish script trims to the PUBLISHER's history_size: it must hold them all.
        settings = Settings.from_env(key_prefix=HUB_PREFIX, history_size=events + 10)
        pub = Publisher.from_url(redis_url, settings)
        first = await pub.publish(channel, "first")
        # Batches of 100: each concurrent call holds its own pooled Redis connection.
        for start in range(0, events, 100):
            batch = range(start, min(start + 100, events))
            await asyncio.gather(*(pub.publish(channel, str(i)) for i in batch))
        await pub.aclose()
        url = f"http://127.0.0.1:{server.port}/events?channel={channel}"
        headers = {"Last-Event-ID": first}
    else:
        # Nchan keeps nchan_message_buffer_length messages; a new subscriber with
        # nchan_subscriber_first_message oldest (the /replay/ location) gets them all.
        # One publish at a time: concurrent publishes to one channel make Nchan 1.3.6's
        # Redis store collide on message ids ("already exists", HTTP 500).
        await _http_publish_many(server, channel, events, 1)
        url = f"http://127.0.0.1:{server.port}/replay/{channel}"
        headers = {}
    fill_s = time.perf_counter() - t0
    headers["Accept"] = "text/event-stream"
    t1 = time.perf_counter()
    # A bounded wait: a stream that stops short (a lost backlog) must end the step.
    try:
        got = await asyncio.wait_for(_count_events(url, headers, events, timeout=30), 120)
    except asyncio.TimeoutError:
        got = -1
    took = time.perf_counter() - t1
    return {
        "events_behind": events,
        "received": got,
        "seconds": round(took, 3),
        # Only a complete replay has a rate; a short one is a failure, not a figure.
        "events_per_s": round(got / took, 1) if got >= events else None,
        "fill_seconds": round(fill_s, 2),
    }


async def http_publish(server: Server, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Publishes/s over HTTP from ``concurrency`` keep-alive connections, each waiting."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await _post(client, server, "pubtp", "x" * 64)
                done += 1

        t0, client_cpu0, server_cpu0 = time.perf_counter(), time.process_time(), _cpu(server.pids)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.perf_counter() - t0
        # Side by side: when the client spends more per request than the server, the
        # rate is the client's.
        client_cpu = time.process_time() - client_cpu0
        server_cpu = _cpu(server.pids) - server_cpu0
    per = 1e6 / done if done else 0.0
    return {
        "concurrency": concurrency,
        "published": done,
        "msgs_per_s": round(done / took, 1),
        "client_cpu_us_per_publish": round(client_cpu * per, 1),
        "server_cpu_us_per_publish": round(server_cpu * per, 1),
    }


def ab_publish(server: Server, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Publishes/s over HTTP from ApacheBench (``ab -k``): a C client that needs a
    fraction of the server's CPU per request, so the figure is the server's.

    httpx (:func:`http_publish`) spends more CPU per request than either server here
    (its result has both): its figure is what one Python client process gets, not what
    the server can take.
    """
    ab = shutil.which("ab")
    if ab is None:
        raise RuntimeError("ab is not installed: apt-get install apache2-utils")
    channel = _fresh("abpub")
    with tempfile.NamedTemporaryFile("w", suffix=".body", delete=False) as f:
        f.write(server.pub_body(channel).format(ts=time.time_ns()))
        body = f.name
    content_type = "application/json" if server.name == "hub" else "text/plain"
    cpu0 = _cpu(server.pids)
    try:
        out = subprocess.run(
            [
                # ab reads -t as whole seconds (0 would mean no limit at all).
                *(ab, "-q", "-k", "-c", str(concurrency), "-t", str(max(1, math.ceil(seconds)))),
                *("-n", "100000000"),
                *("-p", body, "-T", content_type, server.pub_url(channel)),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(body)
    cpu = _cpu(server.pids) - cpu0
    done = int(_ab_field(out, "Complete requests"))
    non_2xx = int(_ab_field(out, "Non-2xx responses", "0"))
    # ab counts a response body whose length differs from the first one's as "failed";
    # both servers answer with a varying id, so only non-2xx answers are failures.
    ok = done - non_2xx
    return {
        "concurrency": concurrency,
        "published": ok,
        "non_2xx": non_2xx,
        "msgs_per_s": round(ok / float(_ab_field(out, "Time taken for tests")), 1),
        "cpu_us_per_publish": round(cpu * 1e6 / ok, 1) if ok else None,
    }


def _ab_field(out: str, name: str, default: str | None = None) -> str:
    match = re.search(rf"^{name}:\s+([\d.]+)", out, re.MULTILINE)
    if match is None:
        if default is not None:
            return default
        raise RuntimeError(f"ab printed no {name!r}: {out[-400:]}")
    return match.group(1)


async def python_publisher(
    redis_url: str, *, seconds: float, batch: int, many: bool = False
) -> dict[str, Any]:
    """The hub's Publisher straight into Redis: sequential awaits, gathered batches, or
    (``many``) batches through ``publish_many``."""
    from hub import Publisher, Settings

    pub = Publisher.from_url(redis_url, Settings.from_env(key_prefix=HUB_PREFIX))
    done = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    try:
        while time.perf_counter() < end:
            if batch == 1:
                await pub.publish("pypub", "x" * 64)
                done += 1
            elif many:
                await pub.publish_many([{"channel": "pypub", "data": "x" * 64}] * batch)
                done += batch
            else:
                await asyncio.gather(*(pub.publish("pypub", "x" * 64) for _ in range(batch)))
                done += batch
        took = time.perf_counter() - t0
    finally:
        await pub.aclose()
    return {"batch": batch, "published": done, "msgs_per_s": round(done / took, 1)}


async def churn(server: Server, *, concurrency: int, seconds: float) -> dict[str, Any]:
    """Connects + disconnects per second: each client opens a stream, reads its first
    bytes (the response head), and closes; ``concurrency`` clients do it in a loop."""
    path = server.sub_path("churn")
    req = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    cycles = errors = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal cycles, errors
        while time.perf_counter() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    errors += 1
                writer.close()
                await writer.wait_closed()
                cycles += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    took = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "cycles": cycles,
        "errors": errors,
        "cycles_per_s": round(cycles / took, 1),
    }
