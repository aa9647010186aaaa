"""Helpers shared by tests: publishers that keep count of what Redis acknowledged."""

from __future__ import annotations

import asyncio

from hub import BackendUnavailable, Publisher


class SteadyPublisher:
    """Publishes numbered events until stopped; keeps what Redis acknowledged."""

    def __init__(self, publisher: Publisher, channel: str) -> None:
        self.acknowledged: list[tuple[str, str]] = []
        self.failures = 0
        self._publisher = publisher
        self._channel = channel
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            data = str(n)
            try:
                event_id = await self._publisher.publish(self._channel, data)
            except BackendUnavailable:
                self.failures += 1
                await asyncio.sleep(0.02)
                continue
            self.acknowledged.append((event_id, data))
            n += 1
            await asyncio.sleep(0.002)
