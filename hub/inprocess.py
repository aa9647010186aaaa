"""Workers inside the hub's own process: ``hub serve --worker llm --worker ticker``.

On the embedded backend no other process can reach the hub's data, so a worker that
should feed it runs here, as a supervised task (:mod:`hub.supervise`): it publishes and
reads through the same backend as the hub, logs as it would on its own, and is started
again (with back-off) if it crashes. Each ``--worker`` value is the worker's name and
its own options, as for ``hub worker``: ``--worker "ticker --interval 0.5"``.

The worker classes come from the ``workers`` package, found by name when the hub
starts (so that the hub does not depend on them otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import io
import logging
import shlex
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hub.config import Settings
from hub.errors import ConfigError
from hub.store import Backend, Publisher
from hub.supervise import Supervised

__all__ = ["InProcessWorkers", "WorkerSpec", "in_process_workers", "parse_worker_specs"]

logger = logging.getLogger("hub")

#: Seconds the workers get on shutdown to finish what they are doing.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """A worker class and its parsed options."""

    text: str
    cls: Any
    options: argparse.Namespace

    @property
    def name(self) -> str:
        return str(self.cls.name)


def parse_worker_specs(texts: Sequence[str]) -> list[WorkerSpec]:
    """Each ``--worker`` value as a worker class and options; :class:`ConfigError` with
    what to fix for an unknown worker or a bad option."""
    specs = []
    for text in texts:
        argv = shlex.split(text)
        if not argv:
            raise ConfigError("--worker needs a worker name, e.g. --worker llm")
        cls = _worker_class(argv[0])
        parser = cls.parser()
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(errors):
                options = parser.parse_args(argv[1:])
        except SystemExit:
            detail = errors.getvalue().strip().splitlines()
            raise ConfigError(
                f"--worker {text!r}: {detail[-1] if detail else 'bad options'}"
            ) from None
        specs.append(WorkerSpec(text, cls, options))
    return specs


def _worker_class(name: str) -> Any:
    try:
        workers = importlib.import_module("workers")
        module = importlib.import_module(f"workers.{name.replace('-', '_')}")
    except ModuleNotFoundError:
        raise ConfigError(
            f"--worker {name!r}: no such worker (try llm or ticker: hub worker --help)"
        ) from None
    base = workers.Worker
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, base)
            and getattr(value, "name", "") == name
        ):
            return value
    raise ConfigError(f"--worker {name!r}: workers.{name} has no worker class named {name!r}")


class InProcessWorkers:
    """Runs workers as supervised tasks for as long as the context is open.

    ``registry``: the hub's metrics registry, handed to workers that keep metrics, so
    that the hub's ``/metrics`` shows theirs too.
    """

    def __init__(
        self,
        specs: Sequence[WorkerSpec],
        backend: Backend,
        settings: Settings,
        registry: Any = None,
    ) -> None:
        self.specs = list(specs)
        self.backend = backend
        self.settings = settings
        self.registry = registry
        self.running: dict[str, Any] = {}
        self._none_running = asyncio.Event()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> InProcessWorkers:
        for n, spec in enumerate(self.specs):
            label = f"{spec.name}-{n}" if len(self.specs) > 1 else spec.name
            await self._stack.enter_async_context(
                Supervised(f"worker {label}", functools.partial(self._run, spec, label))
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A graceful stop first (answers in flight may finish), then the tasks go.
        for worker in self.running.values():
            worker.stop()
        if self.running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._none_running.wait(), STOP_TIMEOUT)
        await self._stack.aclose()

    async def _run(self, spec: WorkerSpec, label: str) -> None:
        client = self.backend.command_client()
        publisher = Publisher(client, self.settings)
        options = argparse.Namespace(**vars(spec.options))
        options.metrics_registry = self.registry
        worker = spec.cls.create(options, publisher, redis=client, settings=self.settings)
        self.running[label] = worker
        self._none_running.clear()
        worker.log(logging.INFO, "worker started", in_process=True, **worker.describe())
        try:
            await worker.run(signals=False)
        finally:
            self.running.pop(label, None)
            if not self.running:
                self._none_running.set()
        # Done by itself (a --count reached) or stopped: nothing to restart.
        await asyncio.Event().wait()


def in_process_workers(texts: Sequence[str]) -> list[Callable[..., InProcessWorkers]]:
    """``create_app``'s ``services`` for ``hub serve --worker TEXT ...``: none without
    workers. The names and options are checked here, before the app is made."""
    specs = parse_worker_specs(texts)
    return [functools.partial(InProcessWorkers, specs)] if specs else []
