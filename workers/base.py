"""The worker kit: a base class for long-running producers that publish into the hub.

A worker is a loop of steps: :meth:`Worker.step` does one unit of work (typically one
publish), then the worker waits until ``interval`` seconds after the step began, and so on
until ``max_steps`` steps are done or a SIGTERM/SIGINT arrives. The base takes care of:

- configuration: ``--redis-url`` / ``HUB_REDIS_URL`` (required), and the key prefix,
  history size and other publish settings from ``HUB_*`` via :meth:`hub.Settings.from_env`;
- shutdown: the first SIGTERM/SIGINT lets the current step finish (a step that is
  waiting to retry a publish is abandoned instead), then the publisher is closed and the
  process exits 0; a second signal stops at once;
- Redis outages: :meth:`Worker.publish` retries on :class:`hub.BackendUnavailable` with
  exponential back-off and jitter, logging each failure, instead of crashing;
- logging: the hub's (:mod:`hub.logs`): one line per record with ``key=value`` fields,
  or one JSON object per line with ``--log-json`` (or ``HUB_LOG_JSON=1``).

Exit codes: 0 done or stopped by a signal, 1 crashed, 2 bad options or configuration,
128 + N stopped forcibly by a second signal N.

A worker that is not a fixed-rate loop (a consumer that blocks reading requests) sets
``interval = 0`` and blocks inside :meth:`Worker.step`; :meth:`Worker.setup`,
:meth:`Worker.finish` and :meth:`Worker.close` let it start and stop background work,
and overriding :meth:`Worker.create` gives it the Redis client and the settings.

A minimal worker::

    class Hello(Worker):
        name = "hello"

        async def step(self, n: int) -> None:
            await self.publish("greetings", {"n": n}, event="hello")

    def main(argv: list[str] | None = None) -> int:
        return Hello.main(argv)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

from redis.asyncio import Redis

from hub import Backend, BackendUnavailable, ConfigError, Publisher, Settings
from hub.errors import BadRequest
from hub.keys import check_channel
from hub.logs import configure_logging, log_fields

__all__ = [
    "EXIT_CRASHED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Stopped",
    "Worker",
    "channel_name",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_USAGE = 2

NO_REDIS_MESSAGE = (
    "no Redis URL: set HUB_REDIS_URL or pass --redis-url redis://HOST:6379/0. A worker runs "
    "in its own process, so it cannot reach a hub's embedded in-memory backend; it needs "
    "the same Redis the hub nodes use."
)


_W = TypeVar("_W", bound="Worker")


class Stopped(Exception):
    """A stop was requested while a step waited (to retry a publish); the step is abandoned.

    Raised by :meth:`Worker.publish`; the run loop catches it and ends normally. A step
    that catches broad exceptions must let this one through.
    """


# -- option types -------------------------------------------------------------------------


def positive_float(text: str) -> float:
    """``argparse`` type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def channel_name(text: str) -> str:
    """``argparse`` type: a channel name the hub accepts (checked before anything runs)."""
    try:
        return check_channel(text)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# -- the worker ---------------------------------------------------------------------------


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
        self._stopping = asyncio.Event()
        self._forced_by: int | None = None

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
        return self._stopping.is_set()

    def stop(self) -> None:
        """Request a graceful stop: the current step finishes, no new step starts."""
        self._stopping.set()

    def log(self, level: int, message: str, **fields: Any) -> None:
        """Log ``message`` with structured ``fields`` (``key=value``, or JSON keys)."""
        self.logger.log(level, message, extra=log_fields(**fields))

    async def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``, less if a stop is requested; return whether it was."""
        if self._stopping.is_set():
            return True
        try:
            await asyncio.wait_for(self._stopping.wait(), max(seconds, 0.0))
        except asyncio.TimeoutError:
            return False
        return True

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row.

        Exponential from ``retry_min`` up to ``retry_max``, with "equal jitter" (half
        fixed, half random) so that workers cut off by the same outage do not all come
        back in the same instant.
        """
        # The exponent is capped so that a days-long outage cannot overflow the float.
        ceiling = min(self.retry_max, self.retry_min * 2 ** min(failures - 1, 60))
        return random.uniform(ceiling / 2, ceiling)

    async def publish(
        self, channels: str | Sequence[str], data: Any, *, event: str | None = None
    ) -> str:
        """Publish like :meth:`hub.Publisher.publish`, retrying while Redis is unavailable.

        Each failure is logged and followed by :meth:`backoff`; the event is retried
        until it is published (its id is returned) or a stop is requested (then
        :class:`Stopped` is raised). Delivery is at least once: a publish whose reply was
        lost may have gone through before it is retried, so give events something a
        consumer can recognise duplicates by (the ticker's ``seq``). Other errors (a bad
        channel, a payload over ``HUB_MAX_PAYLOAD``) are bugs, and are raised at once.
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

    async def run(self) -> int:
        """Run steps until done or stopped, handling SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        installed: list[signal.Signals] = []

        def on_signal(signum: signal.Signals) -> None:
            if not self._stopping.is_set():
                self.log(
                    logging.INFO, "stop requested; finishing the current step", signal=signum.name
                )
                self._stopping.set()
                return
            # A second signal means the operator will not wait for the step to finish.
            self.log(logging.WARNING, "second signal; stopping now", signal=signum.name)
            self._forced_by = int(signum)
            if task is not None:
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                # Not the main thread, or no signal support (Windows): the default
                # handlers stay, and Ctrl-C still ends the process.
                continue
            installed.append(signum)
        try:
            await self.setup()
            steps = await self._steps()
            await self.finish()
        except asyncio.CancelledError:
            if self._forced_by is None:
                raise
            return 128 + self._forced_by
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            try:
                await self.close()
            finally:
                await self.publisher.aclose()
        self.log(logging.INFO, "worker stopped", steps=steps)
        return EXIT_OK

    async def _steps(self) -> int:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while not self._stopping.is_set():
            n += 1
            try:
                await self.step(n)
            except Stopped as exc:
                self.log(logging.WARNING, "step abandoned", step=n, reason=str(exc))
                return n - 1
            if self.max_steps is not None and n >= self.max_steps:
                break
            # A fixed rate rather than a fixed pause, so steps do not drift by their own
            # duration; steps missed while behind (a Redis outage) are skipped, not burst.
            next_at += self.interval
            now = loop.time()
            next_at = max(next_at, now)
            if await self.sleep(next_at - now):
                break
        return n

    # -- running it from the command line --------------------------------------------------

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The worker's command line: the common options plus :meth:`add_arguments`."""
        parser = argparse.ArgumentParser(prog=f"hub worker {cls.name}", description=cls.description)
        cls.add_arguments(parser)
        common = parser.add_argument_group("common worker options")
        common.add_argument(
            "--redis-url", help="redis://HOST:PORT/DB the hub nodes use (HUB_REDIS_URL); required"
        )
        common.add_argument("--key-prefix", help="prefix of the hub's Redis keys (HUB_KEY_PREFIX)")
        common.add_argument(
            "--history-size", type=positive_int, help="events kept per channel (HUB_HISTORY_SIZE)"
        )
        common.add_argument("--log-level", help="debug, info, warning, error (HUB_LOG_LEVEL)")
        common.add_argument(
            "--log-json",
            action="store_true",
            default=_env_flag("HUB_LOG_JSON"),
            help="log one JSON object per line (HUB_LOG_JSON=1)",
        )
        common.add_argument(
            "--retry-min",
            type=positive_float,
            default=0.5,
            metavar="SECONDS",
            help="first back-off after a failed publish (default 0.5)",
        )
        common.add_argument(
            "--retry-max",
            type=positive_float,
            default=30.0,
            metavar="SECONDS",
            help="longest back-off between publish attempts (default 30)",
        )
        return parser

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv``, configure, run until done or stopped; return the exit code."""
        prog = f"hub worker {cls.name}"
        try:
            options = cls.parser().parse_args(argv)
        except SystemExit as exc:  # --help, or a usage error argparse already reported
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        try:
            settings = Settings.from_env(
                redis_url=options.redis_url,
                key_prefix=options.key_prefix,
                history_size=options.history_size,
                log_level=options.log_level,
            )
            configure_logging(
                settings.log_level,
                "json" if options.log_json else "text",
                verbose_loggers=("workers", "hub"),
            )
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        logger = logging.getLogger(f"workers.{cls.name}")
        if not settings.redis_url:
            logger.error(NO_REDIS_MESSAGE)
            return EXIT_USAGE
        try:
            return asyncio.run(cls._start(options, settings))
        except ConfigError as exc:
            logger.error("%s", exc)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
        except Exception:
            logger.exception("worker crashed")
            return EXIT_CRASHED

    @classmethod
    async def _start(cls, options: argparse.Namespace, settings: Settings) -> int:
        assert settings.redis_url is not None
        backend = Backend(
            settings.redis_url, pool_size=settings.redis_pool_size, client_name=f"worker:{cls.name}"
        )
        try:
            client = backend.command_client()
        except ValueError as exc:
            raise ConfigError(f"HUB_REDIS_URL / --redis-url is not usable: {exc}") from None
        # The publisher names this URL in its error messages, which end up in logs: give
        # it the form without credentials.
        publisher = Publisher(client, settings.replace(redis_url=backend.describe()))
        try:
            worker = cls.create(options, publisher, redis=client, settings=settings)
        except BaseException:
            await publisher.aclose()
            raise
        worker.log(
            logging.INFO,
            "worker started",
            redis=backend.describe(),
            key_prefix=settings.key_prefix,
            pid=os.getpid(),
            **worker.describe(),
        )
        return await worker.run()
