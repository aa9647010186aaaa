"""Supervised background tasks: they log, back off and restart; they never die silently."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType

__all__ = ["Supervised"]

logger = logging.getLogger("hub")


class Supervised:
    """Run ``target`` for as long as the context is open, restarting it when it fails.

    A failure is logged (with a traceback unless it is a plain connection problem) and
    followed by an exponential, jittered back-off, reset once the target has run
    healthily for ``healthy_after`` seconds. Leaving the context cancels the task and
    awaits it.
    """

    def __init__(
        self,
        name: str,
        target: Callable[[], Awaitable[None]],
        *,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
        healthy_after: float = 10.0,
        quiet: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.name = name
        self.restarts = 0
        self._target = target
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._healthy_after = healthy_after
        self._quiet = quiet
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Supervised:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # A cancellation can be swallowed below us (asyncio.wait_for before Python 3.12
        # returns a result that lands together with the cancellation; fakeredis waits that
        # way): repeat it rather than hang the shutdown. This wait raises if the caller is
        # cancelled itself.
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done():
                logger.warning("%s did not stop when cancelled; cancelling again", self.name)
                task.cancel()
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed while stopping: %r", self.name, task.exception())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._min_backoff
        while True:
            started = loop.time()
            try:
                await self._target()
                logger.warning("%s stopped on its own; restarting it", self.name)
            except asyncio.CancelledError:
                raise
            except self._quiet as exc:
                logger.warning("%s failed: %s; restarting in %.2fs", self.name, exc, backoff)
            except Exception:
                logger.exception("%s crashed; restarting in %.2fs", self.name, backoff)
            self.restarts += 1
            if loop.time() - started >= self._healthy_after:
                backoff = self._min_backoff
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._max_backoff)
