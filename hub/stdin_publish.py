"""``hub publish`` without arguments: publish objects from stdin, one JSON object a
line (NDJSON), published in batches through a hub or straight into Redis.

Lines are sent as they come: what stdin holds right now goes in one batch (up to
``--batch``), so a file is published in few requests and a live pipe without delay.
Each batch is all-or-nothing (the hub checks it whole), and the ids of published
events are printed as their batch is answered, one a line, in order. At the first
line refused, ``hub publish`` stops and says which lines were published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

from hub.errors import HubError

__all__ = ["publish_stdin"]

Send = Callable[[list[Mapping[str, Any]]], Awaitable[list[str]]]
#: A hub error about one event of a batch starts so (see hub.store.batch.at_index).
_INDEXED = re.compile(r"^event (\d+): ")
_END = None


async def publish_stdin(url: str | None, redis_url: str | None, batch: int) -> int:
    """Publish NDJSON from stdin to the hub at ``url`` (or into ``redis_url``)."""
    if batch < 1:
        raise HubError("--batch must be at least 1")
    if sys.stdin.isatty():
        raise HubError(
            "give CHANNEL and DATA, or pipe publish objects into hub publish, one JSON "
            'object a line: {"channel": "news", "data": "hello"}'
        )
    lines = _Lines(sys.stdin.buffer, batch)
    published = 0  # lines before this batch's first, all published
    async with _sender(url, redis_url) as send:
        while chunk := await lines.take():
            numbers = [number for number, _ in chunk]
            done = _done(published, numbers[0])
            events = [_parse(number, text, done) for number, text in chunk]
            try:
                ids = await send(events)
            except HubError as exc:
                raise _placed(exc, numbers, done) from None
            sys.stdout.write("".join(f"{event_id}\n" for event_id in ids))
            sys.stdout.flush()
            published += len(ids)
    return 0


def _done(published: int, first: int) -> str:
    """What was published before the batch that starts at line ``first``."""
    if not published:
        return "nothing was published"
    return f"the {published} events before line {first} were published (their ids are above)"


def _parse(number: int, text: bytes, done: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise HubError(f"line {number} is not JSON ({exc}); {done}") from None
    if not isinstance(value, dict):
        raise HubError(
            f'line {number} is not a JSON object like {{"channel": "news", "data": "hi"}}; {done}'
        )
    return value


def _placed(exc: HubError, numbers: list[int], done: str) -> HubError:
    """The hub's error about a batch, told in stdin's line numbers."""
    message = str(exc)
    match = _INDEXED.match(message)
    if match and int(match.group(1)) < len(numbers):
        message = f"line {numbers[int(match.group(1))]}: {message[match.end() :]}"
    return type(exc)(f"{message}; {done}")


@asynccontextmanager
async def _sender(url: str | None, redis_url: str | None) -> AsyncIterator[Send]:
    if redis_url:
        from hub.store.publisher import Publisher

        publisher = Publisher.from_url(redis_url)
        try:
            yield publisher.publish_many
        finally:
            await publisher.aclose()
    else:
        from hub.client import HubClient

        assert url is not None
        async with HubClient(url) as client:
            yield client.publish_many


class _Lines:
    """Non-blank lines of ``source`` with their numbers, read by a thread (stdin may be
    a file, which the event loop cannot wait on) at most a few batches ahead."""

    def __init__(self, source: BinaryIO, batch: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._room = threading.Semaphore(4 * batch)
        self._batch = batch
        self._done = False
        self._failed: OSError | None = None
        threading.Thread(target=self._read, args=(source,), daemon=True).start()

    def _read(self, source: BinaryIO) -> None:
        try:
            for number, line in enumerate(source, 1):
                if line.strip():
                    self._room.acquire()
                    self._loop.call_soon_threadsafe(self._queue.put_nowait, (number, line))
        except RuntimeError:
            return  # the loop is closed: hub publish stopped at a refused line
        except OSError as exc:
            self._failed = exc
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    async def take(self) -> list[tuple[int, bytes]]:
        """The next batch: every line read by now, up to the batch size; [] at the end."""
        if self._done:
            return []
        chunk: list[tuple[int, bytes]] = []
        item = await self._queue.get()
        while item is not _END:
            chunk.append(item)
            self._room.release()
            if len(chunk) >= self._batch or self._queue.empty():
                return chunk
            item = self._queue.get_nowait()
        self._done = True
        if self._failed is not None:
            raise HubError(f"reading stdin failed: {self._failed}; stopped there")
        return chunk
