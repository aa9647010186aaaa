"""Answering one request: read it, stream the model's answer sentence by sentence to its
``reply_to`` channel, end with ``done`` or ``error``, then acknowledge it.

What goes to ``reply_to``, in order: ``restart`` first when the request was taken over
from another worker (the sentences before it were a partial answer), then each
``sentence`` as soon as it is complete, then ``done`` with the figures of the answer, or
``error`` with a reason and a message fit for the person who asked.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing

from redis.exceptions import RedisError

from hub.logs import log_fields

from ..base import Worker
from ..run import Stopped
from .models import Completion, Model, ModelError
from .queue import Delivery, RequestQueue
from .request import InvalidRequest, LLMRequest, parse_request
from .sentences import SentenceSplitter

__all__ = ["Answerer"]


class Answerer:
    """Answers the requests ``worker`` hands it, publishing through ``worker`` (which
    retries while Redis is unavailable) and logging as ``worker``.

    ``answered`` counts the requests answered; ``abandoned`` holds the ids of those given
    up on mid-way (Redis failed, or a stop cut a retry short), which stay pending in the
    queue for this or another worker to answer again.
    """

    def __init__(
        self,
        worker: Worker,
        queue: RequestQueue,
        model: Model,
        *,
        requests_channel: str,
        default_model: str,
        system: str | None,
    ) -> None:
        self.worker = worker
        self.queue = queue
        self.model = model
        self.requests_channel = requests_channel
        self.default_model = default_model
        self.system = system
        self.answered = 0
        self.abandoned: set[str] = set()

    async def handle(self, delivery: Delivery) -> None:
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
            self.abandoned.add(delivery.id)
            self.worker.log(
                logging.WARNING, "answer abandoned", request=delivery.id, error=str(exc)
            )
        except Exception:
            self.worker.logger.error(
                "answering failed", exc_info=True, extra=log_fields(request=delivery.id)
            )
            try:
                if request is not None:
                    message = "the worker failed; try again"
                    await self._error(delivery.id, request.reply_to, "internal", message)
                await self.queue.ack(delivery.id)
            except Exception as exc:
                self.worker.log(logging.WARNING, "could not report the failure", error=str(exc))

    async def _accept(self, delivery: Delivery) -> LLMRequest | None:
        """The request to answer, or ``None`` when there is nothing (more) to answer."""
        if delivery.data is None:
            self.worker.log(
                logging.WARNING,
                "request trimmed from the history before it was answered; dropped "
                "(raise HUB_HISTORY_SIZE)",
                request=delivery.id,
            )
            return None
        try:
            request = parse_request(delivery.id, delivery.data, self.requests_channel)
        except InvalidRequest as exc:
            self.worker.log(logging.WARNING, "invalid request", request=delivery.id, error=str(exc))
            if exc.reply_to is not None:
                await self._error(delivery.id, exc.reply_to, "invalid_request", str(exc))
            return None
        if not delivery.claimed:
            return request
        if await self.queue.answered(request):
            self.worker.log(logging.INFO, "taken-over request was answered", request=request.id)
            return None
        self.worker.log(logging.INFO, "took over an unfinished request", request=request.id)
        message = "the worker answering this request stopped; answering again from the start"
        data = {"request_id": request.id, "reason": "taken_over", "message": message}
        await self.worker.publish(request.reply_to, data, event="restart")
        return request

    async def _error(self, request_id: str, reply_to: str, reason: str, message: str) -> None:
        data = {"request_id": request_id, "reason": reason, "message": message}
        await self.worker.publish(reply_to, data, event="error")

    async def _answer(self, request: LLMRequest) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        model = request.model or self.default_model
        completion = Completion(model)
        system = request.system or self.system
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": request.prompt})
        self.worker.log(logging.DEBUG, "answering", request=request.id, reply_to=request.reply_to)
        splitter = SentenceSplitter()
        sentences = 0
        first: float | None = None
        try:
            async with aclosing(self.model.stream(messages, model, completion)) as pieces:
                async for piece in pieces:
                    for sentence in splitter.feed(piece):
                        await self.worker.publish(request.reply_to, sentence, event="sentence")
                        sentences += 1
                        first = first or loop.time()
            for sentence in splitter.flush():
                await self.worker.publish(request.reply_to, sentence, event="sentence")
                sentences += 1
                first = first or loop.time()
        except ModelError as exc:
            self.worker.log(
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
        await self.worker.publish(request.reply_to, done, event="done")
        self.worker.log(
            logging.INFO,
            "answered",
            request=request.id,
            sentences=sentences,
            seconds=round(total, 3),
            model=completion.model,
        )
