"""The ``llm`` worker: reads requests from the queue and answers several at a time.

It keeps up to ``--concurrency`` answers going (:mod:`workers.llm.answerer`), sweeps the
queue for requests other workers left unfinished, renews its claims on the requests it
answers, and on SIGTERM lets its answers finish for ``--drain-timeout`` seconds before
it hands the rest back (:mod:`workers.llm.queue`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub import Publisher, Settings
from hub.store import Keys

from ..base import Worker
from . import options as llm_options
from .answerer import Answerer, Policy
from .metrics import LLMMetrics
from .models import DemoModel, Model
from .queue import Delivery, RequestQueue

__all__ = ["LLMWorker", "main"]

#: Longest wait for new requests in one read: a stop request is noticed within it.
READ_BLOCK = 1.0
#: Consumers gone this long with nothing pending are removed from the group.
PRUNE_IDLE = 3600.0
#: Seconds between looks for such consumers.
PRUNE_EVERY = 300.0

_L = TypeVar("_L", bound="LLMWorker")


class LLMWorker(Worker):
    """Answers requests from the requests channel, several at a time."""

    name = "llm"
    description = (
        "Answer questions published to CHANNEL, streaming each answer to its reply_to "
        "channel sentence by sentence (an OpenAI-compatible endpoint, or the offline demo)."
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        llm_options.add_arguments(parser)

    @classmethod
    def create(
        cls: type[_L],
        options: argparse.Namespace,
        publisher: Publisher,
        *,
        redis: Redis,
        settings: Settings,
    ) -> _L:
        return cls(options, publisher, redis, settings)

    def __init__(
        self,
        options: argparse.Namespace,
        publisher: Publisher,
        redis: Redis,
        settings: Settings,
        model: Model | None = None,
    ) -> None:
        super().__init__(options, publisher)
        # No fixed rate: each step blocks in the read until requests come.
        self.interval = 0.0
        self.channel: str = options.channel
        self.concurrency: int = options.concurrency
        self.claim_after: float = options.claim_after
        self.drain_timeout: float = options.drain_timeout
        self.system: str | None = options.system
        self.default_model: str = options.model
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.queue = RequestQueue(
            redis,
            Keys(settings.key_prefix),
            self.channel,
            options.group,
            self.consumer,
            self.claim_after,
        )
        self.model = model or llm_options.model_from(options)
        # A hub running this worker in its process hands over its registry, so that its
        # /metrics shows the worker's numbers; a worker process serves its own.
        self.metrics = LLMMetrics.shared(getattr(options, "metrics_registry", None))
        self.metrics_port: int | None = options.metrics_port
        policy = Policy(
            requests_channel=self.channel,
            default_model=self.default_model,
            system=self.system,
            max_prompt=options.max_prompt,
            context_budget=options.context_budget,
            questions_per_minute=options.questions_per_minute,
            turn_timeout=options.turn_timeout,
        )
        self.answerer = Answerer(
            self,
            self.queue,
            self.model,
            redis,
            Keys(settings.key_prefix),
            policy,
            self.metrics,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listening = False
        self._failures = 0
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._touching: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "group": self.queue.group,
            "consumer": self.consumer,
            "concurrency": self.concurrency,
            "claim_after": self.claim_after,
            "endpoint": self.model.endpoint,
            "model": "demo" if isinstance(self.model, DemoModel) else self.default_model,
        }

    # -- the loop ------------------------------------------------------------------------

    async def setup(self) -> None:
        if isinstance(self.model, DemoModel):
            self.log(
                logging.WARNING,
                "no OPENAI_BASE_URL or OPENAI_API_KEY: answering with the offline demo model",
            )
        if not self.logger.isEnabledFor(logging.DEBUG):
            # One line per model request says nothing the "answered" line does not.
            for name in ("httpx", "httpx2"):
                logging.getLogger(name).setLevel(logging.WARNING)
        if self.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.metrics_port, registry=self.metrics.registry)
            self.log(logging.INFO, "metrics served", port=self.metrics_port, path="/metrics")
        self._touching = asyncio.create_task(self._keep_claims())

    async def step(self, n: int) -> None:
        try:
            await self._poll()
        except RedisError as exc:
            self._failures += 1
            delay = self.backoff(self._failures)
            self.log(
                logging.WARNING,
                "Redis unavailable; will retry",
                attempt=self._failures,
                retry_in=round(delay, 3),
                error=str(exc),
            )
            await self.sleep(delay)
            return
        if self._failures:
            self.log(logging.INFO, "Redis reachable again", failed_attempts=self._failures)
            self._failures = 0

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._listening:
            created = await self.queue.create_group("$")
            self._listening = True
            self.log(logging.INFO, "listening for requests", group_created=created)
        free = self.concurrency - len(self._tasks)
        now = loop.time()
        if free > 0 and now >= self._next_sweep:
            # Often enough that a request waits little more than --claim-after after its
            # worker died, or hardly at all after one handed it back.
            self._next_sweep = now + min(max(self.claim_after / 2, 0.05), 2.0)
            for delivery in await self.queue.claim(free):
                self._dispatch(delivery)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                for gone in await self.queue.prune(PRUNE_IDLE):
                    self.log(logging.INFO, "removed the consumer of a gone worker", consumer=gone)
            free = self.concurrency - len(self._tasks)
        if free <= 0:
            # Full: read nothing, so other replicas with room get the next requests.
            await asyncio.wait(
                self._tasks.values(), timeout=READ_BLOCK, return_when="FIRST_COMPLETED"
            )
            return
        for delivery in await self.queue.read(free, READ_BLOCK):
            self._dispatch(delivery)

    def _dispatch(self, delivery: Delivery) -> None:
        if delivery.id in self._tasks:
            return  # our own request, reclaimed after our touches failed: still in hand
        self.answerer.abandoned.discard(delivery.id)
        task = asyncio.create_task(self.answerer.handle(delivery))
        self._tasks[delivery.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(delivery.id) is done:
                del self._tasks[delivery.id]

        task.add_done_callback(forget)

    async def _keep_claims(self) -> None:
        """Reset the idle time of the requests in hand, so nobody takes them over."""
        while True:
            await asyncio.sleep(max(self.claim_after / 3, 0.02))
            if not self._tasks:
                continue
            try:
                lost = await self.queue.touch(list(self._tasks))
            except RedisError as exc:
                self.log(logging.WARNING, "could not renew claims on requests", error=str(exc))
                continue
            for request_id in lost:
                task = self._tasks.get(request_id)
                if task is not None:
                    self.log(
                        logging.WARNING,
                        "another worker took the request over; stopping this answer",
                        request=request_id,
                    )
                    task.cancel()

    async def finish(self) -> None:
        if self._tasks:
            self.log(
                logging.INFO,
                "waiting for answers in flight",
                requests=len(self._tasks),
                timeout=self.drain_timeout,
            )
            await asyncio.wait(self._tasks.values(), timeout=self.drain_timeout)
        unfinished = sorted({*self._tasks, *self.answerer.abandoned})
        await self._cancel_answers()
        try:
            if unfinished:
                await self.queue.release(unfinished)
                self.log(
                    logging.WARNING,
                    "handed unfinished requests back to the other workers",
                    requests=",".join(unfinished),
                )
            elif self._listening:
                await self.queue.retire()
        except RedisError as exc:
            self.log(logging.WARNING, "could not leave the group cleanly", error=str(exc))
        self.log(logging.INFO, "llm worker done", answered=self.answered)

    async def close(self) -> None:
        if self._touching is not None:
            self._touching.cancel()
            await asyncio.gather(self._touching, return_exceptions=True)
        await self._cancel_answers()
        await self.model.aclose()

    async def _cancel_answers(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def answered(self) -> int:
        """How many requests this worker answered."""
        return self.answerer.answered


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hub worker llm`` and ``python -m workers.llm``; returns the
    process exit code."""
    return LLMWorker.main(argv)
