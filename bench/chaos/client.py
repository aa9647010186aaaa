"""A chaos client: follows channels like a browser's EventSource (resumes with
``Last-Event-ID``), and misbehaves on request: stuck, slow, reconnecting at random to
a random node, or away for a while. Everything it gets goes into its
:class:`~bench.chaos.checker.ClientLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlencode

import httpx

from .checker import ClientLog, Got, Opened, Order, Reset, parse_hub_id

#: A small receive buffer, so a client that stops reading fills up and gets cut off
#: after a few KiB instead of after the kernel's megabytes.
RCVBUF = 8192


def channel_of(token: str) -> str:
    """Publishers write ``channel:publisher:n`` (then padding after a space) as data."""
    return token.rsplit(":", 2)[0]


class ChaosClient:
    """One simulated browser. ``targets()`` gives the base URL of the next connection
    (the balancer, or a node straight)."""

    def __init__(
        self,
        name: str,
        channels: Sequence[str],
        targets: Callable[[], str],
        *,
        protocol: str = "native",
        token: str | None = None,
        live_start: Callable[[], Order] | None = None,
        order_of: Callable[[str], Order | None] | None = None,
        read_timeout: float = 15.0,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.channels = tuple(channels)
        self.targets = targets
        self.protocol = protocol
        self.token = token
        #: Mercure mode: where a fresh stream starts, from the publisher's count.
        self.live_start = live_start
        #: Mercure mode: an event's order from its token (the publisher's count).
        self.order_of = order_of
        self.log: ClientLog | None = None
        self.cursor: str | None = None
        self.cursor_order: Order | None = None
        self.streams = 0
        self.failed_streams = 0
        self._rng = rng
        self._read_timeout = read_timeout
        self._mode = "normal"
        self._mode_until = 0.0
        self._behaving = asyncio.Event()
        self._behaving.set()
        self._drop = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        transport = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)]
        )
        self._http = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(5, read=read_timeout)
        )

    # -- what the campaign asks of it ---------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"client {self.name}")

    def misbehave(self, mode: str, seconds: float) -> None:
        """``stuck`` (stops reading), ``slow`` (reads a little at a time), ``away``
        (disconnects and stays away), for ``seconds``."""
        self._mode = mode
        self._mode_until = asyncio.get_running_loop().time() + seconds
        if mode == "normal":
            self._behaving.set()
        else:
            self._behaving.clear()
        if mode == "away":
            self._drop.set()

    def reconnect(self) -> None:
        """Drop the stream now; the next goes to a random target, with Last-Event-ID."""
        self._drop.set()

    @property
    def normal(self) -> bool:
        return self._mode == "normal"

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()

    # -- the stream ---------------------------------------------------------------------

    def _url(self, base: str) -> str:
        if self.protocol == "mercure":
            return f"{base}/.well-known/mercure?{urlencode([('topic', c) for c in self.channels])}"
        return f"{base}/events?{urlencode([('channel', c) for c in self.channels])}"

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._mode != "normal" and loop.time() >= self._mode_until:
                self._mode = "normal"
            if self._mode == "away":
                await self._sit_out()
                continue
            self._drop.clear()
            delay = await self._one_stream(self.targets())
            await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))

    async def _one_stream(self, base: str) -> float:
        """One connection; returns how long to wait before the next (its retry hint,
        at most a second to keep the run busy)."""
        headers = {"Last-Event-ID": self.cursor} if self.cursor else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        retry = 1.0
        self.streams += 1
        try:
            async with self._http.stream("GET", self._url(base), headers=headers) as response:
                if response.status_code != 200:
                    self.failed_streams += 1
                    await response.aread()
                    return retry
                opened = Opened(self.cursor_order if self.cursor else None)
                if self.log is not None:
                    self.log.records.append(opened)
                if self.protocol == "mercure" and self.cursor:
                    echoed = response.headers.get("last-event-id")
                    if echoed == "earliest" and self.log is not None:
                        # The Mercure spec's signal that the cursor is no longer known.
                        self.log.records.append(Reset("earliest", self.channels, None))
                if self.protocol == "mercure" and self.log is None and self.live_start:
                    self._begin(self.live_start())
                retry = await self._read(response)
        except (httpx.HTTPError, OSError):
            self.failed_streams += 1
        return min(retry, 1.0)

    async def _read(self, response: httpx.Response) -> float:
        retry = 1.0
        event_type = ""
        event_id: str | None = None
        data: list[str] = []
        buffer = b""
        async for chunk in response.aiter_raw():
            if self._drop.is_set() or self._stopping:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if line == "":
                    if event_id is not None:
                        self._moved(event_id, event_type, data)
                    elif data or event_type:
                        self._event(None, event_type, data)
                    event_type, data, event_id = "", [], None
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event_type = value
                elif name == "id":
                    event_id = value
                elif name == "retry" and value.isdigit():
                    retry = int(value) / 1000
            await self._pace()
        return retry

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        if self._mode == "stuck":
            await self._sit_out()
        elif self._mode == "slow":
            if loop.time() >= self._mode_until:
                self._mode = "normal"
            else:
                await asyncio.sleep(0.05)

    async def _sit_out(self) -> None:
        """Stuck or away: until the time is up, or until told to behave."""
        left = self._mode_until - asyncio.get_running_loop().time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._behaving.wait(), max(0.0, left))
        self._mode = "normal"
        self._behaving.set()

    def _begin(self, start: Order) -> None:
        self.log = ClientLog(self.name, self.channels, start)

    def _moved(self, event_id: str, event_type: str, data: list[str]) -> None:
        order = parse_hub_id(event_id) if self.protocol == "native" else None
        if self.log is None:
            if order is None:
                return  # not joined yet: a hub that gives no opening id (Mercure mode)
            # The opening block's id: the stream starts after it.
            self._begin(order)
        self.cursor = event_id
        # Mercure mode: _event sets the order from the event's token.
        self.cursor_order = order
        if data or event_type:
            self._event(order, event_type, data)

    def _event(self, order: Order | None, event_type: str, data: list[str]) -> None:
        if self.log is None:
            return
        text = "\n".join(data)
        if event_type.startswith("hub."):
            if event_type == "hub.reset":
                try:
                    payload = json.loads(text)
                    channels = tuple(payload.get("channels") or self.channels)
                    reason = str(payload.get("reason"))
                except (ValueError, AttributeError):
                    channels, reason = self.channels, "unreadable"
                self.log.records.append(Reset(reason, channels, order))
            return
        token = text.split(" ", 1)[0]
        if self.protocol != "native" and self.order_of is not None:
            # Mercure ids need not sort: the order is the publisher's count.
            order = self.order_of(token)
            if order is not None:
                self.cursor_order = order
        self.log.records.append(Got(channel_of(token), token, order))

    def caught_up(self, latest: Callable[[str], Order | None]) -> bool:
        """Has it received (or been reset past) the latest acknowledged event of each
        of its channels?"""
        if self.log is None:
            return False
        for channel in self.channels:
            want = latest(channel)
            if want is None or want <= self.log.start:
                continue
            got = self._last_on(channel)
            if got is None or got < want:
                return False
        return True

    def _last_on(self, channel: str) -> Order | None:
        assert self.log is not None
        best: Order | None = None
        for record in reversed(self.log.records):
            if isinstance(record, Reset) and channel in record.channels and record.to is not None:
                best = record.to if best is None else max(best, record.to)
                break
            if isinstance(record, Got) and record.channel == channel and record.order is not None:
                best = record.order if best is None else max(best, record.order)
                break
        return best
