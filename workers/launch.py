"""A worker as a process: from its command line to its exit code.

:func:`launch` is what :meth:`workers.Worker.main` does: parse the options, read the
hub settings, set up logging (:mod:`hub.logs`), connect to Redis, make the worker and
run it. Exit codes: :data:`EXIT_OK` done or stopped by a signal, :data:`EXIT_CRASHED`,
:data:`EXIT_USAGE` bad options or configuration, 128 + N stopped forcibly by a second
signal N. No traceback for a mistake in the configuration: a message says what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio import Redis

from hub import Backend, ConfigError, Publisher, Settings
from hub.logs import configure_logging

from .run import EXIT_OK


class Launched(Protocol):
    """A worker once made: what :func:`launch` does with it."""

    def describe(self) -> dict[str, Any]: ...

    def log(self, level: int, message: str, **fields: Any) -> None: ...

    async def run(self) -> int: ...


class Launchable(Protocol):
    """A worker class (:class:`workers.Worker` and its subclasses)."""

    @property
    def name(self) -> str: ...

    def parser(self) -> argparse.ArgumentParser: ...

    def create(
        self,
        options: argparse.Namespace,
        publisher: Publisher,
        *,
        redis: Redis,
        settings: Settings,
    ) -> Launched: ...


__all__ = [
    "EXIT_CRASHED",
    "EXIT_OK",
    "EXIT_USAGE",
    "NO_REDIS_MESSAGE",
    "Launchable",
    "Launched",
    "launch",
]

EXIT_CRASHED = 1
EXIT_USAGE = 2

NO_REDIS_MESSAGE = (
    "no Redis URL: set HUB_REDIS_URL or pass --redis-url redis://HOST:6379/0. A worker runs "
    "in its own process, so it cannot reach a hub's embedded in-memory backend; it needs "
    "the same Redis the hub nodes use."
)

#: The loggers a worker's ``--log-level debug`` applies to; the libraries' stay at INFO.
VERBOSE_LOGGERS = ("workers", "hub")


def launch(cls: Launchable, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, configure, run a ``cls`` until done or stopped; return the exit code."""
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
            verbose_loggers=VERBOSE_LOGGERS,
        )
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logger = logging.getLogger(f"workers.{cls.name}")
    if not settings.redis_url:
        logger.error(NO_REDIS_MESSAGE)
        return EXIT_USAGE
    try:
        return asyncio.run(_start(cls, options, settings))
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception:
        logger.exception("worker crashed")
        return EXIT_CRASHED


async def _start(cls: Launchable, options: argparse.Namespace, settings: Settings) -> int:
    """Connect to the hub's Redis, make the worker, log its configuration and run it."""
    assert settings.redis_url is not None
    backend = Backend(
        settings.redis_url,
        pool_size=settings.redis_pool_size,
        client_name=f"worker:{cls.name}",
        key_prefix=settings.key_prefix,
    )
    try:
        client = backend.command_client()
    except ValueError as exc:
        raise ConfigError(f"HUB_REDIS_URL / --redis-url is not usable: {exc}") from None
    # The publisher names this URL in its error messages, which end up in logs: give it
    # the form without credentials.
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
