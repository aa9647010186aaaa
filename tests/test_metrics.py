"""``GET /metrics``: the numbers operators read, right in one process and summed over
``hub serve --workers N``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub import Publisher
from support.hubs import Backends, StartHub
from support.processes import HubProcesses
from support.procfs import streams_per_process, worker_pids
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

Samples = dict[str, float]


async def scrape(url: str) -> Samples:
    """Every sample of ``/metrics`` as ``name{label="value"}`` -> value."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def until(url: str, expected: Samples, timeout: float = 10) -> Samples:
    """Scrape until every expected sample has its value (other processes sync each second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape(url)
        wrong = {k: samples.get(k) for k, v in expected.items() if samples.get(k) != v}
        if not wrong:
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"after {timeout}s, expected {expected}, got {wrong}")
        await asyncio.sleep(0.1)


async def publish(url: str, channel: str, data: str) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/publish", json={"channel": channel, "data": data})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture
def redis_backends(redis_url: str) -> Iterator[Backends]:
    made = Backends("redis", redis_url)
    try:
        yield made
    finally:
        made.cleanup()


async def test_metrics_count_streams_subscriptions_and_events_published_and_delivered(
    redis_backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(redis_backends.settings(), redis_backends.backend())
    async with SSEStream(hub.url, ["a", "b"]) as both, SSEStream(hub.url, ["a"]) as one:
        await until(hub.url, {"hub_connections": 2, "hub_subscriptions": 3})
        for n in range(3):
            await publish(hub.url, "a", str(n))
        await both.wait_for(3)
        await one.wait_for(3)
        samples = await until(
            hub.url,
            {
                "hub_events_published_total": 3,
                "hub_events_delivered_total": 6,
                "hub_publish_seconds_count": 3,
                "hub_fanout_lag_seconds_count": 3,
                "hub_connections_opened_total": 2,
            },
        )
        assert 0 < samples["hub_publish_seconds_sum"] < 3
        assert 0 <= samples["hub_fanout_lag_seconds_sum"] < 3
    await until(hub.url, {"hub_connections": 0, 'hub_connections_closed_total{reason="client"}': 2})
    # Bounded cardinality: no label carries a channel name.
    assert not any('"a"' in name or '"b"' in name for name in await scrape(hub.url))


async def test_resuming_streams_count_as_replays_and_bad_cursors_as_resets(
    redis_backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(redis_backends.settings(), redis_backends.backend())
    first = await publish(hub.url, "r", "0")
    for n in range(1, 4):
        await publish(hub.url, "r", str(n))
    async with SSEStream(hub.url, ["r"], last_event_id=first) as resumed:
        assert [e.data for e in await resumed.wait_for(3)] == ["1", "2", "3"]
    async with SSEStream(hub.url, ["r"], last_event_id="garbage") as reset:
        assert (await reset.wait_for(1))[0].event == "hub.reset"
    await until(
        hub.url,
        {"hub_replays_total": 1, "hub_events_replayed_total": 3, "hub_resets_total": 1},
    )


async def test_a_client_that_does_not_read_counts_as_a_slow_disconnect(
    redis_backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(redis_backends.settings(client_buffer=1024), redis_backends.backend())
    host, port = hub.url.removeprefix("http://").split(":")
    sock = socket.socket()
    # A tiny receive window: the hub's writes block soon, and its queue overflows.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    _reader, writer = await asyncio.open_connection(sock=sock)
    publisher = Publisher.from_url(str(redis_backends.url), redis_backends.settings())
    try:
        writer.write(b"GET /events?channel=slow HTTP/1.1\r\nHost: hub\r\n\r\n")
        await writer.drain()
        await until(hub.url, {"hub_connections": 1})
        blob = "x" * 8192
        for _ in range(400):
            await publisher.publish("slow", blob)
            if (await scrape(hub.url))["hub_connections"] == 0:
                break
        await until(hub.url, {'hub_connections_closed_total{reason="slow"}': 1})
    finally:
        writer.close()
        await publisher.aclose()


async def test_under_two_workers_any_scrape_reports_the_totals_of_both(
    redis_url: str,
) -> None:
    hubs = HubProcesses(redis_url)
    streams: list[SSEStream] = []
    try:
        hub = await hubs.start("--workers", "2")
        for _ in range(200):
            if len(worker_pids(hub.pid)) == 2:
                break
            await asyncio.sleep(0.05)
        workers = worker_pids(hub.pid)
        streams = [SSEStream(hub.url, ["w"]) for _ in range(12)]
        for stream in streams:
            await stream.__aenter__()
        spread = streams_per_process(workers, hub.port)
        for n in range(5):
            await publish(hub.url, "w", str(n))
        for stream in streams:
            await stream.wait_for(5)
        expected: Samples = {
            "hub_connections": 12,
            "hub_connections_opened_total": 12,
            "hub_events_published_total": 5,
            "hub_events_delivered_total": 60,
        }
        # Each scrape is a new connection: the kernel hands it to either worker. Every
        # one of them must report the same totals.
        await until(hub.url, expected)
        for _ in range(6):
            samples = await scrape(hub.url)
            assert {k: samples.get(k) for k in expected} == expected
        # Counting both only means something if both had streams.
        assert all(spread[pid] > 0 for pid in workers), spread
    finally:
        for stream in streams:
            await stream.close()
        await hubs.cleanup()
