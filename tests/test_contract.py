"""The contract: every semantic of the hub, once on the embedded backend, once on Redis."""

from __future__ import annotations

import httpx
import pytest

from conftest import Backends, StartHub
from sse_client import SSEStream

pytestmark = pytest.mark.anyio


async def publish(url: str, channel: str | list[str], data: object, **extra: object) -> str:
    body: dict[str, object] = {"data": data, **extra}
    body["channels" if isinstance(channel, list) else "channel"] = channel
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/publish", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_published_event_reaches_every_subscriber_once_in_order(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["news"]) as first, SSEStream(hub.url, ["news"]) as second:
        ids = [await publish(hub.url, "news", f"m{i}") for i in range(20)]
        for stream in (first, second):
            events = await stream.wait_for(20)
            assert [e.data for e in events] == [f"m{i}" for i in range(20)]
            assert [e.id for e in events] == ids
