"""The ``Worker`` base class: what a worker provides, and what the kit gives it.

A subclass sets ``name`` and ``description``, adds its options in
:meth:`Worker.add_arguments`, does one unit of work in :meth:`Worker.step`, and its
``main`` is ``return MyWorker.main(argv)``. The loop around the steps is in
:mod:`workers.run`, the way from a command line to a running worker in
:mod:`workers.launch`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from redis.asyncio import Redis

from hub import BackendUnavailable, Publisher, Settings
from hub.logs import log_fields

from . import pacing
from .launch import launch
from .options import add_common_options
from .run import Stopped, StopRequest, run

__all__ = ["Worker"]

_W = TypeVar("_W", bound="Worker")


class Worker:
    """Base of a long-running producer; subclass it and implement :meth:`step`.

    Class attributes: ``name`` (as in ``hub worker NAME``, and in log lines) and
    ``description`` (for ``--help``). Instance attributes a subclass sets in its
    ``__init__``: ``interval`` (seconds from the start of one step to the next) and
    ``max_steps`` (``None``: run until stopped). The worker owns its publisher and closes
    it when :meth:`run` ends.
    """

    name: ClassVar[str] = "worker"
    description: ClassVar[str] = "A producer worker that publishes into the hub."

    def __init__(self, options: argparse.Namespace, publisher: Publisher) -> None:
        self.options = options
        self.publisher = publisher
        self.logger = logging.getLogger(f"workers.{self.name}")
        self.interval: float = 1.0
        self.max_steps: int | None = None
        self.retry_min: float = options.retry_min
        self.retry_max: float = max(options.retry_max, options.retry_min)
        #: Set by :meth:`stop` and by SIGTERM/SIGINT while :meth:`run` runs.
        self.stop_request = StopRequest()

    # -- what a subclass provides ----------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the worker's own options; the common ones are already there."""

    async def step(self, n: int) -> None:
        """Do one unit of work; ``n`` counts steps from 1."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    @classmethod
    def create(
        cls: type[_W],
        options: argparse.Namespace,
        publisher: Publisher,
        *,
        redis: Redis,
        settings: Settings,
    ) -> _W:
        """Make the worker for :meth:`main`. ``redis`` is the publisher's client (same
        pool, closed with it) and ``settings`` the hub settings in force; a worker that
        reads Redis itself overrides this to keep them."""
        return cls(options, publisher)

    async def setup(self) -> None:
        """Called once before the first step (start background tasks here)."""

    async def finish(self) -> None:
        """Called once after the last step when the worker ends normally, also after a
        stop request (let work in flight complete here); a second signal cancels it."""

    async def close(self) -> None:
        """Called once at the very end, however the worker ends, before the publisher
        is closed (cancel background tasks here). Keep it short: it is not cancelled."""

    def describe(self) -> dict[str, Any]:
        """Fields for the start-up log line (the worker's configuration)."""
        return {"interval": self.interval, "max_steps": self.max_steps}

    # -- what the base provides ------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested; a long step may check it to end early."""
        return self.stop_request.is_set()

    def stop(self) -> None:
        """Request a graceful stop: the current step finishes, no new step starts."""
        self.stop_request.set()

    def log(self, level: int, message: str, **fields: Any) -> None:
        """Log ``message`` with structured ``fields`` (``key=value``, or JSON keys)."""
        self.logger.log(level, message, extra=log_fields(**fields))

    async def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``, less if a stop is requested; return whether it was."""
        return await self.stop_request.wait(seconds)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row: exponential from
        ``retry_min`` up to ``retry_max``, with jitter (:func:`workers.pacing.backoff`)."""
        return pacing.backoff(failures, self.retry_min, self.retry_max)

    async def publish(
        self, channels: str | Sequence[str], data: Any, *, event: str | None = None
    ) -> str:
        """Publish like :meth:`hub.Publisher.publish`, retrying while Redis is unavailable.

        Each failure is logged and followed by :meth:`backoff`; the event is retried
        until it is published (its id is returned) or a stop is requested (then
        :class:`~workers.Stopped` is raised). Delivery is at least once: a publish whose
        reply was lost may have gone through before it is retried, so give events
        something a consumer can recognise duplicates by (the ticker's ``seq``). Other
        errors (a bad channel, a payload over ``HUB_MAX_PAYLOAD``) are bugs, and are
        raised at once.
        """
        failures = 0
        while True:
            try:
                event_id = await self.publisher.publish(channels, data, event=event)
            except BackendUnavailable as exc:
                failures += 1
                delay = self.backoff(failures)
                self.log(
                    logging.WARNING,
                    "publish failed; will retry",
                    attempt=failures,
                    retry_in=round(delay, 3),
                    error=str(exc),
                )
                if await self.sleep(delay):
                    raise Stopped(f"stop requested after {failures} failed attempts") from exc
                continue
            if failures:
                self.log(logging.INFO, "publish succeeded again", failed_attempts=failures)
            return event_id

    async def run(self, *, signals: bool = True) -> int:
        """Run steps until done or stopped, handling SIGTERM/SIGINT unless ``signals`` is
        false; return the exit code (:func:`workers.run.run`)."""
        return await run(self, signals=signals)

    # -- running it from the command line --------------------------------------------------

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The worker's command line: :meth:`add_arguments`, then the common options."""
        parser = argparse.ArgumentParser(prog=f"hub worker {cls.name}", description=cls.description)
        cls.add_arguments(parser)
        add_common_options(parser)
        return parser

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv``, configure, run until done or stopped; return the exit code
        (:func:`workers.launch.launch`)."""
        return launch(cls, argv)
