"""The streaming response on its own: how an abort ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from hub.delivery.response import EventStream

pytestmark = pytest.mark.anyio


async def _run_until_parked(
    parked_probe: bool,
) -> tuple[EventStream, asyncio.Task[None], list[dict[str, Any]], list[str], asyncio.Event]:
    loop = asyncio.get_running_loop()
    wake: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def body() -> AsyncGenerator[bytes, None]:
        yield b": connected\n\n"
        try:
            await wake
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("woken")

    response = EventStream(body())
    response.on_abort(lambda: wake.done() or wake.set_result(None))
    if parked_probe:
        response.parked = lambda: not wake.done()
    sent: list[dict[str, Any]] = []
    opened = asyncio.Event()
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 2:
            opened.set()

    task = loop.create_task(response({"type": "http", "method": "GET"}, receive, send))
    await opened.wait()
    await asyncio.sleep(0)  # the body is parked on its future by now
    return response, task, sent, seen, gone


async def test_a_client_leaving_while_the_stream_is_parked_ends_it_without_a_cancellation() -> None:
    response, task, sent, seen, gone = await _run_until_parked(parked_probe=True)
    gone.set()
    await task
    assert seen == ["woken"]
    assert response.cut_off == "disconnected"
    # As after a cancellation: no final chunk, the server closes the connection.
    assert [m.get("more_body") for m in sent] == [None, True]


async def test_an_abort_while_the_stream_is_not_parked_cancels_it() -> None:
    response, task, sent, seen, gone = await _run_until_parked(parked_probe=False)
    gone.set()
    await task
    assert seen == ["cancelled"]
    assert response.cut_off == "disconnected"
    assert [m.get("more_body") for m in sent] == [None, True]
