"""The live path's pub/sub connection to one Redis (one shard of a cluster), in two
implementations with one shape.

On a plain TCP or Unix-socket Redis (a Sentinel-named master, a cluster's master) the
connection speaks RESP3 and is read straight off the socket: each message is parsed by
hiredis and handed to the live path in the transport's own callback, with no task woken
per message. RESP3 also lets the connection carry a command while subscribed: a probe
(:meth:`LiveConnection.probe`) sends ``TIME``, whose reply comes after every message
published before Redis ran it. That reply is how a node learns "every event this Redis
stamped before millisecond T has reached me" (hub/delivery/order.py).

The embedded backend and TLS keep redis-py's ``PubSub``, driven by a reader task that
calls the same callbacks; its probe is ``TIME`` on a command connection followed by a
``PING`` on the pub/sub one, whose pong comes after the messages published before it.

On a Redis Cluster the connection speaks sharded pub/sub (``SSUBSCRIBE``). When a slot
moves, Redis ends its shard subscriptions by itself (an unasked ``sunsubscribe``): the
connection counts as lost then, and the next one goes to the slot's new owner.

Either way the connection never reconnects by itself: when it breaks, :attr:`lost`
completes with the reason and the live path starts a new session with recovery (a
silent reconnect would hide what was published in between).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from hub.errors import BackendUnavailable
from hub.store.failures import FAILURES, translated
from hub.store.lane import Target
from hub.store.resp import pack

__all__ = ["LiveConnection", "OnMessage", "OnSubscribed", "open_live"]

#: Called with (pub/sub name, payload, wide) for every message, in the order Redis sent
#: them; ``wide``: it came through a pattern subscription (the name is the channel's).
OnMessage = Callable[[bytes, bytes, bool], None]
#: Called with the pub/sub name (or pattern) when Redis confirms a subscription.
OnSubscribed = Callable[[bytes], None]


class LiveConnection(Protocol):
    """What the live path needs of its pub/sub connection."""

    #: Completes (with an exception) when the connection is gone.
    lost: asyncio.Future[None]
    #: Loop time at which anything last arrived.
    last_rx: float

    async def subscribe(self, names: Sequence[str | bytes]) -> None: ...

    async def unsubscribe(self, names: Sequence[str | bytes]) -> None: ...

    async def psubscribe(self, patterns: Sequence[str | bytes]) -> None: ...

    async def punsubscribe(self, patterns: Sequence[str | bytes]) -> None: ...

    def probe(self) -> asyncio.Future[int]:
        """Redis' time in ms, known once every message Redis sent before reading it has
        arrived here (the future fails if the connection is lost first)."""
        ...

    async def aclose(self) -> None: ...


async def open_live(
    client: Redis,
    target: Target | None,
    on_message: OnMessage,
    on_subscribed: OnSubscribed,
    *,
    sharded: bool,
) -> LiveConnection:
    """A pub/sub connection to ``target`` (raw, RESP3), or through ``client``'s PubSub
    when there is no target (the embedded backend, TLS)."""
    if target is None:
        polled = _PolledPubSub(client, on_message, on_subscribed, sharded)
        await polled.start()
        return polled
    protocol = await target.open()
    transport = protocol.transport
    assert transport is not None
    raw = _RawPubSub(transport, on_message, on_subscribed, sharded)
    # The handshake is over and Redis sends nothing unasked before a SUBSCRIBE: from
    # here on every byte on this socket is the pub/sub reader's.
    transport.set_protocol(raw)
    raw.start()
    return raw


def _lost(why: str, exc: BaseException | None = None) -> BackendUnavailable:
    detail = f" ({exc})" if exc else ""
    return BackendUnavailable(f"the live connection to Redis {why}{detail}; recovering")


#: Push kinds of plain and of sharded pub/sub.
_MESSAGE = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe", b"psubscribe")


class _RawPubSub(asyncio.Protocol):
    def __init__(
        self,
        transport: asyncio.Transport,
        on_message: OnMessage,
        on_subscribed: OnSubscribed,
        sharded: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._transport = transport
        self._parser = hiredis.Reader(replyError=ResponseError)
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self.lost: asyncio.Future[None] = loop.create_future()
        self.last_rx = loop.time()
        self._commands = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE") if sharded else (b"SUBSCRIBE", b"UNSUBSCRIBE")
        )
        #: Names we asked to leave (a sharded unsubscribe we did not ask for means the
        #: slot moved).
        self._leaving: set[bytes] = set()
        #: What each reply that is not a push answers, in order (None: ignore it).
        self._replies: collections.deque[asyncio.Future[int] | None] = collections.deque()

    def start(self) -> None:
        self._replies.append(None)
        self._transport.write(pack(["HELLO", "3"]))

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                if type(reply) is hiredis.PushNotification:
                    kind = reply[0]
                    if kind in _MESSAGE:
                        self._on_message(reply[1], reply[2], False)
                    elif kind == b"pmessage":
                        self._on_message(reply[2], reply[3], True)
                    elif kind in _SUBSCRIBED:
                        self._on_subscribed(reply[1])
                    elif kind == b"sunsubscribe" and reply[1] not in self._leaving:
                        raise _lost("was dropped by the cluster (a slot moved)")
                    else:
                        self._leaving.discard(reply[1])
                elif isinstance(reply, ResponseError):
                    raise _lost("refused a command", reply)
                else:
                    waiter = self._replies.popleft() if self._replies else None
                    if waiter is not None and not waiter.done():
                        secs, micros = reply
                        waiter.set_result(int(secs) * 1000 + int(micros) // 1000)
        except Exception as exc:
            # Whatever failed (the live path's own code included), the stream of messages
            # cannot be trusted to continue in order: end the session; the supervisor
            # logs it and a new one recovers what was missed.
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(_lost("was lost", exc))

    def _fail(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(_as_lost(exc))
        while self._replies:
            waiter = self._replies.popleft()
            if waiter is not None and not waiter.done():
                waiter.set_exception(_as_lost(exc))
        self._transport.abort()

    async def subscribe(self, names: Sequence[str | bytes]) -> None:
        self._transport.write(pack([self._commands[0], *names]))

    async def unsubscribe(self, names: Sequence[str | bytes]) -> None:
        self._leaving.update(n if isinstance(n, bytes) else n.encode() for n in names)
        self._transport.write(pack([self._commands[1], *names]))

    async def psubscribe(self, patterns: Sequence[str | bytes]) -> None:
        self._transport.write(pack([b"PSUBSCRIBE", *patterns]))

    async def punsubscribe(self, patterns: Sequence[str | bytes]) -> None:
        self._transport.write(pack([b"PUNSUBSCRIBE", *patterns]))

    def probe(self) -> asyncio.Future[int]:
        waiter: asyncio.Future[int] = self._loop.create_future()
        if self.lost.done():
            waiter.set_exception(_lost("is gone"))
            return waiter
        self._replies.append(waiter)
        self._transport.write(pack(["TIME"]))
        return waiter

    async def aclose(self) -> None:
        self._transport.abort()
        self._fail(_lost("was closed"))
        _retrieve(self.lost)


class _PolledPubSub:
    """redis-py's PubSub with a reader task feeding the same callbacks."""

    def __init__(
        self, client: Redis, on_message: OnMessage, on_subscribed: OnSubscribed, sharded: bool
    ) -> None:
        self._client = client
        self._ps: PubSub = client.pubsub(ignore_subscribe_messages=False)
        self._sharded = sharded
        self._leaving: set[bytes] = set()
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.lost: asyncio.Future[None] = loop.create_future()
        self.last_rx = loop.time()
        self._task: asyncio.Task[None] | None = None
        #: Probes whose PING was sent, oldest first, with the time read before it.
        self._pongs: collections.deque[tuple[asyncio.Future[int], int]] = collections.deque()

    async def start(self) -> None:
        ps = self._ps
        await ps.connect()  # type: ignore[no-untyped-call]
        connection: Any = ps.connection
        if connection is not None and hasattr(connection, "register_connect_callback"):
            # redis-py reconnects a dropped pub/sub connection by itself and resubscribes;
            # what was published in between would be lost without a word.
            connection.register_connect_callback(self._reconnected)
        self._task = self._loop.create_task(self._read())

    async def _reconnected(self, _connection: Any) -> None:
        self._fail(_lost("was re-established behind our back"))

    async def _read(self) -> None:
        try:
            while True:
                message = await self._ps.get_message(timeout=1.0)
                if message is None:
                    continue
                self.last_rx = self._loop.time()
                kind = message["type"]
                if kind in ("message", "smessage"):
                    self._on_message(message["channel"], message["data"], False)
                elif kind == "pmessage":
                    self._on_message(message["channel"], message["data"], True)
                elif kind in ("subscribe", "ssubscribe", "psubscribe"):
                    self._on_subscribed(message["channel"])
                elif kind == "pong" and self._pongs:
                    waiter, ms = self._pongs.popleft()
                    if not waiter.done():
                        waiter.set_result(ms)
                elif kind == "sunsubscribe" and message["channel"] not in self._leaving:
                    raise _lost("was dropped by the cluster (a slot moved)")
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(_as_lost(exc))
        while self._pongs:
            waiter, _ = self._pongs.popleft()
            if not waiter.done():
                waiter.set_exception(_as_lost(exc))

    async def subscribe(self, names: Sequence[str | bytes]) -> None:
        with translated("subscribing"):
            if self._sharded:
                await self._ps.ssubscribe(*names)
            else:
                await self._ps.subscribe(*names)

    async def unsubscribe(self, names: Sequence[str | bytes]) -> None:
        with translated("unsubscribing"):
            if self._sharded:
                self._leaving.update(n if isinstance(n, bytes) else n.encode() for n in names)
                await self._ps.sunsubscribe(*names)
            else:
                await self._ps.unsubscribe(*names)

    async def psubscribe(self, patterns: Sequence[str | bytes]) -> None:
        with translated("subscribing"):
            await self._ps.psubscribe(*patterns)

    async def punsubscribe(self, patterns: Sequence[str | bytes]) -> None:
        with translated("unsubscribing"):
            await self._ps.punsubscribe(*patterns)

    def probe(self) -> asyncio.Future[int]:
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._loop.create_task(self._probe(waiter))
        return waiter

    async def _probe(self, waiter: asyncio.Future[int]) -> None:
        try:
            if self.lost.done():
                raise _lost("is gone")
            with translated("probing the live connection"):
                secs, micros = await self._client.time()
                if not self._ps.subscribed:
                    # Nothing subscribed: no message can be in flight to us.
                    waiter.set_result(int(secs) * 1000 + int(micros) // 1000)
                    return
                self._pongs.append((waiter, int(secs) * 1000 + int(micros) // 1000))
                await self._ps.ping()
        except Exception as exc:
            if not waiter.done():
                waiter.set_exception(_as_lost(exc))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(_lost("was closed"))
        _retrieve(self.lost)
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self._ps.aclose(), 2.0)


def _as_lost(exc: BaseException) -> BaseException:
    # What ends a live connection reaches the live path as a hub error, whatever broke.
    if isinstance(exc, FAILURES):
        return _lost("failed", exc)
    return exc


def _retrieve(future: asyncio.Future[None]) -> None:
    # Marks the exception as seen: asyncio logs unretrieved ones when the future dies.
    if future.done() and not future.cancelled():
        future.exception()
