"""The ``llm`` worker: answers questions over the hub, one sentence at a time.

    hub worker llm [--channel llm.requests] [--model NAME] [--concurrency 4] ...
    python -m workers.llm --demo

A request is an event on the requests channel (``llm.requests``) whose data is JSON
``{"prompt": "...", "reply_to": "<channel>", "model": "...", "system": "..."}`` (model
and system optional). The worker streams the answer from an OpenAI-compatible
chat-completions endpoint (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``: OpenAI, vLLM,
Ollama, llama.cpp) and publishes to ``reply_to``:

- ``event: sentence``, data the sentence text, each as soon as it is complete;
- then ``event: done``, data JSON ``{"request_id", "model", "usage", "finish_reason",
  "sentences", "ms_to_first_sentence", "ms_total"}``;
- or, when the model endpoint fails or the request is invalid, ``event: error``, data
  JSON ``{"request_id", "reason", "message"}``;
- ``event: restart`` (data JSON ``{"request_id", "reason", "message"}``) before the
  first sentence when a worker takes over a request another worker left unfinished:
  the sentences before it were a partial answer, which the client should clear.

With neither ``OPENAI_BASE_URL`` nor ``OPENAI_API_KEY`` (or with ``--demo``) it answers
with an offline demo model. How requests are shared between replicas is described in
:mod:`workers.requests`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub import Publisher, Settings
from hub.keys import Keys
from hub.logs import log_fields

from .base import Worker
from .models import Completion, DemoModel, Model, ModelError, OpenAIModel
from .options import channel_name, non_negative_int, positive_float, positive_int
from .requests import Delivery, InvalidRequest, LLMRequest, RequestQueue, parse_request
from .run import Stopped
from .sentences import SentenceSplitter

__all__ = ["Completion", "DemoModel", "LLMWorker", "Model", "ModelError", "OpenAIModel", "main"]

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
        requests = parser.add_argument_group("requests")
        requests.add_argument(
            "--channel",
            type=channel_name,
            default="llm.requests",
            help="channel requests are published to (default: llm.requests)",
        )
        requests.add_argument(
            "--group", default="llm", help="Redis consumer group the replicas share (default: llm)"
        )
        requests.add_argument(
            "--concurrency",
            type=positive_int,
            default=4,
            metavar="N",
            help="requests answered at once by this process (default: 4)",
        )
        requests.add_argument(
            "--claim-after",
            type=positive_float,
            default=30.0,
            metavar="SECONDS",
            help="take over a request another worker left unanswered this long (default: 30)",
        )
        requests.add_argument(
            "--drain-timeout",
            type=positive_float,
            default=20.0,
            metavar="SECONDS",
            help="on SIGTERM, let answers in flight finish this long, then hand them back "
            "(default: 20)",
        )
        model = parser.add_argument_group("model")
        model.add_argument(
            "--base-url",
            default=os.environ.get("OPENAI_BASE_URL") or None,
            help="OpenAI-compatible API, e.g. http://localhost:11434/v1 (OPENAI_BASE_URL); "
            "the key comes from OPENAI_API_KEY",
        )
        model.add_argument(
            "--model",
            default=os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
            help="model unless a request names one (OPENAI_MODEL, default: gpt-4o-mini)",
        )
        model.add_argument("--system", help="system prompt unless a request gives one")
        model.add_argument(
            "--max-tokens", type=positive_int, metavar="N", help="cap on each answer's length"
        )
        model.add_argument(
            "--timeout",
            type=positive_float,
            default=60.0,
            metavar="SECONDS",
            help="longest silence from the endpoint: connecting, or between chunks (default: 60)",
        )
        model.add_argument(
            "--max-retries",
            type=non_negative_int,
            default=2,
            metavar="N",
            help="retries of a request the endpoint refused as busy or failed to connect "
            "(default: 2)",
        )
        model.add_argument(
            "--demo",
            action="store_true",
            help="answer with the offline demo model even if an endpoint is configured",
        )
        model.add_argument(
            "--demo-delay",
            type=positive_float,
            default=0.04,
            metavar="SECONDS",
            help="the demo model's mean pause between tokens (default: 0.04)",
        )

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
        self.model = model or _model_from(options)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._listening = False
        self._failures = 0
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._touching: asyncio.Task[None] | None = None
        # Requests given up on mid-way (Redis failed, or a stop cut a retry short).
        self._abandoned: set[str] = set()
        self.answered = 0

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
        self._abandoned.discard(delivery.id)
        task = asyncio.create_task(self._handle(delivery))
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
        unfinished = sorted({*self._tasks, *self._abandoned})
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

    # -- one request ---------------------------------------------------------------------

    async def _handle(self, delivery: Delivery) -> None:
        """Answer one request, then acknowledge it; never raises (but for cancellation)."""
        request: LLMRequest | None = None
        try:
            request = await self._accept(delivery)
            if request is not None:
                await self._answer(request)
                self.answered += 1
            await self.queue.ack(delivery.id)
        except (Stopped, RedisError) as exc:
            # Left pending: handed back when this worker stops, or taken over after
            # --claim-after; a done that went out is not sent again.
            self._abandoned.add(delivery.id)
            self.log(logging.WARNING, "answer abandoned", request=delivery.id, error=str(exc))
        except Exception:
            self.logger.error(
                "answering failed", exc_info=True, extra=log_fields(request=delivery.id)
            )
            try:
                if request is not None:
                    message = "the worker failed; try again"
                    await self._error(delivery.id, request.reply_to, "internal", message)
                await self.queue.ack(delivery.id)
            except Exception as exc:
                self.log(logging.WARNING, "could not report the failure", error=str(exc))

    async def _accept(self, delivery: Delivery) -> LLMRequest | None:
        """The request to answer, or ``None`` when there is nothing (more) to answer."""
        if delivery.data is None:
            self.log(
                logging.WARNING,
                "request trimmed from the history before it was answered; dropped "
                "(raise HUB_HISTORY_SIZE)",
                request=delivery.id,
            )
            return None
        try:
            request = parse_request(delivery.id, delivery.data, self.channel)
        except InvalidRequest as exc:
            self.log(logging.WARNING, "invalid request", request=delivery.id, error=str(exc))
            if exc.reply_to is not None:
                await self._error(delivery.id, exc.reply_to, "invalid_request", str(exc))
            return None
        if not delivery.claimed:
            return request
        if await self.queue.answered(request):
            self.log(logging.INFO, "taken-over request was answered", request=request.id)
            return None
        self.log(logging.INFO, "took over an unfinished request", request=request.id)
        message = "the worker answering this request stopped; answering again from the start"
        data = {"request_id": request.id, "reason": "taken_over", "message": message}
        await self.publish(request.reply_to, data, event="restart")
        return request

    async def _error(self, request_id: str, reply_to: str, reason: str, message: str) -> None:
        data = {"request_id": request_id, "reason": reason, "message": message}
        await self.publish(reply_to, data, event="error")

    async def _answer(self, request: LLMRequest) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        model = request.model or self.default_model
        completion = Completion(model)
        system = request.system or self.system
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": request.prompt})
        self.log(logging.DEBUG, "answering", request=request.id, reply_to=request.reply_to)
        splitter = SentenceSplitter()
        sentences = 0
        first: float | None = None
        try:
            async with aclosing(self.model.stream(messages, model, completion)) as pieces:
                async for piece in pieces:
                    for sentence in splitter.feed(piece):
                        await self.publish(request.reply_to, sentence, event="sentence")
                        sentences += 1
                        first = first or loop.time()
            for sentence in splitter.flush():
                await self.publish(request.reply_to, sentence, event="sentence")
                sentences += 1
                first = first or loop.time()
        except ModelError as exc:
            self.log(
                logging.WARNING,
                "the model failed",
                request=request.id,
                reason=exc.reason,
                error=str(exc),
                sentences=sentences,
            )
            await self._error(request.id, request.reply_to, exc.reason, str(exc))
            return
        total = loop.time() - started
        done = {
            "request_id": request.id,
            "model": completion.model,
            "usage": completion.usage,
            "finish_reason": completion.finish_reason,
            "sentences": sentences,
            "ms_to_first_sentence": None if first is None else round((first - started) * 1000),
            "ms_total": round(total * 1000),
        }
        await self.publish(request.reply_to, done, event="done")
        self.log(
            logging.INFO,
            "answered",
            request=request.id,
            sentences=sentences,
            seconds=round(total, 3),
            model=completion.model,
        )


def _model_from(options: argparse.Namespace) -> Model:
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if options.demo or (options.base_url is None and api_key is None):
        return DemoModel(options.demo_delay)
    return OpenAIModel(
        base_url=options.base_url,
        api_key=api_key,
        max_tokens=options.max_tokens,
        timeout=options.timeout,
        max_retries=options.max_retries,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hub worker llm``; returns the process exit code."""
    return LLMWorker.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
