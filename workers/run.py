"""The run loop of a worker, and how it stops.

:func:`run` calls :meth:`~workers.Worker.setup`, then :meth:`~workers.Worker.step`
at a fixed rate until ``max_steps`` steps are done or a stop is requested, then
:meth:`~workers.Worker.finish`, and :meth:`~workers.Worker.close` and the publisher's
``aclose()`` however it ends.

Stopping: the first SIGTERM/SIGINT lets the current step finish (a step waiting to
retry a publish is abandoned: :class:`Stopped`), and the worker exits 0; a second one
cancels whatever runs, and the exit code is 128 + its number.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Protocol

from hub import Publisher
from hub.logs import log_fields

from .pacing import FixedRate

__all__ = ["EXIT_OK", "Runnable", "StopRequest", "Stopped", "run", "run_steps"]

EXIT_OK = 0


class Stopped(Exception):
    """A stop was requested while a step waited (to retry a publish); the step is abandoned.

    Raised by :meth:`workers.Worker.publish`; the run loop catches it and ends normally.
    A step that catches broad exceptions must let this one through.
    """


class StopRequest:
    """Whether a worker was asked to stop: by :meth:`set` (its own code, or a first
    signal), or forcibly by a second signal, whose number is then ``forced_by``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.forced_by: int | None = None
        self._installed: list[signal.Signals] = []

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def set(self) -> None:
        """Request a graceful stop."""
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``, less if a stop is requested; return whether it was."""
        if self._event.is_set():
            return True
        try:
            await asyncio.wait_for(self._event.wait(), max(seconds, 0.0))
        except asyncio.TimeoutError:
            return False
        return True

    def handle_signals(self, task: asyncio.Task[object] | None, logger: logging.Logger) -> None:
        """Take SIGTERM and SIGINT over: the first sets the request, a second cancels
        ``task`` (the one running the worker). Undone by :meth:`restore_signals`."""
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            fields = log_fields(signal=signum.name)
            if not self._event.is_set():
                logger.info("stop requested; finishing the current step", extra=fields)
                self._event.set()
                return
            # A second signal means the operator will not wait for the step to finish.
            logger.warning("second signal; stopping now", extra=fields)
            self.forced_by = int(signum)
            if task is not None:
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                # Not the main thread, or no signal support (Windows): the default
                # handlers stay, and Ctrl-C still ends the process.
                continue
            self._installed.append(signum)

    def restore_signals(self) -> None:
        """Give SIGTERM and SIGINT back to their default handlers."""
        loop = asyncio.get_running_loop()
        while self._installed:
            loop.remove_signal_handler(self._installed.pop())


class Runnable(Protocol):
    """What the run loop needs of a worker (:class:`workers.Worker` has it all)."""

    stop_request: StopRequest
    logger: logging.Logger
    publisher: Publisher
    interval: float
    max_steps: int | None

    @property
    def stopping(self) -> bool: ...

    async def setup(self) -> None: ...

    async def step(self, n: int) -> None: ...

    async def finish(self) -> None: ...

    async def close(self) -> None: ...

    async def sleep(self, seconds: float) -> bool: ...

    def log(self, level: int, message: str, **fields: Any) -> None: ...


async def run(worker: Runnable, *, signals: bool = True) -> int:
    """Run ``worker`` until done or stopped, handling SIGTERM/SIGINT (unless ``signals``
    is false: a worker inside another program, such as ``hub serve --worker``, leaves
    them to it and is stopped with :meth:`~workers.Worker.stop`); return the exit code."""
    stop = worker.stop_request
    if signals:
        stop.handle_signals(asyncio.current_task(), worker.logger)
    try:
        await worker.setup()
        steps = await run_steps(worker)
        await worker.finish()
    except asyncio.CancelledError:
        if stop.forced_by is None:
            raise
        return 128 + stop.forced_by
    finally:
        # The handlers go before close(): the loop that acted on a stop request is over.
        stop.restore_signals()
        try:
            await worker.close()
        finally:
            await worker.publisher.aclose()
    worker.log(logging.INFO, "worker stopped", steps=steps)
    return EXIT_OK


async def run_steps(worker: Runnable) -> int:
    """Call ``worker.step(1)``, ``step(2)`` ... at a fixed rate until ``max_steps`` or a
    stop request; return how many steps were completed."""
    loop = asyncio.get_running_loop()
    rate = FixedRate(loop.time())
    n = 0
    while not worker.stopping:
        n += 1
        try:
            await worker.step(n)
        except Stopped as exc:
            worker.log(logging.WARNING, "step abandoned", step=n, reason=str(exc))
            return n - 1
        if worker.max_steps is not None and n >= worker.max_steps:
            break
        # The interval is read at each step: a worker may change its pace as it goes.
        if await worker.sleep(rate.delay(worker.interval, loop.time())):
            break
    return n
