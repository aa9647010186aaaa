"""A test SSE reader over a real HTTP connection, parsing frames as a browser does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: str


class SSEStream:
    """Reads one ``/events`` stream in the background and keeps what arrives."""

    def __init__(
        self,
        base_url: str,
        channels: Sequence[str],
        *,
        last_event_id: str | None = None,
        query_cursor: str | None = None,
    ) -> None:
        params = [("channel", c) for c in channels]
        if query_cursor is not None:
            params.append(("lastEventId", query_cursor))
        self.url = f"{base_url}/events?{urlencode(params)}"
        self.headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        #: The id a browser would send on reconnect (the last ``id:`` field seen).
        self.last_event_id: str | None = last_event_id
        self.ended = asyncio.Event()
        self._opened = asyncio.Event()
        self._changed = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SSEStream:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _run(self) -> None:
        try:
            async with self._client.stream("GET", self.url, headers=self.headers) as response:
                self.status = response.status_code
                self.response_headers = response.headers
                if response.status_code != 200:
                    await response.aread()
                    self._opened.set()
                    return
                async for event in _parse(response.aiter_lines(), self):
                    self.events.append(event)
                    self._changed.set()
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()
            self.ended.set()
            self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10) -> list[Event]:
        """Wait until ``count`` events (``hub.*`` signals included) have arrived."""

        async def enough() -> None:
            while len(self.events) < count:
                if self.ended.is_set():
                    raise AssertionError(f"stream ended after {len(self.events)} of {count} events")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"only {len(self.events)} of {count} events after {timeout}s: {self.events[-3:]}"
            ) from None
        return self.events

    async def wait_ended(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    def data(self) -> list[str]:
        return [e.data for e in self.events if not e.event.startswith("hub.")]


async def _parse(lines: AsyncIterator[str], stream: SSEStream) -> AsyncIterator[Event]:
    """The browser's algorithm, minus reconnection."""
    event_type, data, event_id, has_data = "", [], None, False
    async for line in lines:
        stream._opened.set()
        if line == "":
            if event_id is not None:
                # As the browser: the cursor moves when a block ends, data or not.
                stream.last_event_id = event_id
            if has_data or event_type:
                yield Event(event_id, event_type or "message", "\n".join(data))
            event_type, data, has_data = "", [], False
            event_id = None
            continue
        if line.startswith(":"):
            stream.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
            has_data = True
        elif name == "event":
            event_type = value
        elif name == "id":
            event_id = value
        elif name == "retry" and value.isdigit():
            stream.retry = int(value)
