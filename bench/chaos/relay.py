"""A TCP relay between the hub nodes and Redis that can fall silent: it stops
forwarding, both ways, without closing anything, like a network path that died without
a reset (a crashed NAT box, a pulled cable). Connections made while it is silent are
accepted and go silent too; when it heals, the silent ones are closed (their peer
would have timed out by then) and new connections pass again."""

from __future__ import annotations

import asyncio
import contextlib


class SilentRelay:
    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self.silent = False
        self._server: asyncio.Server | None = None
        self._pairs: dict[int, list[asyncio.StreamWriter]] = {}
        self._muted: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def go_silent(self) -> int:
        """Every connection open now (and every new one) stops forwarding."""
        self.silent = True
        self._muted |= set(self._pairs)
        return len(self._muted)

    def heal(self) -> None:
        self.silent = False
        for key in list(self._muted):
            for writer in self._pairs.pop(key, []):
                writer.close()
        self._muted.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._redis_port)
        except OSError:
            writer.close()  # Redis is down: as if the connection were refused
            return
        key = id(writer)
        self._pairs[key] = [writer, up_writer]
        if self.silent:
            self._muted.add(key)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(key, src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, key: int, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                if key not in self._muted:
                    dst.write(data)
                    await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()
        if key not in self._muted:
            self._pairs.pop(key, None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writers in self._pairs.values():
            for writer in writers:
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
