"""A pipelined Redis connection: many callers, one socket, replies in order.

redis-py sends each command through its pool, retry wrapper, health check and
observability hooks. On this machine that is about 100 us of CPU per EVALSHA of the
publish script, against about 40 us for writing the command straight onto the transport
and parsing the reply with hiredis. The script runs once per published event, so
publishers send it down a lane. Callers that overlap share the socket: their commands
go out back to back and Redis answers a connection's commands in order, so concurrent
publishes are pipelined without anyone batching them.

A lane connects on first use, and again on the next call after its connection broke.
It speaks to TCP or Unix-socket Redis, or a Sentinel's master (asked at each connect);
else :meth:`Lane.for_client` answers ``None``. On a cluster there is one lane per
master (hub/store/cluster.py).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hub.store.resp import Arg, pack

__all__ = ["Batch", "InFlightLost", "Lane", "LaneTimeout", "Target", "pack"]


#: Seconds a command may wait for its reply when the client sets no socket timeout.
DEFAULT_TIMEOUT = 10.0

_TYPED: dict[str, type[RedisError]] = {
    "LOADING": BusyLoadingError,  # Redis reading its data back after a restart: retry
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
    "CLUSTERDOWN": ClusterDownError,
    "TRYAGAIN": TryAgainError,
}
#: Answers after which this connection is the wrong one: a master demoted by a
#: failover, a cluster node that lost its view of the cluster. (A MOVED or ASK is about
#: one key's slot: the caller sends the call where it belongs.)
_DROP = (ReadOnlyError, ClusterDownError)


class InFlightLost(RedisConnectionError):
    """The connection broke after the command was written: it may or may not have run."""


class LaneTimeout(RedisTimeoutError):
    """No reply within the lane's timeout; the connection was dropped."""


def _typed(error: ResponseError) -> RedisError:
    message = str(error)
    code, _, rest = message.partition(" ")
    if code in ("MOVED", "ASK"):
        # They parse "<slot> <host>:<port>" themselves.
        moved: RedisError = (MovedError if code == "MOVED" else AskError)(rest)
        return moved
    kind: type[RedisError] | None = _TYPED.get(code)
    if kind is not None:
        return kind(message)
    if code in ("WRONGPASS", "NOAUTH", "NOPERM"):
        return AuthenticationError(message)
    return error


class Batch:
    """Replies to commands sent together, in order: :meth:`Lane.call_many`."""

    __slots__ = ("future", "replies", "want")

    def __init__(self, future: asyncio.Future[list[Any]], want: int) -> None:
        self.future = future
        #: Replies so far; an error reply is a :class:`ResponseError` in its place.
        self.replies: list[Any] = []
        self.want = want


class _Protocol(asyncio.Protocol):
    """The socket's side of a lane: hands each reply to the oldest waiting caller."""

    def __init__(self, timeout: float) -> None:
        # Kept, not looked up per command: on Python < 3.12 asyncio.get_running_loop()
        # makes a getpid() system call each time, which was 19% of the hub's CPU when
        # saturated with HTTP publishes (py-spy --native, ab -c 8).
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[asyncio.Future[Any] | Batch] = collections.deque()
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._replies = 0
        self._replies_at_check = 0
        self._why: Exception | None = None
        #: Commands sent since the last write; written together once the callers that
        #: run in this turn of the event loop have had their say.
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if not self._unsendable(future):
            self._waiting.append(future)
            self._write(command)
        return future

    def _unsendable(self, future: asyncio.Future[Any]) -> bool:
        # Closed by the peer before we wrote: uvloop raises on a write, asyncio drops it.
        if self.lost or self.transport is None or self.transport.is_closing():
            self.lost = True  # nothing was sent: say so, and reconnect
            future.set_exception(RedisConnectionError("connection closed before sending"))
            return True
        return False

    def send_many(self, commands: bytes, count: int) -> Batch:
        """Send ``count`` packed commands together; one waiter takes all replies."""
        batch = Batch(self._loop.create_future(), count)
        if self._unsendable(batch.future):
            return batch
        self._waiting.append(batch)
        self._write(commands)
        return batch

    def _write(self, command: bytes) -> None:
        # Requests that arrive together (several HTTP publishes read in one turn of the
        # loop) share one write to Redis, and Redis reads them in one go: a system call
        # each on both sides saved. They wait one turn of the loop at most.
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        if self._timer is None:
            self._arm()

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                self._replies += 1
                waiter = self._waiting[0]
                if isinstance(waiter, Batch):
                    waiter.replies.append(reply)
                    if len(waiter.replies) < waiter.want:
                        continue
                    self._waiting.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
                    continue
                self._waiting.popleft()
                if not waiter.done():  # a caller cancelled while waiting
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # A reply nobody asked for, or bytes that are not RESP: nothing later on this
            # socket can be matched to its caller any more.
            self.close(InFlightLost(f"Redis sent an unexpected reply ({exc!r}); reconnecting"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        why = self._why or InFlightLost(
            "the connection to Redis broke"
            + (f" ({exc})" if exc else "")
            + " after the command was sent; it may or may not have run"
        )
        while self._waiting:
            waiter = self._waiting.popleft()
            future = waiter.future if isinstance(waiter, Batch) else waiter
            if not future.done():
                future.set_exception(why)

    def close(self, why: Exception | None = None) -> None:
        self.lost = True
        if why is not None and self._why is None:
            self._why = why
        if self.transport is not None:
            self.transport.abort()

    def _arm(self) -> None:
        # One timer per lane, not one per command: it fires every `timeout` while
        # commands wait, and drops the connection when no reply at all came in between.
        self._replies_at_check = self._replies
        self._timer = self._loop.call_later(self._timeout, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        if self._replies == self._replies_at_check:
            self.close(
                LaneTimeout(
                    f"Redis did not answer within {self._timeout:g}s; the command may or "
                    "may not have run"
                )
            )
            return
        self._arm()


Opener = Callable[[asyncio.AbstractEventLoop, Callable[[], _Protocol]], Awaitable[Any]]


@dataclass(frozen=True)
class Target:
    """Where a redis-py client's connections go, and how they introduce themselves."""

    opener: Opener
    #: AUTH, SELECT and CLIENT SETNAME, packed, sent on every new connection.
    handshake: tuple[bytes, ...]
    #: Seconds to connect, and (for a lane) to wait for a reply.
    timeout: float

    @classmethod
    def of(cls, client: Redis, role: str) -> Target | None:
        """What ``client``'s pool says: address, credentials, database; ``None`` when its
        connections are of a kind we do not speak here (TLS, credential providers, ...).

        The connection is named like the client's, with ``role`` as its last ``:`` part
        (``hub:cmd`` gives ``hub:pub``), so CLIENT LIST tells them apart."""
        pool = client.connection_pool
        options: dict[str, Any] = pool.connection_kwargs
        if options.get("credential_provider") is not None:
            return None
        opener: Opener
        if isinstance(pool, SentinelConnectionPool):
            sentinel_pool = pool

            async def to_master(loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
                # Asked at every connect, so a connection follows the master after a failover.
                host, port = await sentinel_pool.get_master_address()  # type: ignore[no-untyped-call]
                return await loop.create_connection(factory, host, port)

            opener = to_master
        elif pool.connection_class is Connection:
            host, port = options.get("host", "localhost"), int(options.get("port", 6379))

            async def to_tcp(loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
                return await loop.create_connection(factory, host, port)

            opener = to_tcp
        elif pool.connection_class is UnixDomainSocketConnection:
            path = options["path"]

            async def to_unix(loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
                return await loop.create_unix_connection(factory, path)

            opener = to_unix
        else:
            return None
        handshake: list[list[Arg]] = []
        password, username = options.get("password"), options.get("username")
        if password:
            handshake.append(["AUTH", username, password] if username else ["AUTH", password])
        if int(options.get("db") or 0):
            handshake.append(["SELECT", int(options["db"])])
        client_name = options.get("client_name")
        if client_name:
            base = client_name.rsplit(":", 1)[0] if ":" in client_name else client_name
            handshake.append(["CLIENT", "SETNAME", f"{base}:{role}"])
        timeout = options.get("socket_timeout") or options.get("socket_connect_timeout")
        packed = tuple(pack(command) for command in handshake)
        return cls(opener, packed, float(timeout or DEFAULT_TIMEOUT))

    async def open(self) -> _Protocol:
        """A new connection that has been through the handshake."""
        loop = asyncio.get_running_loop()
        timeout = self.timeout
        try:
            _transport, protocol = await asyncio.wait_for(
                self.opener(loop, lambda: _Protocol(timeout)), timeout
            )
        except asyncio.TimeoutError:
            raise RedisTimeoutError(f"connecting to Redis took over {timeout:g}s") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        assert isinstance(protocol, _Protocol)
        try:
            replies = [protocol.send(command) for command in self.handshake]
            for reply in await asyncio.gather(*replies):
                if isinstance(reply, ResponseError):
                    raise _typed(reply)
        except BaseException:
            protocol.close()
            raise
        return protocol


class Lane:
    """Commands from many coroutines on one Redis connection, in order.

    >>> lane = Lane.for_client(redis_client)
    >>> reply = await lane.call("EVALSHA", sha, 1, "key", "arg")
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    @classmethod
    def for_client(cls, client: Redis, *, role: str = "pub") -> Lane | None:
        """A lane to the server ``client`` talks to (see :meth:`Target.of`), or ``None``."""
        target = Target.of(client, role)
        return None if target is None else cls(target)

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply; Redis errors are raised as redis-py's
        exceptions (:class:`InFlightLost` when the connection broke after sending)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        reply = await protocol.send(pack(args))
        if isinstance(reply, ResponseError):
            error = _typed(reply)
            if isinstance(error, _DROP):
                # The next call connects again, and finds the new master.
                protocol.close()
            raise error
        return reply

    async def call_many(
        self, commands: Sequence[Sequence[Arg]]
    ) -> tuple[list[Any], RedisError | None]:
        """Send ``commands`` back to back in one write and wait for their replies.

        Returns the replies, in order, with error replies in their place (typed as
        :meth:`call` raises them), and ``None``; or, when the connection broke or timed
        out before every reply came, the replies that did come and why the rest did not
        (those commands may or may not have run)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        batch = protocol.send_many(b"".join([pack(c) for c in commands]), len(commands))
        failure: RedisError | None = None
        try:
            await batch.future
        except RedisError as exc:
            failure = exc
        replies = batch.replies
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = error = _typed(reply)
                if isinstance(error, ReadOnlyError):
                    protocol.close()
        return replies, failure

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._closed:
                raise RedisConnectionError("the lane is closed")
            protocol = self._protocol
            if protocol is None or protocol.lost:
                # (Unless another caller connected while we waited.)
                protocol = self._protocol = await self._target.open()
            return protocol

    async def aclose(self) -> None:
        """Close the connection; calls waiting for replies fail."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.close(RedisConnectionError("the lane was closed"))
            # Let the transport run connection_lost before the loop may close.
            await asyncio.sleep(0)
