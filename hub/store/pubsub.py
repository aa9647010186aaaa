"""The live path's pub/sub connection, in two implementations with one shape.

On a plain TCP or Unix-socket Redis (and a Sentinel-named master) the connection is
read straight off the socket: each pub/sub message is parsed by hiredis and handed to
the live path in the transport's own callback, with no task woken per message. With
redis-py's ``PubSub`` a message cost a ``get_message`` call (a timeout scope, a health
check, a dict) and a wake-up of the reader task: about half of the live path's CPU in
profiles of bench/ S1c, where every event goes to another channel.

The embedded backend and TLS keep redis-py's ``PubSub``, driven by a reader task that
calls the same callbacks.

On a Redis Cluster (:mod:`hub.store.cluster`) both speak sharded pub/sub
(``SSUBSCRIBE``) to the master of the hub's slot. When that slot moves, Redis ends the
shard subscriptions by itself (an unasked ``sunsubscribe``): the connection counts as
lost then, and the next one finds the slot's new owner.

Either way the connection never reconnects by itself: when it breaks, :attr:`lost`
completes with the reason and the live path starts a new session with recovery (a
silent reconnect would hide what was published in between).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from hub.errors import BackendUnavailable
from hub.store.cluster import SlotPool
from hub.store.failures import FAILURES, translated
from hub.store.lane import Target, pack

__all__ = ["LiveConnection", "open_live"]

#: Called with (pub/sub name, payload) for every message, in the order Redis sent them.
OnMessage = Callable[[bytes, bytes], None]
#: Called with the pub/sub name when Redis confirms a SUBSCRIBE.
OnSubscribed = Callable[[bytes], None]


class LiveConnection(Protocol):
    """What the live path needs of its pub/sub connection."""

    #: Completes (with an exception) when the connection is gone.
    lost: asyncio.Future[None]
    #: Loop time at which anything last arrived.
    last_rx: float

    async def subscribe(self, names: Sequence[str | bytes]) -> None: ...

    async def unsubscribe(self, names: Sequence[str | bytes]) -> None: ...

    async def ping(self) -> bool:
        """Ask for a sign of life; False when this connection cannot be probed now."""
        ...

    async def aclose(self) -> None: ...


async def open_live(
    client: Redis, on_message: OnMessage, on_subscribed: OnSubscribed
) -> LiveConnection:
    """A pub/sub connection to ``client``'s server: read off the socket when we can."""
    sharded = isinstance(client.connection_pool, SlotPool)
    target = Target.of(client, "live")
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
    return raw


def _lost(why: str, exc: BaseException | None = None) -> BackendUnavailable:
    detail = f" ({exc})" if exc else ""
    return BackendUnavailable(f"the live connection to Redis {why}{detail}; recovering")


#: Reply kinds of plain and of sharded pub/sub.
_MESSAGE = (b"message", b"smessage")
_SUBSCRIBED = (b"subscribe", b"ssubscribe")


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

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                if type(reply) is list:
                    kind = reply[0]
                    if kind in _MESSAGE:
                        self._on_message(reply[1], reply[2])
                    elif kind in _SUBSCRIBED:
                        self._on_subscribed(reply[1])
                    elif kind == b"sunsubscribe" and reply[1] not in self._leaving:
                        raise _lost("was dropped by the cluster (the hub's slot moved)")
                    else:
                        self._leaving.discard(reply[1])  # and pongs: only signs of life
                elif isinstance(reply, ResponseError):
                    raise _lost("refused a command", reply)
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
        self._transport.abort()

    async def subscribe(self, names: Sequence[str | bytes]) -> None:
        self._transport.write(pack([self._commands[0], *names]))

    async def unsubscribe(self, names: Sequence[str | bytes]) -> None:
        self._leaving.update(n if isinstance(n, bytes) else n.encode() for n in names)
        self._transport.write(pack([self._commands[1], *names]))

    async def ping(self) -> bool:
        self._transport.write(pack(["PING"]))
        return True

    async def aclose(self) -> None:
        self._transport.abort()
        if not self.lost.done():
            self.lost.set_exception(_lost("was closed"))
        _retrieve(self.lost)


class _PolledPubSub:
    """redis-py's PubSub with a reader task feeding the same callbacks."""

    def __init__(
        self, client: Redis, on_message: OnMessage, on_subscribed: OnSubscribed, sharded: bool
    ) -> None:
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
                    self._on_message(message["channel"], message["data"])
                elif kind in ("subscribe", "ssubscribe"):
                    self._on_subscribed(message["channel"])
                elif kind == "sunsubscribe" and message["channel"] not in self._leaving:
                    raise _lost("was dropped by the cluster (the hub's slot moved)")
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(_as_lost(exc))

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

    async def ping(self) -> bool:
        if not self._ps.subscribed:
            return False
        with translated("probing the live connection"):
            await self._ps.ping()
        return True

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
